"""DSH: Deep Supervised Hashing (Liu et al., CVPR 2016), a contrastive loss with a |u| → 1 regulariser."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import HashLoss, HashOutput, pairwise_similarity, upper_pairs
from .registry import LOSSES


@LOSSES.register("dsh")
class DSHLoss(HashLoss):
    """Over pairs i < j: ½ s‖u_i − u_j‖² + ½ (1 − s) max(m − ‖u_i − u_j‖², 0) + α (‖|u_i| − 1‖₁ + ‖|u_j| − 1‖₁).

    Uses ``u = tanh(pre)`` (as modern reimplementations do; the paper's output is unbounded), so the squared
    distance lies in [0, 4K] and the paper's margin m = 2K sits in its middle. Both terms are means over pairs.
    Defaults (paper): ``margin=None`` → 2K, ``alpha=0.01``.
    """

    defaults: ClassVar[dict[str, Any]] = {"margin": None, "alpha": 0.01}
    term_names: ClassVar[tuple[str, ...]] = ("contrastive", "binary")
    needs_pairs: ClassVar[bool] = True

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """Contrastive term and the α-weighted binary-like regulariser, both averaged over pairs."""
        margin = self.hparams["margin"]
        m = 2.0 * self.nbits if margin is None else float(margin)
        u = out.u
        i, j = upper_pairs(u.shape[0], u.device)
        s = pairwise_similarity(labels, labels)[i, j]
        dist = (u[i] - u[j]).pow(2).sum(dim=1)
        contrastive = (0.5 * s * dist + 0.5 * (1 - s) * torch.relu(m - dist)).mean()
        reg = (u.abs() - 1).abs().sum(dim=1)
        binary = self.hparams["alpha"] * (reg[i] + reg[j]).mean()
        return {"contrastive": contrastive, "binary": binary}
