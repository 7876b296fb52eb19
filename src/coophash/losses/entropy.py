"""Maximum-entropy losses on fake images (DESIGN.md §2, seed 001): penalise confident outputs on fakes.

Not a supervised hashing loss (it takes no labels), so it is not in the loss registry.

* ``bits`` (default): ``L = −mean over images and bits of H(p_k)``, ``p_k = (1 + u_k) / 2``,
  ``H(p) = −p log p − (1 − p) log(1 − p)`` in nats.  Its minimum, ``−log 2``, is reached where every bit
  sits at ``p = 0.5`` (``u = 0``).  Given the pre-activation ``a`` (``u = tanh a``) the same value is
  computed stably from logits: ``p = σ(2a)``, ``H = p·softplus(−2a) + (1 − p)·softplus(2a)``, which keeps
  a gradient even where ``tanh`` saturates; from ``u`` alone ``p`` is clamped to ``[eps, 1 − eps]``.
* ``classes``: ``L = −mean over images of the entropy of the category posterior``: the softmax over the
  logits for single-label data (minimum ``−log C`` at the uniform posterior, as in LSRO), the mean
  per-class Bernoulli entropy of the sigmoids for multi-label data (minimum ``−log 2``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ENTROPY_MODES",
    "MaxEntropyLoss",
    "bernoulli_entropy",
    "bernoulli_entropy_from_logits",
    "bit_entropy_loss",
    "class_entropy_loss",
]

ENTROPY_MODES = ("bits", "classes")


def bernoulli_entropy(p: Tensor, eps: float = 1e-6) -> Tensor:
    """Element-wise ``H(p) = −p log p − (1 − p) log(1 − p)`` (nats), ``p`` clamped to ``[eps, 1 − eps]``."""
    p = p.clamp(eps, 1.0 - eps)
    return -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p))


def bernoulli_entropy_from_logits(z: Tensor) -> Tensor:
    """Element-wise entropy of ``Bernoulli(σ(z))`` computed stably from the logit ``z`` (nats)."""
    p = torch.sigmoid(z)
    return p * F.softplus(-z) + (1.0 - p) * F.softplus(z)


def bit_entropy_loss(u: Tensor | None = None, pre: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """``−mean H((1 + u) / 2)`` over rows and bits; from ``pre`` (``u = tanh pre``) when given (stable)."""
    if pre is not None:
        if pre.dim() != 2:
            raise ValueError(f"bit_entropy_loss: pre must be (N, K), got {tuple(pre.shape)}")
        if pre.numel() == 0:
            return pre.sum() * 0.0
        return -bernoulli_entropy_from_logits(2.0 * pre).mean()
    if u is None:
        raise ValueError("bit_entropy_loss: give u or pre")
    if u.dim() != 2:
        raise ValueError(f"bit_entropy_loss: u must be (N, K), got {tuple(u.shape)}")
    if u.numel() == 0:
        return u.sum() * 0.0
    return -bernoulli_entropy((1.0 + u) / 2.0, eps).mean()


def class_entropy_loss(logits: Tensor, multi_label: bool = False) -> Tensor:
    """``−mean entropy`` of the category posterior: softmax (single-label) or per-class sigmoids (multi-label)."""
    if logits.dim() != 2:
        raise ValueError(f"class_entropy_loss: logits must be (N, C), got {tuple(logits.shape)}")
    if logits.numel() == 0:
        return logits.sum() * 0.0
    if multi_label:
        return -bernoulli_entropy_from_logits(logits).mean()
    logp = F.log_softmax(logits, dim=1)
    return (logp.exp() * logp).sum(dim=1).mean()


class MaxEntropyLoss(nn.Module):
    """``−entropy`` of fake images' outputs: per-bit Bernoulli entropy (``bits``) or category posterior (``classes``)."""

    def __init__(self, mode: str = "bits", multi_label: bool = False) -> None:
        super().__init__()
        if mode not in ENTROPY_MODES:
            raise ValueError(f"MaxEntropyLoss: mode must be one of {ENTROPY_MODES}, got {mode!r}")
        self.mode = mode
        self.multi_label = bool(multi_label)

    def minimum(self, n_outputs: int) -> float:
        """The smallest value the loss can take (every output maximally uncertain)."""
        if self.mode == "classes" and not self.multi_label:
            return -math.log(n_outputs)
        return -math.log(2.0)

    def forward(self, out: object) -> Tensor:
        """The loss for a network output with ``pre``/``u`` (bits) or ``logits`` (classes)."""
        if self.mode == "bits":
            pre = getattr(out, "pre", None)
            return bit_entropy_loss(u=getattr(out, "u", None), pre=pre)
        logits = getattr(out, "logits", None)
        if logits is None:
            raise ValueError("MaxEntropyLoss(mode='classes') needs a network with a category head (logits)")
        return class_entropy_loss(logits, self.multi_label)

    def extra_repr(self) -> str:
        """Mode and label type, shown by ``repr``."""
        return f"mode={self.mode!r}, multi_label={self.multi_label}"
