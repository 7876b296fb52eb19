"""``HashDataset``: images plus multi-hot labels, the one dataset type every reader returns.

Images are held either in memory as a uint8 tensor (N, C, H, W) or, for large image lists and
folders, as an :class:`ImageFiles` list that decodes one file on access (``lazy=True`` in those
readers). The API is the same for both. ``dataset[i]`` returns ``(image, label, i)``: a float32 image
in [-1, 1], its float32 multi-hot label and the index ``i`` itself, so a ``torch.utils.data.Subset``
still yields indices into the full dataset (the indices that protocol manifests store).
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from coophash.data.errors import DataError
from coophash.data.pixels import (
    ImageSize,
    decode_image,
    normalize_channels,
    normalize_size,
    prepare_pixels,
    to_float,
)

__all__ = ["HashDataset", "ImageFiles", "Transform", "Indices"]

Transform = Callable[[torch.Tensor], torch.Tensor]
Indices = Union[Sequence[int], np.ndarray, torch.Tensor]

_FINGERPRINT_VERSION = b"coophash-dataset-v1\0"


class ImageFiles:
    """A lazily decoded list of image files, all delivered as uint8 (C, H, W) of one shape.

    Every file is decoded on access, converted to ``channels`` and resized to ``image_size``
    (readers check beforehand that files of a dataset without ``image_size`` share one size).
    """

    def __init__(self, files: Sequence[Union[str, Path]], image_size: ImageSize, channels: int) -> None:
        self.files: Tuple[Path, ...] = tuple(Path(f) for f in files)
        size = normalize_size(image_size)
        assert size is not None
        self.size: Tuple[int, int] = size
        channels_ = normalize_channels(channels)
        if channels_ is None:
            raise ValueError("ImageFiles needs channels = 1 or 3")
        self.channels: int = channels_

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of every decoded image."""
        return (self.channels, self.size[0], self.size[1])

    def load(self, index: int) -> torch.Tensor:
        """Decode file ``index`` to uint8 (C, H, W)."""
        array = decode_image(self.files[index])
        pixels = torch.from_numpy(array).unsqueeze(0)
        return prepare_pixels(pixels, self.size, self.channels)[0]

    def digest(self, hasher: "hashlib._Hash") -> None:
        """Feed the encoded file bytes (length-prefixed) and the decode settings to ``hasher``."""
        hasher.update(f"files:{len(self.files)}:{self.shape}\n".encode())
        for path in self.files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path}: cannot read image file ({exc})") from exc
            hasher.update(len(data).to_bytes(8, "little"))
            hasher.update(data)


class HashDataset(Dataset):
    """Images and multi-hot labels; ``dataset[i] -> (image in [-1, 1], label, i)``.

    Build one with a reader (:func:`coophash.data.load_dataset`), :meth:`from_tensors` or
    :meth:`from_files`. ``transform`` (optional) is applied to the float image in ``__getitem__``
    only (augmentation for training); :meth:`images` and :meth:`pixels` never apply it.
    ``groups`` names index sets that the source defines (e.g. CIFAR-10's ``"train"``/``"test"``
    batches, or one set per image-list file); protocols may use them.
    """

    def __init__(
        self,
        images: Union[torch.Tensor, ImageFiles],
        labels: Union[torch.Tensor, np.ndarray],
        *,
        name: str,
        class_names: Optional[Sequence[str]] = None,
        transform: Optional[Transform] = None,
        groups: Optional[Mapping[str, Indices]] = None,
    ) -> None:
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
                raise ValueError(
                    f"images must be a uint8 tensor (N, C, H, W) with C = 1 or 3, "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            images = images.contiguous()
            n = int(images.shape[0])
        elif isinstance(images, ImageFiles):
            n = len(images)
        else:
            raise TypeError(f"images must be a uint8 torch.Tensor or ImageFiles, got {type(images).__name__}")
        self._store = images
        self.labels: torch.Tensor = _check_labels(labels, n)
        self.name: str = str(name)
        n_classes = int(self.labels.shape[1])
        if class_names is None:
            class_names = [str(c) for c in range(n_classes)]
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} label columns")
        self.class_names: Tuple[str, ...] = tuple(str(c) for c in class_names)
        self.transform: Optional[Transform] = transform
        self._groups: Dict[str, np.ndarray] = _check_groups(groups or {}, n)
        self._fingerprint: Optional[str] = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_tensors(
        cls,
        images: Union[torch.Tensor, np.ndarray],
        labels: Union[torch.Tensor, np.ndarray, Sequence[int]],
        *,
        name: str = "tensors",
        n_classes: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
        image_size: Optional[ImageSize] = None,
        channels: Optional[int] = None,
        transform: Optional[Transform] = None,
        groups: Optional[Mapping[str, Indices]] = None,
    ) -> "HashDataset":
        """Dataset from uint8 images (N, C, H, W) or (N, H, W) and labels (class ints (N,) or multi-hot (N, C)).

        A contiguous uint8 tensor that needs no resizing is kept as is (shared, not copied).
        """
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # copies read-only arrays
        pixels = torch.as_tensor(images)
        if pixels.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0-255), got {pixels.dtype}")
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(1)
        pixels = prepare_pixels(pixels, image_size, channels)
        label_tensor = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.array(labels))
        if label_tensor.ndim == 1:
            label_tensor = one_hot(label_tensor, n_classes)
        elif n_classes is not None and label_tensor.shape[1] != n_classes:
            raise ValueError(f"labels have {label_tensor.shape[1]} columns, n_classes = {n_classes}")
        return cls(pixels, label_tensor, name=name, class_names=class_names, transform=transform, groups=groups)

    @classmethod
    def from_files(
        cls,
        files: Sequence[Union[str, Path]],
        labels: Union[torch.Tensor, np.ndarray],
        *,
        image_size: ImageSize,
        channels: int,
        name: str = "files",
        class_names: Optional[Sequence[str]] = None,
        transform: Optional[Transform] = None,
        groups: Optional[Mapping[str, Indices]] = None,
    ) -> "HashDataset":
        """Lazily decoded dataset over image files (decoded, converted and resized on access)."""
        store = ImageFiles(files, image_size, channels)
        return cls(store, labels, name=name, class_names=class_names, transform=transform, groups=groups)

    # ------------------------------------------------------------------ properties
    @property
    def groups(self) -> Mapping[str, np.ndarray]:
        """Named index sets defined by the source (read-only), e.g. ``{"train": ..., "test": ...}``."""
        return MappingProxyType(self._groups)

    @property
    def n_classes(self) -> int:
        """Number of label columns."""
        return int(self.labels.shape[1])

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of every image."""
        if isinstance(self._store, torch.Tensor):
            return tuple(int(s) for s in self._store.shape[1:])  # type: ignore[return-value]
        return self._store.shape

    @property
    def lazy(self) -> bool:
        """True when images are decoded from files on access rather than held in memory."""
        return isinstance(self._store, ImageFiles)

    @property
    def is_single_label(self) -> bool:
        """True when every item has exactly one label."""
        return bool((self.labels.sum(dim=1) == 1).all())

    def class_indices(self) -> np.ndarray:
        """Class index (int64) of every item; only for single-label data."""
        if not self.is_single_label:
            raise ValueError(f"dataset {self.name!r} is multi-label; it has no single class per item")
        return self.labels.argmax(dim=1).numpy().astype(np.int64)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
        i = self._index(index)
        image = to_float(self._load(i))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i], i

    def pixels(self, indices: Optional[Indices] = None) -> torch.Tensor:
        """uint8 images (n, C, H, W) of ``indices`` (all when None: the stored tensor itself, do not modify)."""
        if isinstance(self._store, torch.Tensor):
            if indices is None:
                return self._store
            return self._store[torch.as_tensor(self._indices(indices), dtype=torch.int64)]
        idx = range(len(self)) if indices is None else self._indices(indices)
        out = torch.empty((len(idx), *self.image_shape), dtype=torch.uint8)
        for row, i in enumerate(idx):
            out[row] = self._store.load(int(i))
        return out

    def images(self, indices: Optional[Indices] = None) -> torch.Tensor:
        """float32 images in [-1, 1] (n, C, H, W) of ``indices`` (all when None), without transform."""
        return to_float(self.pixels(indices))

    def with_transform(self, transform: Optional[Transform]) -> "HashDataset":
        """A copy sharing images and labels but with another ``transform`` (e.g. augmentation for training)."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def fingerprint(self) -> str:
        """sha256 hex of the image bytes, the labels and the shapes (computed once, then cached).

        In-memory datasets hash their (resized) pixels; lazy ones hash the encoded file bytes and the
        decode settings, so the two modes give different fingerprints for the same files.
        """
        if self._fingerprint is None:
            hasher = hashlib.sha256(_FINGERPRINT_VERSION)
            if isinstance(self._store, torch.Tensor):
                hasher.update(f"pixels:{tuple(self._store.shape)}\n".encode())
                hasher.update(memoryview(self._store.numpy()).cast("B"))
            else:
                self._store.digest(hasher)
            labels = self.labels.numpy().astype(np.uint8)
            hasher.update(f"labels:{labels.shape}\n".encode())
            hasher.update(np.ascontiguousarray(labels).tobytes())
            self._fingerprint = hasher.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        kind = "lazy" if self.lazy else "in-memory"
        return (
            f"HashDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"n_classes={self.n_classes}, {kind})"
        )

    # ------------------------------------------------------------------ helpers
    def _load(self, i: int) -> torch.Tensor:
        if isinstance(self._store, torch.Tensor):
            return self._store[i]
        return self._store.load(i)

    def _index(self, index: int) -> int:
        if isinstance(index, torch.Tensor):
            index = int(index.item())
        i = int(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for dataset of {n} items")
        return i

    def _indices(self, indices: Indices) -> np.ndarray:
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be a 1-D integer sequence, got {idx.dtype} of shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"indices out of range for dataset of {len(self)} items")
        return np.array(idx, dtype=np.int64)  # a writable copy (manifest arrays are read-only)


def one_hot(classes: Union[torch.Tensor, np.ndarray], n_classes: Optional[int] = None) -> torch.Tensor:
    """float32 one-hot rows (N, C) from integer class indices (N,)."""
    classes = torch.from_numpy(np.array(classes)) if isinstance(classes, np.ndarray) else torch.as_tensor(classes)
    if classes.ndim != 1 or classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise ValueError(f"class labels must be a 1-D integer array, got {classes.dtype} {tuple(classes.shape)}")
    classes = classes.to(torch.int64)
    if classes.numel() and int(classes.min()) < 0:
        raise DataError(f"negative class label {int(classes.min())}")
    top = int(classes.max()) + 1 if classes.numel() else 0
    if n_classes is None:
        n_classes = top
    if top > n_classes:
        raise DataError(f"class label {top - 1} out of range for {n_classes} classes")
    out = torch.zeros((classes.numel(), n_classes), dtype=torch.float32)
    out[torch.arange(classes.numel()), classes] = 1.0
    return out


def _check_labels(labels: Union[torch.Tensor, np.ndarray], n: int) -> torch.Tensor:
    label_tensor = torch.from_numpy(np.array(labels)) if isinstance(labels, np.ndarray) else torch.as_tensor(labels)
    if label_tensor.ndim != 2:
        raise ValueError(f"labels must be multi-hot (N, n_classes), got shape {tuple(label_tensor.shape)}")
    if label_tensor.shape[0] != n:
        raise DataError(f"{label_tensor.shape[0]} label rows for {n} images")
    if label_tensor.shape[1] == 0:
        raise DataError("labels have no columns")
    label_tensor = label_tensor.to(torch.float32).contiguous()
    bad = ~((label_tensor == 0) | (label_tensor == 1))
    if bool(bad.any()):
        row, col = (int(v) for v in torch.nonzero(bad)[0])
        raise DataError(f"label values must be 0 or 1; row {row} column {col} is {label_tensor[row, col].item()}")
    empty = label_tensor.sum(dim=1) == 0
    if bool(empty.any()):
        raise DataError(f"label row {int(torch.nonzero(empty)[0])} is all zeros (every item needs a label)")
    return label_tensor


def _check_groups(groups: Mapping[str, Indices], n: int) -> Dict[str, np.ndarray]:
    checked: Dict[str, np.ndarray] = {}
    for key, value in groups.items():
        idx = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.int64).reshape(-1)
        idx = np.unique(idx)
        if idx.size and (idx[0] < 0 or idx[-1] >= n):
            raise ValueError(f"group {key!r} has indices outside [0, {n})")
        idx.setflags(write=False)
        checked[str(key)] = idx
    return checked

