"""Pixel plumbing shared by every reader: decoding, channel conversion, resizing, scaling to [-1, 1].

Stored images are ``uint8`` tensors of shape (N, C, H, W). Model inputs are ``float32`` in [-1, 1]
(``x / 127.5 - 1``). Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``),
done once at load time, so every reader resizes the same way whether pixels came from an array or a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from coophash.data.errors import DataError

__all__ = [
    "ImageSize",
    "normalize_size",
    "normalize_channels",
    "prepare_pixels",
    "to_float",
    "read_image_header",
    "decode_image",
    "IMAGE_EXTENSIONS",
]

ImageSize = Union[int, Sequence[int]]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# ITU-R BT.601 luma weights, the ones PIL uses for convert("L").
_LUMA = (0.299, 0.587, 0.114)
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # more than 8 bits per pixel
_CHUNK = 1024


def normalize_size(image_size: Optional[ImageSize]) -> Optional[Tuple[int, int]]:
    """``None`` stays ``None``; an int ``s`` becomes ``(s, s)``; a pair is ``(H, W)``."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    else:
        try:
            values = tuple(int(v) for v in image_size)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"image_size must be an int or an (H, W) pair, got {image_size!r}") from None
        if len(values) != 2:
            raise ValueError(f"image_size must be an int or an (H, W) pair, got {image_size!r}")
        size = (values[0], values[1])
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def normalize_channels(channels: Optional[int]) -> Optional[int]:
    """Check a requested channel count: ``None`` (keep native), 1 or 3."""
    if channels is None:
        return None
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    return int(channels)


def prepare_pixels(
    pixels: torch.Tensor,
    image_size: Optional[ImageSize] = None,
    channels: Optional[int] = None,
) -> torch.Tensor:
    """Convert channels (gray→RGB repeat, RGB→gray luma) and resize a uint8 (N, C, H, W) batch.

    Both steps run in float with a single rounding at the end; with nothing to do the input is returned.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {pixels.dtype} {tuple(pixels.shape)}")
    size = normalize_size(image_size)
    target_c = normalize_channels(channels)
    n, c, h, w = pixels.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    convert = target_c is not None and target_c != c
    resize = size is not None and size != (h, w)
    if not resize and not convert:
        return pixels
    if not resize and target_c == 3:  # exact: gray repeated to RGB
        return pixels.expand(n, 3, h, w).contiguous()
    out_c = target_c if target_c is not None else c
    out_h, out_w = size if size is not None else (h, w)
    out = torch.empty((n, out_c, out_h, out_w), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        x = pixels[start : start + _CHUNK].to(torch.float32)
        if convert and target_c == 1:
            weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        if resize:
            x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
        # a gray chunk broadcasts over the 3 output channels when converting gray to RGB
        out[start : start + _CHUNK] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to float32 in [-1, 1] (0 → -1, 255 → 1)."""
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


def _open_error(path: Path, exc: BaseException) -> DataError:
    return DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})")


def read_image_header(path: Union[str, Path]) -> Tuple[int, int, int]:
    """(height, width, native channels 1 or 3) of an image file, reading only its header."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _open_error(path, exc) from exc
    return height, width, 1 if mode in _GRAY_MODES else 3


def decode_image(path: Union[str, Path]) -> np.ndarray:
    """Decode an image file to uint8 (C, H, W) with its native channels (1 for gray modes, else 3).

    Gray images of more than 8 bits are scaled from their format's range, not clipped: 16-bit
    (``I;16``, and ``I`` holding values in 0..65535, the form of 16-bit PNGs in older Pillow) by
    255/65535, float (``F``) images in [0, 1] by 255.  Values outside those ranges are refused.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_GRAY_MODES:
                array = _wide_gray_to_uint8(np.asarray(im), im.mode, path)
            else:
                mode = "L" if im.mode in _GRAY_MODES else "RGB"
                array = np.asarray(im.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if isinstance(exc, DataError):
            raise
        raise _open_error(path, exc) from exc
    if array.ndim == 2:
        return array[None, :, :].copy()
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _wide_gray_to_uint8(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """8-bit pixels of a 16-bit, 32-bit integer or float gray image, scaled from its format's range."""
    if mode == "F":
        lo, hi, scale = 0.0, 1.0, 255.0
    else:  # "I;16*" are 0..65535 by format; "I" (int32) is taken as 16-bit, its usual source
        lo, hi, scale = 0.0, 65535.0, 255.0 / 65535.0
    v = values.astype(np.float64)
    if v.size and not (np.isfinite(v).all() and v.min() >= lo and v.max() <= hi):
        raise DataError(f"{path}: {mode} gray pixels must lie in [{lo:g}, {hi:g}], found "
                        f"[{np.nanmin(v):g}, {np.nanmax(v):g}]; convert the image to 8 or 16 bits")
    return np.rint(v * scale).astype(np.uint8)


def read_image_file(
    path: Union[str, Path], image_size: Optional[ImageSize] = None, channels: Optional[int] = None
) -> torch.Tensor:
    """One image file as float32 (C, H, W) in [-1, 1], resized and channel-converted like a dataset."""
    pixels = torch.from_numpy(np.ascontiguousarray(decode_image(path)))[None]
    return to_float(prepare_pixels(pixels, image_size=image_size, channels=channels))[0]
