"""Encode-then-pack: images through a method's ``encode`` to packed binary codes, in batches.

The one home of "continuous outputs u → bits 1[u >= 0] → packed uint8 (LSB-first)" for trained networks;
the trainer's evaluation, ``Hasher.encode``, the CLI and the demo all call these two functions.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from coophash.codes import binarize, pack_bits
from coophash.data import HashDataset

__all__ = ["EncodeFn", "encode_images", "encode_indices"]

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def _packed(encode_fn: EncodeFn, batches: Iterable[torch.Tensor], device: torch.device) -> np.ndarray:
    """Packed codes of every batch, concatenated; ValueError when there is nothing to encode."""
    chunks = []
    for x in batches:
        u = encode_fn(x.to(device)).float().cpu()
        chunks.append(pack_bits(binarize(u).numpy()))
    if not chunks:
        raise ValueError("no items to encode")
    return np.concatenate(chunks, axis=0)


def encode_images(
    encode_fn: EncodeFn, images: torch.Tensor, device: torch.device, batch_size: int = 512
) -> np.ndarray:
    """Packed codes (n, ceil(K/8)) of images (n, C, H, W) already in memory."""
    return _packed(encode_fn, (images[s : s + batch_size] for s in range(0, images.shape[0], batch_size)), device)


def encode_indices(
    encode_fn: EncodeFn,
    ds: HashDataset,
    indices: np.ndarray,
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    """Packed codes (n, ceil(K/8)) of the dataset items at ``indices`` (images read one batch at a time)."""
    batches = (ds.images(np.asarray(indices[s : s + batch_size])) for s in range(0, len(indices), batch_size))
    return _packed(encode_fn, batches, device)
