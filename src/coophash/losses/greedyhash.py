"""GreedyHash (Su et al., NeurIPS 2018): sign in the forward pass, straight-through gradient backward."""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import HashLoss, HashOutput, straight_through_sign
from .classification import class_loss
from .registry import LOSSES


@LOSSES.register("greedyhash")
class GreedyHashLoss(HashLoss):
    """CE(W b + c, y) + α mean(| |h| − 1 |³), b = 2·1[h ≥ 0] − 1 forward with identity gradient, h = out.pre.

    The codes are taken from ``out.pre`` (GreedyHash's hash layer is linear, no tanh). The classifier on the
    codes (``weight`` (C, K), ``bias`` (C,)) is a learnable ``nn.Parameter`` pair owned by the loss, initialised
    seeded like ``nn.Linear`` (uniform ±1/√K); train it with ``loss.parameters()``. Multi-label data uses
    sigmoid BCE (mean over items and classes) instead of softmax CE. Default (authors' code): ``alpha=0.1``.
    """

    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.1}
    term_names: ClassVar[tuple[str, ...]] = ("cls", "penalty")

    def __init__(self, nbits: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(nbits, n_classes, **kwargs)
        gen = self.generator()
        bound = 1.0 / math.sqrt(self.nbits)
        self.weight = nn.Parameter((torch.rand(self.n_classes, self.nbits, generator=gen) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(self.n_classes, generator=gen) * 2 - 1) * bound)

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """Classification of the straight-through codes and the cubic |h| → 1 penalty."""
        h = out.pre
        b = straight_through_sign(h)
        logits = F.linear(b, self.weight.to(b.dtype), self.bias.to(b.dtype))
        cls = class_loss(logits, labels, self.multi_label)
        penalty = self.hparams["alpha"] * (h.abs() - 1).abs().pow(3).mean()
        return {"cls": cls, "penalty": penalty}
