"""The class loss on category logits: softmax cross-entropy (single-label) or sigmoid BCE (multi-label).

One home for the classification term that GreedyHash and OrthoHash put on their logits and that CoopHash
and fake-image regularisation put on a category head. Labels are multi-hot float ``(N, C)``; single-label
data is one-hot, whose target class is the row's argmax.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_loss"]


def class_loss(logits: Tensor, labels: Tensor, multi_label: bool, labeled: Optional[Tensor] = None) -> Tensor:
    """``mean_i −log softmax(logits_i)[argmax y_i]`` or ``mean_{i,c} BCE(σ(logits_ic), y_ic)`` (multi-label).

    With ``labeled`` (N,) bool only those rows count; when none is labeled the result is a zero connected to
    ``logits`` (so ``backward()`` works). Labels are cast to the logits' dtype for BCE.
    """
    if logits.dim() != 2 or labels.shape != logits.shape:
        raise ValueError(
            f"class_loss: logits and labels must be (N, C) of one shape, got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if labeled is not None:
        if not bool(labeled.any()):
            return logits.sum() * 0.0
        logits, labels = logits[labeled], labels[labeled]
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.cross_entropy(logits, labels.argmax(dim=1))
