"""Shared plumbing for the supervised hashing losses.

A concrete loss writes only its formula in :meth:`HashLoss.compute` and returns named, already weighted
terms. :class:`HashLoss` owns the rest: shape and label checks, the selection of labeled rows, the
optional label-free regularisers (quantisation, bit balance) and the :class:`LossOutput` it returns.

Conventions (DESIGN.md §1): labels are multi-hot float ``(N, C)`` (single-label data is one-hot); two
items are *similar* when they share at least one label; the signed code of ``u`` is ``2·1[u ≥ 0] − 1``
(never ``sign``, which maps 0 to 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from coophash.nets.output import HashOutput  # the one output record, shared with the networks

__all__ = [
    "HashOutput",
    "LossOutput",
    "HashLoss",
    "pairwise_similarity",
    "signed_code",
    "straight_through_sign",
    "triplet_loss",
    "quantisation_error",
    "sum_terms",
    "DIAG_PREFIX",
    "hadamard",
    "is_power_of_two",
    "bernoulli_codes",
    "connected_zero",
    "upper_pairs",
]


@dataclass
class LossOutput:
    """A loss value to backpropagate (``total``) and its named, weighted terms (summing to ``total``)."""

    total: Tensor
    terms: dict[str, Tensor]

    def as_floats(self) -> dict[str, float]:
        """``{"total": ..., **terms}`` as detached Python floats, for logging."""
        values = {"total": float(self.total.detach())}
        values.update({name: float(t.detach()) for name, t in self.terms.items()})
        return values


# ----------------------------------------------------------------------------------------------------
# Small reusable functions
# ----------------------------------------------------------------------------------------------------


def pairwise_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """``S[i, j] = 1`` (float) when item i of ``labels_a`` and item j of ``labels_b`` share at least one label."""
    if labels_a.dim() != 2 or labels_b.dim() != 2 or labels_a.shape[1] != labels_b.shape[1]:
        raise ValueError(
            f"pairwise_similarity: labels must be (N, C) and (M, C), got {tuple(labels_a.shape)} "
            f"and {tuple(labels_b.shape)}"
        )
    a = (labels_a > 0).to(torch.float32)
    b = (labels_b > 0).to(torch.float32)
    dtype = labels_a.dtype if labels_a.is_floating_point() else torch.float32
    return ((a @ b.T) > 0).to(dtype)


def signed_code(u: Tensor) -> Tensor:
    """``2·1[u ≥ 0] − 1`` (0 maps to +1), detached; the ±1 code of a continuous output."""
    return torch.where(u.detach() >= 0, 1.0, -1.0).to(u.dtype)


def straight_through_sign(x: Tensor) -> Tensor:
    """``2·1[x ≥ 0] − 1`` in the forward pass, identity gradient in the backward pass (GreedyHash)."""
    return x + (signed_code(x) - x).detach()


def connected_zero(*tensors: Optional[Tensor]) -> Tensor:
    """A scalar 0 whose graph reaches every given tensor, so ``backward()`` works on an empty loss."""
    zero: Optional[Tensor] = None
    for t in tensors:
        if t is None:
            continue
        part = t.sum() * 0.0
        zero = part if zero is None else zero + part
    if zero is None:
        raise ValueError("connected_zero needs at least one tensor")
    return zero


def upper_pairs(n: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Row and column indices of the pairs ``i < j`` among ``n`` items."""
    idx = torch.triu_indices(n, n, offset=1, device=device)
    return idx[0], idx[1]


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float,
    *,
    distance: str = "hamming",
    gate: Optional[Tensor] = None,
) -> Tensor:
    """Mean hinge ``max(0, d(a, p) − d(a, n) + margin)`` over rows of (N, K) hash outputs.

    ``distance="hamming"`` (default) is the relaxed Hamming distance ``(K − aᵀb) / 2``, equal to the Hamming
    distance for ±1 codes, so ``margin`` is in bits; ``"sqeuclidean"`` is ``‖a − b‖²`` (4× Hamming on ±1 codes).
    ``gate`` (N,) of 0/1 keeps only the rows gated in: ``Σ gate_i·hinge_i / max(1, Σ gate_i)`` (CoopHash's
    confidence gate); with every row gated in (or no gate) it is the plain mean.
    """
    if anchor.shape != positive.shape or anchor.shape != negative.shape or anchor.dim() != 2:
        raise ValueError(
            "triplet_loss: anchor, positive and negative must be (N, K) of one shape, got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    if gate is not None and gate.shape != anchor.shape[:1]:
        raise ValueError(f"triplet_loss: gate must be ({anchor.shape[0]},), got {tuple(gate.shape)}")
    if distance == "hamming":
        k = anchor.shape[1]
        d_pos = 0.5 * (k - (anchor * positive).sum(dim=1))
        d_neg = 0.5 * (k - (anchor * negative).sum(dim=1))
    elif distance == "sqeuclidean":
        d_pos = (anchor - positive).pow(2).sum(dim=1)
        d_neg = (anchor - negative).pow(2).sum(dim=1)
    else:
        raise ValueError(f"triplet_loss: distance must be 'hamming' or 'sqeuclidean', got {distance!r}")
    if anchor.shape[0] == 0:
        return connected_zero(anchor, positive, negative)
    hinge = torch.relu(d_pos - d_neg + margin)
    if gate is None or bool((gate > 0).all()):
        return hinge.mean()
    return (hinge * gate).sum() / gate.sum().clamp_min(1.0)


def quantisation_error(u: Tensor) -> Tensor:
    """``mean ‖u − b‖² / K`` over rows, ``b = 2·1[u ≥ 0] − 1`` the detached ±1 code (mean over all entries)."""
    return (u - signed_code(u)).pow(2).mean()


#: Prefix of logged terms that are diagnostics, never part of a total.
DIAG_PREFIX = "diag_"


def sum_terms(terms: dict[str, Tensor]) -> Tensor:
    """The total of named terms: their sum in insertion order, skipping ``diag_`` diagnostics."""
    return torch.stack([t for k, t in terms.items() if not k.startswith(DIAG_PREFIX)]).sum()


def hadamard(k: int) -> Tensor:
    """The Sylvester Hadamard matrix ``H_k`` (±1, float32); ``k`` must be a power of two."""
    if not is_power_of_two(k):
        raise ValueError(f"hadamard: size must be a power of two, got {k}")
    h = torch.ones(1, 1)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def bernoulli_codes(
    n: int, k: int, generator: torch.Generator, *, min_distance: Optional[float] = None, max_tries: int = 100
) -> Tensor:
    """``n`` random ±1 codes of ``k`` bits (Bernoulli(0.5), seeded by ``generator``), float32 (n, k).

    With ``min_distance`` the draw is repeated (up to ``max_tries`` times) until every two codes are at least
    that many bits apart; when no draw reaches it, the draw with the largest minimum distance is kept.
    """
    best: Optional[Tensor] = None
    best_min = -1.0
    for _ in range(max(1, max_tries if min_distance is not None else 1)):
        codes = torch.randint(0, 2, (n, k), generator=generator).float() * 2 - 1
        if min_distance is None or n < 2:
            return codes
        dist = 0.5 * (k - codes @ codes.T)
        dist.fill_diagonal_(float("inf"))
        current = float(dist.min())
        if current > best_min:
            best, best_min = codes, current
        if current >= min_distance:
            break
    assert best is not None
    return best


# ----------------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------------


class HashLoss(nn.Module):
    """Base of every supervised hashing loss: checks, labeled-row selection, regularisers, named terms.

    Subclasses set ``defaults`` (their hyperparameters and default values), ``term_names`` (the names of the
    terms :meth:`compute` returns) and write :meth:`compute`. Hyperparameters are passed as keyword arguments
    and end up in ``self.hparams``; an unknown name is an error.
    """

    defaults: ClassVar[dict[str, Any]] = {}
    term_names: ClassVar[tuple[str, ...]] = ()
    #: True when the loss looks only at pairs of items (needs at least two labeled rows to be non-zero).
    needs_pairs: ClassVar[bool] = False
    #: Names of the base's regulariser terms (present in ``terms`` only when their weight is > 0).
    REG_TERMS: ClassVar[tuple[str, str]] = ("quant_reg", "balance_reg")

    def __init__(
        self,
        nbits: int,
        n_classes: int,
        *,
        quant_weight: float = 0.0,
        balance_weight: float = 0.0,
        seed: int = 0,
        multi_label: bool = False,
        **hparams: Any,
    ) -> None:
        super().__init__()
        if int(nbits) <= 0:
            raise ValueError(f"{type(self).__name__}: nbits must be a positive integer, got {nbits!r}")
        if int(n_classes) <= 0:
            raise ValueError(f"{type(self).__name__}: n_classes must be a positive integer, got {n_classes!r}")
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise TypeError(
                f"{type(self).__name__}: unknown hyperparameter(s) {unknown}; allowed: {allowed} "
                "(plus quant_weight, balance_weight, seed, multi_label)"
            )
        clash = set(self.term_names) & set(self.REG_TERMS)
        if clash:
            raise TypeError(f"{type(self).__name__}: term names {sorted(clash)} are reserved for the base")
        self.nbits = int(nbits)
        self.n_classes = int(n_classes)
        self.quant_weight = float(quant_weight)
        self.balance_weight = float(balance_weight)
        self.seed = int(seed)
        self.multi_label = bool(multi_label)
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}

    # -- hooks ----------------------------------------------------------------------------------------

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """The loss's own named, weighted terms on labeled rows only (``labels`` float multi-hot)."""
        raise NotImplementedError

    def on_step(self) -> None:
        """Called by the trainer after each optimiser step; stateless losses do nothing."""

    def generator(self) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded with ``self.seed`` (for hash centres, class codes, init)."""
        return torch.Generator().manual_seed(self.seed)

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this loss with :func:`coophash.losses.create_loss`."""
        return {
            "nbits": self.nbits,
            "n_classes": self.n_classes,
            "quant_weight": self.quant_weight,
            "balance_weight": self.balance_weight,
            "seed": self.seed,
            "multi_label": self.multi_label,
            **self.hparams,
        }

    def extra_repr(self) -> str:
        """Constructor arguments, shown by ``repr``."""
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    # -- plumbing --------------------------------------------------------------------------------------

    def _check(self, out: Any, labels: Tensor, labeled: Optional[Tensor]) -> tuple[HashOutput, Tensor, Tensor]:
        """Validate shapes and return (out as HashOutput, float labels, bool labeled mask)."""
        name = type(self).__name__
        for field in ("pre", "u"):
            if not isinstance(getattr(out, field, None), Tensor):
                raise TypeError(f"{name}: out.{field} must be a Tensor of shape (N, {self.nbits})")
        pre, u = out.pre, out.u
        if u.dim() != 2 or u.shape[1] != self.nbits:
            raise ValueError(f"{name}: out.u must be (N, {self.nbits}) (nbits={self.nbits}), got {tuple(u.shape)}")
        if pre.shape != u.shape:
            raise ValueError(f"{name}: out.pre must have the shape of out.u {tuple(u.shape)}, got {tuple(pre.shape)}")
        n = u.shape[0]
        logits = getattr(out, "logits", None)
        if logits is not None and (logits.dim() != 2 or logits.shape[0] != n):
            raise ValueError(f"{name}: out.logits must be (N={n}, C), got {tuple(logits.shape)}")
        features = getattr(out, "features", None)
        if features is not None and (features.dim() < 1 or features.shape[0] != n):
            raise ValueError(f"{name}: out.features must have N={n} rows, got {tuple(features.shape)}")
        if not isinstance(labels, Tensor):
            raise TypeError(f"{name}: labels must be a Tensor of shape (N, {self.n_classes})")
        if labels.dim() != 2 or labels.shape != (n, self.n_classes):
            raise ValueError(
                f"{name}: labels must be multi-hot (N={n}, C={self.n_classes}), got {tuple(labels.shape)}"
                + (" (class indices? convert with one_hot)" if labels.dim() == 1 else "")
            )
        if labeled is None:
            mask = torch.ones(n, dtype=torch.bool, device=u.device)
        else:
            if not isinstance(labeled, Tensor) or labeled.dtype != torch.bool or labeled.shape != (n,):
                got = tuple(labeled.shape) if isinstance(labeled, Tensor) else type(labeled).__name__
                dtype = labeled.dtype if isinstance(labeled, Tensor) else None
                raise ValueError(f"{name}: labeled must be a bool tensor of shape (N={n},), got {got} {dtype}")
            mask = labeled.to(u.device)
        labels = labels.to(device=u.device, dtype=u.dtype if u.is_floating_point() else torch.float32)
        hout = out if isinstance(out, HashOutput) else HashOutput(features, pre, u, logits)
        return hout, labels, mask

    def _check_labels(self, labels: Tensor) -> None:
        """Labeled rows must be 0/1; single-label mode also needs exactly one positive per row."""
        name = type(self).__name__
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"{name}: labels of labeled rows must be 0/1 multi-hot")
        if not self.multi_label:
            per_row = labels.sum(dim=1)
            if not bool((per_row == 1).all()):
                bad = int((per_row != 1).nonzero()[0, 0])
                raise ValueError(
                    f"{name}: multi_label=False needs exactly one positive label per labeled row; row {bad} of "
                    f"the labeled rows has {int(per_row[bad])} (pass multi_label=True for multi-label data)"
                )

    def forward(self, out: Any, labels: Tensor, labeled: Optional[Tensor] = None) -> LossOutput:
        """Loss on the labeled rows plus the label-free regularisers on all rows."""
        hout, labels, mask = self._check(out, labels, labeled)
        terms: dict[str, Tensor] = {}
        n_lab = int(mask.sum())
        if n_lab == 0 or (self.needs_pairs and n_lab < 2):
            zero = connected_zero(hout.u, hout.pre)
            terms.update({t: zero for t in self.term_names})
        else:
            sub = hout if n_lab == mask.numel() else hout.select(mask)
            sub_labels = labels if n_lab == mask.numel() else labels[mask]
            self._check_labels(sub_labels)
            computed = self.compute(sub, sub_labels)
            missing = set(self.term_names) - set(computed)
            if missing:
                raise RuntimeError(f"{type(self).__name__}.compute did not return terms {sorted(missing)}")
            terms.update(computed)
        u = hout.u
        if self.quant_weight > 0:
            if u.shape[0] == 0:
                terms["quant_reg"] = connected_zero(u)
            else:
                terms["quant_reg"] = self.quant_weight * quantisation_error(u)
        if self.balance_weight > 0:
            if u.shape[0] == 0:
                terms["balance_reg"] = connected_zero(u)
            else:
                terms["balance_reg"] = self.balance_weight * u.mean(dim=0).pow(2).mean()
        total = torch.stack([t.reshape(()) for t in terms.values()]).sum() if terms else connected_zero(u, hout.pre)
        return LossOutput(total=total, terms=terms)


def is_power_of_two(k: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return k >= 1 and not (k & (k - 1))
