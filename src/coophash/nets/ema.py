"""An exponential moving average of a network's weights, used to encode (a steadier network than the last step).

``θ_ema ← d_t·θ_ema + (1 − d_t)·θ`` after each optimiser step, with the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=t)``: ``d_t = min(d, (1 + t)/(10 + t))``, so early weights are not
carried for thousands of steps of a short run.  Buffers (batch-norm statistics, spectral norm's vectors) are
copied, not averaged.  The copy and its update counter are registered state of this module, so a checkpoint
holds them and a resumed run continues the same average.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightEMA", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used at update number ``updates`` (0-based): ``min(decay, (1 + t)/(10 + t))``."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


class WeightEMA(nn.Module):
    """A frozen copy of ``net`` (``self.net``) that follows its weights by :meth:`update`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module, decay: float) -> None:
        """One step of the average towards ``net``'s current weights; its buffers are copied."""
        d = ema_decay_at(decay, int(self.updates))
        for p, q in zip(self.net.parameters(), net.parameters()):
            p.mul_(d).add_(q.detach(), alpha=1.0 - d)
        for b, c in zip(self.net.buffers(), net.buffers()):
            b.copy_(c)
        self.updates += 1

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """The averaged network's output."""
        return self.net(*args, **kwargs)
