"""Fake-image files (stage 1 → stage 2 of fake-image regularised hashing), sample grids and GAN loss curves.

A fakes file is a safetensors file (no pickle) holding

* ``images``: (M, C, H, W), ``uint8`` (pixel = round((x + 1) · 127.5), the default) or ``float16`` in [-1, 1];
* ``labels`` (optional): (M, n_classes) ``uint8`` multi-hot, the conditioning labels of a conditional GAN;

and string metadata: ``format`` = ``coophash-fakes``, ``format_version``, ``channels``, ``height``,
``width``, ``count``, ``dtype``, ``conditional``, ``source`` (the GAN run that made them) and anything
the writer adds (e.g. ``train_split_sha1``, a hash of the training indices the GAN saw), and (version 2
on) ``sha256``, a checksum of the whole file verified whenever it is read (:mod:`coophash.utils.integrity`);
version-1 files, without one, are read as they are.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

from coophash.utils.integrity import CHECKSUM_KEY, IntegrityError, read_safetensors, seal_safetensors
from coophash.utils.io import atomic_write_bytes

__all__ = [
    "FAKES_FORMAT",
    "FAKES_VERSION",
    "Fakes",
    "FakesError",
    "from_uint8",
    "load_fakes",
    "plot_loss_curves",
    "read_fakes_meta",
    "save_fakes",
    "save_image_grid",
    "to_uint8",
    "update_fakes_meta",
]

FAKES_FORMAT = "coophash-fakes"
FAKES_VERSION = 2
_SEALED_VERSION = 2  # first version with a checksum: from here on a file without one is damaged
PathLike = str | Path


class FakesError(ValueError):
    """A fakes file is missing, unreadable, or does not fit the data it is used with."""


@dataclass
class Fakes:
    """Fake images as stored (``uint8`` or ``float16``), their optional labels and the file's metadata."""

    images: Tensor
    labels: Tensor | None
    meta: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def batch(self, index: Tensor, device: torch.device | None = None) -> Tensor:
        """Float32 images in [-1, 1] at ``index``."""
        x = self.images[index.to(self.images.device)]
        x = from_uint8(x) if x.dtype == torch.uint8 else x.float()
        return x if device is None else x.to(device)

    def as_float(self) -> Tensor:
        """Every image as float32 in [-1, 1]."""
        return from_uint8(self.images) if self.images.dtype == torch.uint8 else self.images.float()


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] → ``uint8`` 0..255 (``round((x + 1) · 127.5)``, clamped)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    """``uint8`` 0..255 → float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def save_fakes(
    path: PathLike,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    source: str = "",
    dtype: str = "uint8",
    extra_meta: Mapping[str, object] | None = None,
) -> Path:
    """Write fake images (N, C, H, W) in [-1, 1] (+ optional multi-hot labels) to ``path`` atomically."""
    if images.dim() != 4:
        raise FakesError(f"{path}: fake images must be (N, C, H, W), got {tuple(images.shape)}")
    if dtype == "uint8":
        stored = to_uint8(images)
    elif dtype == "float16":
        stored = images.detach().float().clamp(-1, 1).to(torch.float16)
    else:
        raise FakesError(f"{path}: dtype must be uint8 or float16, got {dtype!r}")
    n, c, h, w = (int(v) for v in images.shape)
    tensors = {"images": stored.cpu().contiguous()}
    if labels is not None:
        if labels.dim() != 2 or labels.shape[0] != n:
            raise FakesError(f"{path}: labels must be (N={n}, n_classes), got {tuple(labels.shape)}")
        tensors["labels"] = (labels.detach() > 0).to(torch.uint8).cpu().contiguous()
    meta = {
        "format": FAKES_FORMAT,
        "format_version": str(FAKES_VERSION),
        "channels": str(c),
        "height": str(h),
        "width": str(w),
        "count": str(n),
        "dtype": dtype,
        "conditional": "true" if labels is not None else "false",
        "source": str(source),
    }
    for k, v in (extra_meta or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return atomic_write_bytes(path, _seal(tensors, meta))


def _read_tensors(p: Path) -> tuple[dict, dict]:
    """Metadata and tensors of a fakes file whose checksum has been verified."""
    meta, data = _read_verified(p)
    try:
        return meta, _st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FakesError(f"{p}: unreadable fakes file (corrupted tensors): {exc}") from None


def update_fakes_meta(path: PathLike, extra_meta: Mapping[str, object]) -> Path:
    """Add or replace metadata entries of a fakes file, rewritten atomically with a new checksum.

    The tensors are written back as read (bit-identical); the format entries cannot be changed this way.
    """
    p = Path(path)
    meta, tensors = _read_tensors(p)
    fixed = {"format", "format_version", "channels", "height", "width", "count", "dtype", "conditional", CHECKSUM_KEY}
    meta.pop(CHECKSUM_KEY, None)
    for k, v in extra_meta.items():
        if str(k) in fixed:
            raise FakesError(f"{p}: metadata entry {k!r} describes the file's layout and cannot be changed")
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return atomic_write_bytes(p, _seal(tensors, meta))


def _seal(tensors: dict[str, Tensor], meta: dict[str, str]) -> bytes:
    """The bytes of a fakes file with its checksum."""
    return seal_safetensors(_st_save, tensors, meta)


def _read_verified(p: Path) -> tuple[dict[str, str], bytes]:
    """(metadata, bytes) of a fakes file whose checksum (version 2 on) and format marker are checked."""
    if not p.is_file():
        raise FakesError(f"{p}: fakes file not found")
    try:
        data = p.read_bytes()
        meta, sealed = read_safetensors(data)
    except (IntegrityError, OSError) as exc:
        raise FakesError(f"{p}: unreadable fakes file: {exc}") from None
    if meta.get("format") != FAKES_FORMAT:
        raise FakesError(f"{p}: not a coophash fakes file (format marker {meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise FakesError(f"{p}: bad fakes format version {meta.get('format_version')!r:.40}") from None
    if version > FAKES_VERSION:
        raise FakesError(f"{p}: fakes format version {version} is newer than this coophash reads")
    if version >= _SEALED_VERSION and not sealed:
        raise FakesError(f"{p}: unreadable fakes file: its checksum is missing (damaged)")
    return meta, data


def read_fakes_meta(path: PathLike) -> dict[str, str]:
    """The metadata of a fakes file (reads the whole file to verify its checksum and format marker)."""
    return _read_verified(Path(path))[0]


def load_fakes(
    path: PathLike,
    channels: int | None = None,
    image_size: int | None = None,
    n_classes: int | None = None,
) -> Fakes:
    """Read a fakes file; with ``channels``/``image_size`` given, a mismatch raises :class:`FakesError`."""
    p = Path(path)
    meta, tensors = _read_tensors(p)
    if "images" not in tensors:
        raise FakesError(f"{p}: fakes file holds no 'images' tensor (keys: {sorted(tensors)})")
    images = tensors["images"]
    labels = tensors.get("labels")
    if images.dim() != 4 or images.dtype not in (torch.uint8, torch.float16, torch.float32):
        raise FakesError(f"{p}: 'images' must be (M, C, H, W) uint8/float16, got {tuple(images.shape)} {images.dtype}")
    found = tuple(int(v) for v in images.shape[1:])
    if channels is not None or image_size is not None:
        exp_c = channels if channels is not None else found[0]
        exp_s = image_size if image_size is not None else found[1]
        expected = (int(exp_c), int(exp_s), int(exp_s))
        if found != expected:
            raise FakesError(
                f"{p}: fake images have shape (channels, height, width) = {found} but the training data needs "
                f"{expected}; make fakes from a GAN trained on this dataset at this image size "
                "(coophash gan --dataset ... --image-size ...)"
            )
    if images.shape[0] == 0:
        raise FakesError(f"{p}: the fakes file holds no images")
    if labels is not None:
        if labels.dim() != 2 or labels.shape[0] != images.shape[0]:
            raise FakesError(f"{p}: 'labels' must be (M={images.shape[0]}, n_classes), got {tuple(labels.shape)}")
        if n_classes is not None and labels.shape[1] != n_classes:
            raise FakesError(f"{p}: fake labels have {labels.shape[1]} classes, the data has {n_classes}")
    return Fakes(images=images, labels=labels, meta=meta, path=p)


# ----------------------------------------------------------------------------------------------------
# pictures


def _png_bytes(fig) -> bytes:  # type: ignore[no-untyped-def]
    """A matplotlib figure as PNG bytes (closes the figure)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def save_image_grid(images: Tensor, path: PathLike, nrow: int | None = None, pad: int = 2,
                    scale: int = 2) -> Path:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid (``nrow`` per row; pixels upscaled ``scale``×)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"save_image_grid: images must be non-empty (N, C, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().clamp(-1, 1) + 1) / 2).cpu()
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    arr = grid[0].numpy() if c == 1 else grid[:3].permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    plt.imsave(buf, arr, cmap="gray" if c == 1 else None, vmin=0.0, vmax=1.0, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def plot_loss_curves(records: Iterable[Mapping[str, object]], keys: Sequence[str], path: PathLike,
                     title: str = "") -> Path:
    """Per-epoch curves of the metric ``keys`` (from ``metrics.jsonl`` records) written to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in records if "epoch" in r and not r.get("final")]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in recs if isinstance(r.get(k), (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.set_title(title or "training losses")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic_write_bytes(path, _png_bytes(fig))
