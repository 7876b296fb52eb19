"""HashNet (Cao et al., ICCV 2017): weighted pairwise cross-entropy on tanh(β·z) with β growing (continuation)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import HashLoss, HashOutput, pairwise_similarity, upper_pairs
from .registry import LOSSES


@LOSSES.register("hashnet")
class HashNetLoss(HashLoss):
    """mean_{i<j} w_ij (log(1 + exp(α⟨h_i, h_j⟩)) − α s_ij ⟨h_i, h_j⟩) with h = tanh(β · out.pre).

    The loss makes its own ``h = tanh(β·pre)`` from ``out.pre`` (``out.u`` is not used by the pairwise term).
    Weights balance the pairs: w_ij = |S|/|S₁| for similar pairs, |S|/|S₀| for dissimilar ones (S the pairs
    i < j of the labeled batch), so the term equals mean over S₁ plus mean over S₀. The paper's c_ij is 1.
    β = init_beta · (1 + γ·t)^power, with t the number of optimiser steps taken so far (``on_step``); β is
    recomputed every ``step_size`` steps (the authors' code uses 200; default 1 follows the formula exactly).
    Defaults: ``alpha=None`` → 10/K (the authors' scale), ``gamma=0.005``, ``power=0.5``, ``init_beta=1.0``,
    ``step_size=1``. ``step`` and ``beta`` are buffers, so ``state_dict()`` resumes the schedule; β is computed
    from the integer ``step`` in double precision (the ``beta`` buffer mirrors it for logging).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "alpha": None,
        "gamma": 0.005,
        "power": 0.5,
        "init_beta": 1.0,
        "step_size": 1,
    }
    term_names: ClassVar[tuple[str, ...]] = ("pairwise",)
    needs_pairs: ClassVar[bool] = True

    def __init__(self, nbits: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(nbits, n_classes, **kwargs)
        if int(self.hparams["step_size"]) < 1:
            raise ValueError(f"HashNetLoss: step_size must be >= 1, got {self.hparams['step_size']!r}")
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("beta", torch.tensor(float(self.hparams["init_beta"]), dtype=torch.float32))

    def current_beta(self) -> float:
        """β for the current step count, in double precision: init_beta · (1 + γ·t)^power, t rounded down to step_size."""
        h = self.hparams
        size = int(h["step_size"])
        t = (int(self.step) // size) * size
        return float(h["init_beta"]) * (1.0 + float(h["gamma"]) * t) ** float(h["power"])

    def on_step(self) -> None:
        """Count the optimiser step and update β (recomputed every ``step_size`` steps)."""
        self.step += 1
        self.beta.fill_(self.current_beta())

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """Balanced pairwise cross-entropy on h = tanh(β·pre)."""
        alpha = self.hparams["alpha"]
        a = 10.0 / self.nbits if alpha is None else float(alpha)
        h = torch.tanh(self.current_beta() * out.pre)
        i, j = upper_pairs(h.shape[0], h.device)
        s = pairwise_similarity(labels, labels)[i, j]
        ip = a * (h[i] * h[j]).sum(dim=1)
        per_pair = F.softplus(ip) - s * ip
        n_pairs = s.numel()
        n_sim = s.sum()
        n_dis = n_pairs - n_sim
        w = torch.where(s > 0, n_pairs / n_sim.clamp(min=1), n_pairs / n_dis.clamp(min=1)).detach()
        return {"pairwise": (w * per_pair).mean()}
