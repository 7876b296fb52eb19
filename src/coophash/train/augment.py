"""Batch augmentations for training (random shifts, optional horizontal flips), driven by torch's RNG.

They use the global torch generator, which the checkpoint saves and restores, so a resumed run draws the
same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment_batch"]


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
