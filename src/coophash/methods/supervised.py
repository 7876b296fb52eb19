"""Supervised deep hashing baselines: one hashing network trained with any registered hashing loss."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coophash.config import TrainConfig
from coophash.losses import create_loss
from coophash.losses.distributed import global_batch_loss
from coophash.methods.base import DataInfo, Method, build_hashing_net, register_method
from coophash.methods.phases import Phase

__all__ = ["SupervisedHashing"]


@register_method("supervised")
class SupervisedHashing(Method):
    """DSH, DPSH, HashNet, CSQ, GreedyHash or OrthoHash (``cfg.loss``) on the labeled images."""

    uses_unlabeled = False

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        self.net = build_hashing_net(cfg, info, self._category_classes()).to(device)
        self.loss = create_loss(
            cfg.loss, cfg.bits, info.n_classes, seed=cfg.seed, multi_label=info.multi_label, **cfg.loss_args
        ).to(device)
        params = list(self.net.parameters()) + list(self.loss.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _category_classes(self) -> int | None:
        """Classes of the network's category head (None: no head); subclasses that need one override it."""
        return None

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "loss": self.loss}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def phases(self) -> list[Phase]:
        return [Phase("hash", self._hash_step, modules=[self.net, self.loss], optimizer=self.opt)]

    def _hash_step(self, ctx: dict[str, Any]) -> Any:
        out = self.net(ctx["x"])
        return global_batch_loss(self.loss, out, ctx["y"], ctx["labeled"])  # the batch of every rank together

    def on_step(self, global_step: int) -> None:
        self.loss.on_step()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).u

    def encoder(self) -> nn.Module:
        return self.net
