"""Every formula a method optimises, on a shared base.

* supervised hashing losses (DSH, DPSH, HashNet, CSQ, GreedyHash, OrthoHash): each takes
  ``(out: HashOutput, labels (N, C) multi-hot, labeled (N,) bool | None)`` and returns a :class:`LossOutput`
  with ``total`` and named ``terms``; build one by name with :func:`create_loss` (registry ``LOSSES``);
* shared terms: :func:`triplet_loss` (the one triplet hinge, optionally gated), :func:`quantisation_error`,
  :func:`class_loss` (softmax CE or sigmoid BCE), the maximum-entropy terms (:mod:`.entropy`);
* method objectives: CoopHash's descriptor and generator terms (:mod:`.coophash`), the non-saturating
  GAN losses (:mod:`.gan`).
"""
from .base import (
    HashLoss,
    HashOutput,
    LossOutput,
    bernoulli_codes,
    hadamard,
    pairwise_similarity,
    quantisation_error,
    signed_code,
    straight_through_sign,
    sum_terms,
    triplet_loss,
)
from .classification import class_loss
from .csq import CSQLoss, make_hash_centres
from .dpsh import DPSHLoss
from .dsh import DSHLoss
from .entropy import MaxEntropyLoss, bit_entropy_loss, class_entropy_loss
from .gan import discriminator_loss, generator_loss
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
    "quantisation_error",
    "sum_terms",
    "class_loss",
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
    "MaxEntropyLoss",
    "bit_entropy_loss",
    "class_entropy_loss",
    "discriminator_loss",
    "generator_loss",
]
