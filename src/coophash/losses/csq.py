"""CSQ: Central Similarity Quantization (Yuan et al., CVPR 2020), BCE to seeded hash centres."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import HashLoss, HashOutput, bernoulli_codes, hadamard, is_power_of_two
from .registry import LOSSES


def make_hash_centres(
    n_classes: int, nbits: int, generator: torch.Generator, *, method: str = "auto", min_distance: float | None = None
) -> Tensor:
    """(C, K) ±1 hash centres: rows of [H_K; −H_K] when possible, else seeded Bernoulli(0.5) codes.

    ``method="auto"`` takes the first C rows of [H_K; −H_K] when K is a power of two and C ≤ 2K (the paper's
    rule; deterministic, the seed is not used), otherwise Bernoulli codes redrawn (up to 100 times) until all
    are ``min_distance`` bits apart (default K/4). ``"hadamard"`` / ``"bernoulli"`` force one construction.
    """
    if method not in ("auto", "hadamard", "bernoulli"):
        raise ValueError(f"centres must be 'auto', 'hadamard' or 'bernoulli', got {method!r}")
    fits = is_power_of_two(nbits) and n_classes <= 2 * nbits
    if method == "hadamard" and not fits:
        raise ValueError(
            f"Hadamard centres need nbits a power of two and n_classes <= 2*nbits, got nbits={nbits}, "
            f"n_classes={n_classes}"
        )
    if method != "bernoulli" and fits:
        h = hadamard(nbits)
        return torch.cat([h, -h], dim=0)[:n_classes].contiguous()
    dmin = nbits / 4 if min_distance is None else float(min_distance)
    return bernoulli_codes(n_classes, nbits, generator, min_distance=dmin)


@LOSSES.register("csq")
class CSQLoss(HashLoss):
    """mean over items and bits of BCE((u + 1)/2, (c + 1)/2) + λ mean((|u| − 1)²), c the item's hash centre.

    Single-label: c is the centre of the item's class. Multi-label: c = sign(Σ of the centres of its labels),
    with zero sums (ties) broken by a fixed seeded random ±1 vector (buffer ``tie_break``), as the authors do;
    an item with no positive label gets ``tie_break`` as its centre. Centres are the buffer ``centres``.
    Defaults (paper): ``lambda_q=1e-4``, ``centres="auto"``, ``min_distance=None`` (→ K/4, Bernoulli only).
    """

    defaults: ClassVar[dict[str, Any]] = {"lambda_q": 1e-4, "centres": "auto", "min_distance": None}
    term_names: ClassVar[tuple[str, ...]] = ("centre", "quant")

    def __init__(self, nbits: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(nbits, n_classes, **kwargs)
        gen = self.generator()
        centres = make_hash_centres(
            self.n_classes, self.nbits, gen, method=self.hparams["centres"], min_distance=self.hparams["min_distance"]
        )
        tie_break = torch.randint(0, 2, (self.nbits,), generator=gen).float() * 2 - 1
        self.register_buffer("centres", centres)
        self.register_buffer("tie_break", tie_break)

    def targets(self, labels: Tensor) -> Tensor:
        """The ±1 hash centre of each row of multi-hot ``labels`` (N, C) → (N, K)."""
        total = labels @ self.centres.to(labels.dtype)
        ties = self.tie_break.to(labels.dtype).expand_as(total)
        return torch.where(total > 0, 1.0, torch.where(total < 0, -1.0, ties)).to(labels.dtype)

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """Central similarity (BCE to the centre) and the λ-weighted |u| → 1 quantisation."""
        u = out.u
        c = self.targets(labels.to(u.dtype))
        centre = F.binary_cross_entropy((u + 1) / 2, (c + 1) / 2)
        quant = self.hparams["lambda_q"] * (u.abs() - 1).pow(2).mean()
        return {"centre": centre, "quant": quant}
