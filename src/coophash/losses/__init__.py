"""Supervised hashing losses (DSH, DPSH, HashNet, CSQ, GreedyHash, OrthoHash) on a shared base.

Every loss takes ``(out: HashOutput, labels (N, C) multi-hot, labeled (N,) bool | None)`` and returns a
:class:`LossOutput` with ``total`` and named ``terms``; build one by name with :func:`create_loss`.
"""
from .base import (
    HashLoss,
    HashOutput,
    LossOutput,
    bernoulli_codes,
    hadamard,
    pairwise_similarity,
    signed_code,
    straight_through_sign,
    triplet_loss,
)
from .csq import CSQLoss, make_hash_centres
from .dpsh import DPSHLoss
from .dsh import DSHLoss
from .greedyhash import GreedyHashLoss
from .hashnet import HashNetLoss
from .orthohash import OrthoHashLoss, make_class_codes
from .registry import LOSSES, create_loss, list_losses

__all__ = [
    "HashLoss",
    "HashOutput",
    "LossOutput",
    "LOSSES",
    "create_loss",
    "list_losses",
    "pairwise_similarity",
    "triplet_loss",
    "signed_code",
    "straight_through_sign",
    "hadamard",
    "bernoulli_codes",
    "make_hash_centres",
    "make_class_codes",
    "DSHLoss",
    "DPSHLoss",
    "HashNetLoss",
    "CSQLoss",
    "GreedyHashLoss",
    "OrthoHashLoss",
]
from .entropy import MaxEntropyLoss, bit_entropy_loss, class_entropy_loss  # noqa: F401  (label-free, not registered)
