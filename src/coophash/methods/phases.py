"""The phase list: every method's training step is a list of phases run the same way.

A phase names the networks it trains, the optimiser that steps them and a function that computes its
loss from the step context (a dict holding the batch and whatever earlier phases of the same step put
there, e.g. revised samples).  A phase without an optimiser only fills the context (Langevin revision).
Only the phase's own networks have ``requires_grad`` switched on while it runs, so gradients never leak
into the parameters of another network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from coophash.losses.base import LossOutput

__all__ = ["Phase", "LossOutput", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """A loss or energy became NaN/inf or exploded; the last good checkpoint is left intact."""


@dataclass
class Phase:
    """One part of a training step: (name, networks, optimiser, loss function, interval)."""

    name: str
    fn: Callable[[dict[str, Any]], Optional[Any]]
    modules: Sequence[nn.Module] = ()
    optimizer: Optional[torch.optim.Optimizer] = None
    interval: int = 1
    clip_grad: Optional[float] = None

    def params(self) -> list[nn.Parameter]:
        """Parameters this phase trains."""
        out: list[nn.Parameter] = []
        for m in self.modules:
            out.extend(p for p in m.parameters())
        return out
