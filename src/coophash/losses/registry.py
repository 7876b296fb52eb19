"""Registry of the supervised hashing losses: name → class, ``create_loss`` and ``list_losses``."""
from __future__ import annotations

from typing import Any

from .base import HashLoss
from .csq import CSQLoss
from .dpsh import DPSHLoss
from .dsh import DSHLoss
from .greedyhash import GreedyHashLoss
from .hashnet import HashNetLoss
from .orthohash import OrthoHashLoss

__all__ = ["LOSSES", "create_loss", "list_losses"]

LOSSES: dict[str, type[HashLoss]] = {
    "dsh": DSHLoss,
    "dpsh": DPSHLoss,
    "hashnet": HashNetLoss,
    "csq": CSQLoss,
    "greedyhash": GreedyHashLoss,
    "orthohash": OrthoHashLoss,
}


def list_losses() -> list[str]:
    """Names of the registered losses, sorted."""
    return sorted(LOSSES)


def create_loss(name: str, nbits: int, n_classes: int, **kw: Any) -> HashLoss:
    """Build the loss registered as ``name`` (case-insensitive) with its hyperparameters ``kw``."""
    key = str(name).lower()
    if key not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    return LOSSES[key](nbits, n_classes, **kw)
