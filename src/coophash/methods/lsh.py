"""Data-independent baseline: random-hyperplane projection of pixels (LSH for cosine similarity).

Centres the pixels with the training mean, projects on K seeded Gaussian directions and takes 1[p >= 0].
It needs no labels and no training; it is the floor every learned method must clear.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["RandomProjectionHash"]


class RandomProjectionHash:
    """``fit`` learns only the pixel mean; ``encode`` returns continuous projections (code = 1[p >= 0])."""

    def __init__(self, nbits: int, seed: int = 0) -> None:
        self.nbits = int(nbits)
        self.seed = int(seed)

    def fit(self, x: torch.Tensor) -> "RandomProjectionHash":
        """Learn the pixel mean of ``x`` (N, C, H, W) and draw the seeded projection."""
        flat = x.reshape(x.shape[0], -1).float()
        self.mean_ = flat.mean(dim=0)
        g = torch.Generator().manual_seed(self.seed)
        self.proj_ = torch.randn(flat.shape[1], self.nbits, generator=g)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of the centred pixels, shape (N, nbits)."""
        if not hasattr(self, "proj_"):
            raise RuntimeError("call fit() before encode()")
        flat = x.reshape(x.shape[0], -1).float().cpu()
        if flat.shape[1] != self.proj_.shape[0]:
            raise ValueError(f"expected images with {self.proj_.shape[0]} values, got {flat.shape[1]}")
        return (flat - self.mean_) @ self.proj_

    @staticmethod
    def chance_map(labels: np.ndarray) -> float:
        """mAP of a random ranking is about the fraction of relevant items (single-label: 1/C)."""
        lab = np.asarray(labels, dtype=np.float64)
        p = lab.mean(axis=0)
        return float((p * p).sum() / max(p.sum(), 1e-12))
