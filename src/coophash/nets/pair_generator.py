"""CoopHash's contrastive pair generator ``G_α(z, y)``: top-down, conditioned on a latent z and labels y.

From one shared latent z it makes a contrastive pair: ``x̂⁺ = G(z, y)`` (same labels as the anchor) and
``x̂⁻ = G(z, y⁻)`` with ``y⁻`` sharing no label with ``y`` (same style, other semantics); optionally a
second positive ``G(z', y)`` from a fresh ``z'``.  Outputs lie in [-1, 1] (tanh).

Architecture: ``[z, embed(y)]`` → linear → (width, s0, s0) → stages of (nearest 2× upsample, 3×3 conv,
leaky ReLU, plus a label-dependent per-channel bias) → 3×3 conv → tanh.  No batch norm, so a sample does
not depend on the rest of its batch.  ``s0`` is the side halved while it stays even and at least 4 px
(28 → 7, 8 → 4, 64 → 4, 32 → 4), so any 8–64 px side is produced exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["PairGenerator", "ContrastivePairs", "sample_negative_labels", "shares_label"]


def shares_label(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise bool (N,): whether multi-hot rows ``a[i]`` and ``b[i]`` share at least one label."""
    return ((a > 0) & (b > 0)).any(dim=1)


def sample_negative_labels(y: Tensor, multi_label: bool = False) -> Tensor:
    """For each multi-hot row of ``y`` a label vector sharing no label with it (torch's global generator).

    Single-label: a uniformly drawn other class (one-hot).  Multi-label: another row of the batch that shares
    no label with the row (uniformly among such rows), or, where none exists, one class drawn uniformly from
    the row's complement.  A row holding every class has no negative: ValueError.
    """
    if y.dim() != 2:
        raise ValueError(f"labels must be (N, C) multi-hot, got {tuple(y.shape)}")
    pos = y > 0
    n, c = y.shape
    complement = ~pos
    if bool((complement.sum(dim=1) == 0).any()):
        raise ValueError("a label vector holds every class: no negative label vector shares no label with it")
    # a random class from each row's complement (uniform): argmax of random scores over allowed classes
    scores = torch.rand(n, c, device=y.device)
    scores = torch.where(complement, scores, torch.full_like(scores, -1.0))
    one = torch.zeros_like(y)
    one[torch.arange(n, device=y.device), scores.argmax(dim=1)] = 1.0
    if not multi_label or n < 2:
        return one
    disjoint = ~((pos.float() @ pos.float().T) > 0)  # (N, N): rows sharing no label
    r = torch.rand(n, n, device=y.device)
    r = torch.where(disjoint, r, torch.full_like(r, -1.0))
    pick = r.argmax(dim=1)
    has = disjoint.any(dim=1)
    other = y[pick]
    return torch.where(has[:, None], other, one)


@dataclass
class ContrastivePairs:
    """A batch of contrastive pairs: shared latent, labels and the generated images."""

    z: Tensor
    y_pos: Tensor
    y_neg: Tensor
    x_pos: Tensor
    x_neg: Tensor
    z2: Optional[Tensor] = None
    x_pos2: Optional[Tensor] = None


class PairGenerator(nn.Module):
    """Conditional top-down generator ``G(z, y)`` for (C, H, H) images in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int,
        n_classes: int,
        out_channels: int,
        image_size: int,
        width: int = 64,
        embed_dim: int = 32,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if image_size < 2:
            raise ValueError(f"image_size must be >= 2, got {image_size}")
        self.latent_dim = latent_dim
        self.n_classes = n_classes
        self.out_channels = out_channels
        self.image_size = image_size
        s0, n_up = image_size, 0
        while s0 % 2 == 0 and s0 // 2 >= 4:
            s0 //= 2
            n_up += 1
        self.s0 = s0
        self.w0 = min(256, width * 2 ** max(0, n_up - 1))
        self.embed = nn.Linear(n_classes, embed_dim)
        self.fc = nn.Linear(latent_dim + embed_dim, self.w0 * s0 * s0)
        self.act = nn.LeakyReLU(negative_slope)
        self.convs = nn.ModuleList()
        self.label_bias = nn.ModuleList()
        ch = self.w0
        for i in range(n_up):
            out = max(16, self.w0 // 2 ** (i + 1))
            self.convs.append(nn.Conv2d(ch, out, 3, padding=1))
            self.label_bias.append(nn.Linear(n_classes, out, bias=False))
            ch = out
        self.to_img = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """Images (N, C, H, H) in [-1, 1] for latents z (N, d) and multi-hot labels y (N, n_classes)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, {self.latent_dim}), got {tuple(z.shape)}")
        if y.shape != (z.shape[0], self.n_classes):
            raise ValueError(f"y must be (N={z.shape[0]}, {self.n_classes}), got {tuple(y.shape)}")
        y = y.to(z.dtype)
        h = self.act(self.fc(torch.cat([z, self.embed(y)], dim=1)))
        h = h.view(z.shape[0], self.w0, self.s0, self.s0)
        for conv, lb in zip(self.convs, self.label_bias):
            h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            h = self.act(conv(h) + lb(y)[:, :, None, None])
        return torch.tanh(self.to_img(h))

    def sample_latent(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``n`` latents from N(0, I) (torch's global generator)."""
        return torch.randn(n, self.latent_dim, device=device)

    def make_pairs(
        self,
        y: Tensor,
        multi_label: bool = False,
        second_positive: bool = False,
        z: Optional[Tensor] = None,
        y_neg: Optional[Tensor] = None,
    ) -> ContrastivePairs:
        """Contrastive pairs for anchors with labels ``y``: ``(G(z, y), G(z, y⁻))`` (+ ``G(z', y)``)."""
        n = y.shape[0]
        dev = y.device
        z = self.sample_latent(n, dev) if z is None else z
        y_neg = sample_negative_labels(y, multi_label) if y_neg is None else y_neg
        if bool(shares_label(y, y_neg).any()):
            raise ValueError("y_neg shares a label with y in some row")
        z2 = self.sample_latent(n, dev) if second_positive else None
        zs = [z, z] + ([z2] if z2 is not None else [])
        ys = [y, y_neg] + ([y] if z2 is not None else [])
        x = self(torch.cat(zs), torch.cat(ys).to(z.dtype))
        parts = x.split(n)
        return ContrastivePairs(
            z=z, y_pos=y, y_neg=y_neg, x_pos=parts[0], x_neg=parts[1], z2=z2,
            x_pos2=parts[2] if z2 is not None else None,
        )
