"""Batch augmentations for training, driven by torch's RNG: weak (random shifts, optional horizontal flips)
and strong (random affine + cutout, for pseudo-label consistency).

They use the global torch generator, which the checkpoint saves and restores, so a resumed run draws the
same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_batch", "strong_augment", "random_affine", "cutout"]


def random_shift(x: torch.Tensor, max_shift: int, fill: float = -1.0) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with ``fill`` (background)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2))
    rows = (offs[:, 0, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = (offs[:, 1, None] + torch.arange(w)[None, :]).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    # gather rows then columns: padded[n, :, rows, cols]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0]) < 0.5
    if flip.any():
        x = x.clone()
        x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
    return x


def augment_batch(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply the named augmentation (``none``, ``shift``, ``shift+flip``) to a batch in [-1, 1]."""
    if mode == "none":
        return x
    max_shift = max(1, round(x.shape[-1] / 14))  # 2 px at 28 px, 1 px at 8 px
    x = random_shift(x, max_shift)
    if mode == "shift+flip":
        x = random_flip(x)
    return x


def random_affine(x: torch.Tensor, degrees: float = 15.0, translate: float = 0.125, scale: tuple[float, float] = (0.85, 1.15),
                  shear: float = 0.2, fill: float = -1.0) -> torch.Tensor:
    """Rotate (±``degrees``), scale, shear (±``shear`` rad) and translate (± ``translate`` of the side) each image.

    Parameters are drawn on the CPU from torch's global generator (so they are checkpointed and the same on
    every device); pixels outside the source image take ``fill`` (the background).
    """
    n = x.shape[0]
    if n == 0:
        return x
    angle = (torch.rand(n) * 2 - 1) * math.radians(degrees)
    s = scale[0] + torch.rand(n) * (scale[1] - scale[0])
    sh = (torch.rand(n) * 2 - 1) * shear
    t = (torch.rand(n, 2) * 2 - 1) * translate * 2  # grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / s
    theta[:, 0, 1] = (-sin + sh * cos) / s
    theta[:, 1, 0] = sin / s
    theta[:, 1, 1] = (cos + sh * sin) / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def cutout(x: torch.Tensor, size: float = 0.4, fill: float = -1.0) -> torch.Tensor:
    """Set one random square of side ``size`` × the image side (centre anywhere, clipped) to ``fill`` per image."""
    n, _, h, w = x.shape
    if n == 0:
        return x
    side_h, side_w = max(1, round(h * size)), max(1, round(w * size))
    cy = torch.randint(0, h, (n,))
    cx = torch.randint(0, w, (n,))
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_r = (rows >= (cy - side_h // 2)[:, None]) & (rows < (cy - side_h // 2 + side_h)[:, None])  # (n, h)
    in_c = (cols >= (cx - side_w // 2)[:, None]) & (cols < (cx - side_w // 2 + side_w)[:, None])  # (n, w)
    mask = (in_r[:, :, None] & in_c[:, None, :])[:, None].to(x.device)  # (n, 1, h, w)
    return torch.where(mask, torch.full_like(x, fill), x)


def strong_augment(x: torch.Tensor) -> torch.Tensor:
    """The strong view of pseudo-label consistency: random affine, then cutout (images in [-1, 1])."""
    return cutout(random_affine(x))
