"""A replay buffer of persistent Langevin chains (JEM / IGEBM), kept as checkpointed module buffers.

The buffer holds ``size`` images with their (conditioning) labels and a count of the slots filled so far.  Each
step :meth:`ReplayBuffer.draw` picks ``batch`` chains: while the buffer is filling, the next empty slots (all
of them fresh chains); once full, ``batch`` distinct random slots, each restarted with probability ``reinit``
(JEM's 5%).  The caller initialises the fresh chains (CoopHash: generator samples ``G(z, y)`` for labels drawn
from the labeled batch, or uniform noise in the "no generator" ablation), continues every drawn chain by its
Langevin steps and writes the results back with :meth:`ReplayBuffer.write`.

Everything lives in registered buffers (images, labels, filled) of an ``nn.Module`` that the method lists in
its ``modules()``, so a checkpoint holds the chains and a resumed run continues them exactly; every random
choice comes from torch's global generator (checkpointed).  Memory: ``size × C × H × W`` float32 values (2000
MNIST chains: 6 MB; at 224 px, 1.2 GB).  With several ranks the trainer broadcasts rank 0's buffers after
each step, so all ranks continue rank 0's chains.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ReplayBuffer", "ChainDraw"]


@dataclass
class ChainDraw:
    """Chains drawn for one step: buffer ``slots`` (m,), which of them are ``fresh`` (m,) bool, and the
    stored images (m, C, H, W) and labels (m, n_classes) of every slot (meaningless where fresh)."""

    slots: Tensor
    fresh: Tensor
    images: Tensor
    labels: Tensor


class ReplayBuffer(nn.Module):
    """``size`` persistent chains of images (C, H, W) with float labels over ``n_classes``."""

    def __init__(self, size: int, channels: int, image_size: int, n_classes: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"replay buffer size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("images", torch.zeros(size, channels, image_size, image_size))
        self.register_buffer("labels", torch.zeros(size, n_classes))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def draw(self, batch: int, reinit: float) -> ChainDraw:
        """``batch`` chains: the next empty slots while filling, else distinct random slots (fresh w.p. ``reinit``)."""
        filled = int(self.filled)
        dev = self.images.device
        if filled < self.size:
            k = min(batch, self.size - filled)
            slots = torch.arange(filled, filled + k)
            fresh = torch.ones(k, dtype=torch.bool)
        else:
            slots = torch.randperm(self.size)[: min(batch, self.size)]
            fresh = torch.rand(slots.shape[0]) < reinit
        slots = slots.to(dev)
        return ChainDraw(slots=slots, fresh=fresh.to(dev), images=self.images[slots], labels=self.labels[slots])

    @torch.no_grad()
    def write(self, slots: Tensor, images: Tensor, labels: Tensor) -> None:
        """Store the continued chains in their slots; the filled count grows to cover them."""
        self.images[slots] = images.detach().to(self.images.dtype)
        self.labels[slots] = labels.detach().to(self.labels.dtype)
        if slots.numel():
            self.filled.fill_(max(int(self.filled), int(slots.max()) + 1))
