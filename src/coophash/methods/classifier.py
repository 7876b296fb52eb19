"""A plain classifier: a backbone and a category head trained by the class loss on labeled real images.

It serves as an independent judge of generated samples (:func:`coophash.methods.coophash_sample.judge_accuracy`;
trained as an ordinary run by :func:`coophash.pipeline.judge.train_judge`).  It has no hash function of
its own: ``encode`` gives the codes of the network's hash head, which the class loss never trains, so they
are a fixed random projection of the learnt features (sign random projections, as the GAN's diagnostic
code); the trainer uses them only to pick the best epoch by validation mAP.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from coophash.config import TrainConfig
from coophash.losses.base import LossOutput
from coophash.losses.classification import class_loss
from coophash.methods.base import DataInfo, Method, build_hashing_net, register_method
from coophash.methods.phases import Phase

__all__ = ["Classifier"]


@register_method("classifier")
class Classifier(Method):
    """``cfg.backbone`` + category head, Adam on the class loss (softmax CE, or sigmoid BCE for multi-label data)."""

    uses_unlabeled = False

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        self.net = build_hashing_net(cfg, info, info.n_classes).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def phases(self) -> list[Phase]:
        return [Phase("cls", self._cls_step, modules=[self.net], optimizer=self.opt)]

    def _cls_step(self, ctx: dict[str, Any]) -> LossOutput:
        out = self.net(ctx["x"])
        assert out.logits is not None
        loss = class_loss(out.logits, ctx["y"], self.info.multi_label, ctx["labeled"])
        return LossOutput(loss, {"class": loss})

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (N, n_classes) of images in [-1, 1]."""
        logits = self.net(x).logits
        assert logits is not None
        return logits

    def predict(self, x: Tensor) -> Tensor:
        """The most probable class of each image (N,)."""
        return self.logits(x).argmax(dim=1)

    def encode(self, x: Tensor) -> Tensor:
        """Diagnostic codes: the untrained hash head on the learnt features (a fixed random projection)."""
        return self.net(x).u

    def encoder(self) -> nn.Module:
        return self.net
