"""Semi-supervised hashing without a generator or an energy: pseudo-label consistency over any base loss.

The yardstick for CoopHash when labels are scarce (issue 11): the simplest use of the same unlabeled images.
One phase per step, on one forward pass of ``[labeled; weak unlabeled; strong unlabeled]`` (FixMatch's
interleaving, so batch norm sees all three):

    L = L_base([x_lab; x_strong], [y_lab; ŷ], rows: labeled ∪ confident)      (``semi_pseudo_hash``)
      + λ_c · CE(category(x_lab), y_lab) + λ_u · (1/U) Σ_u 1[conf_u ≥ τ] · CE(category(x_strong_u), ŷ_u)

where ŷ and conf are the category head's detached prediction on the weak view (the trainer's random shift)
and the strong view is :func:`coophash.data.augment.strong_augment` (affine + cutout) of the same image.
Formulas: :mod:`coophash.losses.semi`.  Without ``semi_pseudo_hash`` the base loss sees the labeled rows only
and the unlabeled images reach the codes through the shared trunk alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from coophash.config import TrainConfig
from coophash.data.augment import strong_augment
from coophash.losses import create_loss
from coophash.losses.base import LossOutput
from coophash.losses.classification import class_loss
from coophash.losses.distributed import global_batch_loss
from coophash.losses.semi import consistency_loss, pseudo_labels
from coophash.methods.base import DataInfo, Method, build_hashing_net, register_method
from coophash.methods.phases import Phase
from coophash.nets.ema import WeightEMA

__all__ = ["SemiSupervised", "SemiArgs"]


def _h(text: str) -> dict[str, str]:
    """Field metadata holding the CLI help text."""
    return {"help": text}


@dataclass
class SemiArgs:
    """Hyperparameters of pseudo-label consistency (FixMatch's defaults: τ = 0.95, λ_u = 1)."""

    semi_threshold: float = field(default=0.95, metadata=_h("confidence tau above which a weak view's prediction becomes a pseudo-label"))
    semi_weight: float = field(default=1.0, metadata=_h("lambda_u, weight of the consistency cross-entropy on strong views"))
    semi_cls_weight: float = field(default=1.0, metadata=_h("lambda_c, weight of the class loss on labeled images"))
    semi_pseudo_hash: bool = field(default=True, metadata=_h("confident strong views join the base hashing loss with their pseudo-labels"))
    semi_ema: float = field(default=0.0, metadata=_h("decay of an EMA of the weights that encodes (and is validated); 0: the trained weights"))

    def __post_init__(self) -> None:
        if not 0.0 <= self.semi_threshold <= 1.0:
            raise ValueError(f"semi_threshold must be in [0, 1], got {self.semi_threshold}")
        if not 0.0 <= self.semi_ema < 1.0:
            raise ValueError(f"semi_ema must be in [0, 1), got {self.semi_ema}")
        for name in ("semi_weight", "semi_cls_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@register_method("semi")
class SemiSupervised(Method):
    """Any base hashing loss (``cfg.loss``) + class loss + pseudo-label consistency on unlabeled images."""

    uses_unlabeled = True
    Args = SemiArgs
    # the validated recipe (docs/coophash.md, "Scarce labels": the EMA's validation mAP is higher at 2% and 10%)
    config_defaults: ClassVar[dict[str, Any]] = {"unlabeled_batch_size": 64, "method_args": {"semi_ema": 0.999}}

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        self.net = build_hashing_net(cfg, info, info.n_classes).to(device)
        self.loss = create_loss(
            cfg.loss, cfg.bits, info.n_classes, seed=cfg.seed, multi_label=info.multi_label, **cfg.loss_args
        ).to(device)
        params = list(self.net.parameters()) + list(self.loss.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = WeightEMA(self.net) if self.args.semi_ema > 0 else None

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "loss": self.loss, **({"ema": self.ema} if self.ema is not None else {})}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def phases(self) -> list[Phase]:
        return [Phase("semi", self._step, modules=[self.net, self.loss], optimizer=self.opt)]

    def on_step(self, global_step: int) -> None:
        self.loss.on_step()
        if self.ema is not None:
            self.ema.update(self.net, self.args.semi_ema)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder()(x).u

    def encoder(self) -> nn.Module:
        return self.ema.net if self.ema is not None else self.net

    def _step(self, ctx: dict[str, Any]) -> LossOutput:
        a: SemiArgs = self.args
        multi = self.info.multi_label
        x_lab, y_lab = ctx["x"], ctx["y"]
        n_lab = x_lab.shape[0]
        x_weak = ctx["x_all"][n_lab:]
        n_unl = x_weak.shape[0]
        x_strong = strong_augment(x_weak)
        out = self.net(torch.cat([x_lab, x_weak, x_strong]))
        logits_weak = out.logits[n_lab:n_lab + n_unl]
        targets, confident = pseudo_labels(logits_weak.detach(), a.semi_threshold, multi)
        rows = torch.arange(n_lab, device=out.u.device)  # the base loss: labeled rows (+ confident strong views)
        y_rows, mask = y_lab, ctx["labeled"]
        if a.semi_pseudo_hash:
            strong_rows = torch.arange(n_lab + n_unl, n_lab + 2 * n_unl, device=out.u.device)
            rows = torch.cat([rows, strong_rows])
            y_rows = torch.cat([y_lab, targets.to(y_lab.dtype)])
            mask = torch.cat([mask, confident])
        base = global_batch_loss(self.loss, out.select(rows), y_rows, mask)
        terms = dict(base.terms)
        terms["cls"] = a.semi_cls_weight * class_loss(out.logits[:n_lab], y_lab, multi, ctx["labeled"])
        terms["consistency"] = a.semi_weight * consistency_loss(out.logits[n_lab + n_unl:], targets, confident, multi)
        total = base.total + terms["cls"] + terms["consistency"]
        terms["diag_mask_rate"] = confident.float().mean() if n_unl else torch.zeros(())
        if n_unl:  # how often the kept pseudo-labels are right (logged only, never used)
            truth = ctx["y_all"][n_lab:].to(targets.dtype)
            right = (targets == truth).all(dim=1) & confident
            terms["diag_pseudo_acc"] = right.float().sum() / confident.float().sum().clamp_min(1.0)
        return LossOutput(total=total, terms=terms)
