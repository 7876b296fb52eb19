"""Pseudo-label consistency (FixMatch form): confident predictions on weak views teach strong views.

For unlabeled images the category head's prediction on a weakly augmented view, where it is confident, becomes
the target of the same image's strongly augmented view (Sohn et al. 2020, "FixMatch"):

    L_u = (1/N) Σ_i 1[max_c p(c|weak_i) ≥ τ] · H(ŷ_i, p(·|strong_i)),   ŷ_i = one-hot argmax_c p(c|weak_i)

normalised by all N unlabeled rows (not by the confident ones), so the term grows as confidence spreads. The
multi-label form (ours) thresholds every class: the row counts when each sigmoid output is ≥ τ or ≤ 1 − τ and at
least one class is on; its target is the multi-hot ``p ≥ 0.5`` and the loss is the mean binary cross-entropy.
The same targets serve as labels of the strong views for a hashing loss (:func:`pseudo_labels`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pseudo_labels", "consistency_loss"]


@torch.no_grad()
def pseudo_labels(logits: Tensor, threshold: float, multi_label: bool) -> tuple[Tensor, Tensor]:
    """``(targets (N, C) float multi-hot, confident (N,) bool)`` from the logits of weak views (no gradient)."""
    if logits.dim() != 2:
        raise ValueError(f"pseudo_labels: logits must be (N, C), got {tuple(logits.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"pseudo_labels: threshold must be in [0, 1], got {threshold}")
    logits = logits.float()
    if multi_label:
        p = torch.sigmoid(logits)
        targets = (p >= 0.5).float()
        sure = torch.maximum(p, 1.0 - p).min(dim=1).values >= threshold
        return targets, sure & (targets.sum(dim=1) > 0)
    p = torch.softmax(logits, dim=1)
    conf, cls = p.max(dim=1)
    return F.one_hot(cls, logits.shape[1]).float(), conf >= threshold


def consistency_loss(logits: Tensor, targets: Tensor, confident: Tensor, multi_label: bool) -> Tensor:
    """``(1/N) Σ_i confident_i · H(targets_i, p(·|logits_i))``: CE (single-label) or mean BCE (multi-label)."""
    if logits.shape != targets.shape or confident.shape != logits.shape[:1]:
        raise ValueError(
            f"consistency_loss: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and confident "
            f"{tuple(confident.shape)} do not match"
        )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if multi_label:
        per_row = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").mean(dim=1)
    else:
        per_row = F.cross_entropy(logits, targets.argmax(dim=1), reduction="none")
    return (per_row * confident.to(per_row.dtype)).mean()
