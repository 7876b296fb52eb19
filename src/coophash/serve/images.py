"""Uploaded images in, PNG thumbnails out.

An upload is checked before it is decoded (byte size, format from the header, width × height), then
decoded to uint8 with its native channels the way the dataset readers do (gray modes → 1 channel, the rest
→ RGB, alpha dropped); 16-bit gray PNGs are scaled by 255/65535 rather than clipped.  ``to_model_input``
converts channels and size with :func:`coophash.data.prepare_pixels` and scales to [-1, 1].
"""
from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np
import torch

from coophash.data import prepare_pixels, to_float

from .config import ServeError

__all__ = ["decode_upload", "to_model_input", "png_bytes", "ACCEPTED_FORMATS"]

#: Pillow format names accepted for uploads (MPO is how Pillow names some camera JPEGs).
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO")
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _open(data: bytes, name: str, max_pixels: int):
    """Open (header only) and check format and size; the image is not decoded yet."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ServeError(413, f"{name}: image has too many pixels (limit {max_pixels})") from None
    except Exception as exc:  # Pillow raises several types for unreadable headers
        raise ServeError(400, f"{name}: not a readable PNG or JPEG image ({type(exc).__name__})") from None
    if im.format not in ACCEPTED_FORMATS:
        im.close()
        raise ServeError(415, f"{name}: unsupported image format {im.format}; send PNG or JPEG")
    width, height = im.size
    if width < 1 or height < 1 or width * height > max_pixels:
        im.close()
        raise ServeError(413, f"{name}: image of {width}x{height} pixels is over the limit of {max_pixels} pixels")
    return im


def _to_array(im) -> np.ndarray:
    """Decoded pixels as uint8 (H, W) or (H, W, 3)."""
    if im.mode in _WIDE_GRAY_MODES:  # 16-bit gray: scale the full range down instead of clipping at 255
        wide = np.asarray(im, dtype=np.float64)
        return np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    if im.mode == "F":
        raise ValueError("floating-point images are not supported")
    mode = "L" if im.mode in _GRAY_MODES else "RGB"
    return np.asarray(im.convert(mode), dtype=np.uint8)


def decode_upload(data: bytes, name: str, max_bytes: int, max_pixels: int) -> torch.Tensor:
    """Bytes of an uploaded PNG/JPEG → uint8 (C, H, W) with native channels; ServeError (4xx) on bad input."""
    if len(data) == 0:
        raise ServeError(400, f"{name}: empty upload")
    if len(data) > max_bytes:
        raise ServeError(413, f"{name}: upload of {len(data)} bytes is over the limit of {max_bytes} bytes")
    im = _open(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: our own limit applies
            array = _to_array(im)
    except Exception as exc:  # truncated or corrupt data surfaces only while decoding
        raise ServeError(400, f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    finally:
        im.close()
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.array(array, dtype=np.uint8, order="C"))  # a writable copy


def to_model_input(pixels: list[torch.Tensor], image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (C, H, W) images of any size → (uint8 batch (n, channels, s, s), float batch in [-1, 1])."""
    batch = [prepare_pixels(p[None], image_size=image_size, channels=channels) for p in pixels]
    stored = torch.cat(batch) if batch else torch.zeros((0, channels, image_size, image_size), dtype=torch.uint8)
    return stored, to_float(stored)


def png_bytes(pixels: torch.Tensor, scale: Optional[int] = None) -> bytes:
    """PNG file bytes of one uint8 (C, H, W) image; ``scale`` enlarges it by pixel repetition."""
    from PIL import Image

    array = pixels.numpy()
    if scale and scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    image = Image.fromarray(array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
