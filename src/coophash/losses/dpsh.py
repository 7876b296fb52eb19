"""DPSH: Deep Pairwise-Supervised Hashing (Li et al., IJCAI 2016), a pairwise likelihood plus quantisation."""
from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from .base import HashLoss, HashOutput, pairwise_similarity, signed_code, upper_pairs
from .registry import LOSSES


@LOSSES.register("dpsh")
class DPSHLoss(HashLoss):
    """−mean_{i<j} (s_ij θ_ij − log(1 + e^{θ_ij})), θ_ij = ½ u_iᵀu_j, + η mean_i ‖b_i − u_i‖², b = 2·1[u ≥ 0] − 1.

    Uses ``u = tanh(pre)`` (the paper's output is unbounded); ``log(1 + e^θ)`` is the stable softplus.
    The likelihood is a mean over the pairs i < j of the batch, the quantisation a mean over items of a
    sum over bits. Default (paper): ``eta=0.1``.
    """

    defaults: ClassVar[dict[str, Any]] = {"eta": 0.1}
    term_names: ClassVar[tuple[str, ...]] = ("likelihood", "quant")
    needs_pairs: ClassVar[bool] = True

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """Negative log-likelihood of the pairwise similarities and the η-weighted quantisation."""
        u = out.u
        i, j = upper_pairs(u.shape[0], u.device)
        s = pairwise_similarity(labels, labels)[i, j]
        theta = 0.5 * (u[i] * u[j]).sum(dim=1)
        likelihood = (F.softplus(theta) - s * theta).mean()
        quant = self.hparams["eta"] * (signed_code(u) - u).pow(2).sum(dim=1).mean()
        return {"likelihood": likelihood, "quant": quant}
