"""Registry of the supervised hashing losses: ``LOSSES``, ``create_loss`` and ``list_losses``.

Each loss file registers its class with ``@LOSSES.register("name")``; ``coophash.losses`` imports every
loss file, so the registry is full once the package is imported. Names are case-insensitive.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coophash.utils.registry import Registry

if TYPE_CHECKING:
    from .base import HashLoss

__all__ = ["LOSSES", "create_loss", "list_losses"]

LOSSES: Registry[type[HashLoss]] = Registry("loss", case_sensitive=False)


def list_losses() -> list[str]:
    """Names of the registered losses, sorted."""
    return LOSSES.names()


def create_loss(name: str, nbits: int, n_classes: int, **kw: Any) -> HashLoss:
    """Build the loss registered as ``name`` (case-insensitive) with its hyperparameters ``kw``."""
    return LOSSES.get(name)(nbits, n_classes, **kw)
