"""OrthoHash (Hoe et al., NeurIPS 2021): margin cosine cross-entropy to fixed orthogonal class codes."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import HashLoss, HashOutput, bernoulli_codes, hadamard, is_power_of_two, signed_code
from .classification import class_loss
from .registry import LOSSES


def make_class_codes(
    n_classes: int, nbits: int, generator: torch.Generator, *, method: str = "auto", min_distance: float | None = None
) -> Tensor:
    """(C, K) ±1 class codes: mutually orthogonal Hadamard rows when possible, else seeded Bernoulli codes.

    ``method="auto"`` takes rows 0..C−1 of H_K when K is a power of two and C ≤ K (deterministic, the seed is
    not used), otherwise Bernoulli(0.5) codes redrawn (up to 100 times) until all are ``min_distance`` bits
    apart (default K/4). ``"hadamard"`` / ``"bernoulli"`` force one construction.
    """
    if method not in ("auto", "hadamard", "bernoulli"):
        raise ValueError(f"codebook must be 'auto', 'hadamard' or 'bernoulli', got {method!r}")
    fits = is_power_of_two(nbits) and n_classes <= nbits
    if method == "hadamard" and not fits:
        raise ValueError(
            f"Hadamard class codes need nbits a power of two and n_classes <= nbits, got nbits={nbits}, "
            f"n_classes={n_classes}"
        )
    if method != "bernoulli" and fits:
        return hadamard(nbits)[:n_classes].contiguous()
    dmin = nbits / 4 if min_distance is None else float(min_distance)
    return bernoulli_codes(n_classes, nbits, generator, min_distance=dmin)


@LOSSES.register("orthohash")
class OrthoHashLoss(HashLoss):
    """CE over logits_j = s (cos(u, c_j) − m·1[j = y]) + q mean(1 − cos(u, b)), b = 2·1[u ≥ 0] − 1.

    Single-label: softmax cross-entropy. Multi-label: sigmoid BCE (mean over items and classes) of the same
    logits with the margin on every positive class. Class codes are the buffer ``codes``. Defaults (authors'
    code): ``s=8``, ``m=0.2``, ``q=0.0`` (the paper relies on the cosine alone; set q > 0 for the extra
    cosine quantisation term), ``codebook="auto"``, ``min_distance=None`` (→ K/4, Bernoulli only).
    """

    defaults: ClassVar[dict[str, Any]] = {"s": 8.0, "m": 0.2, "q": 0.0, "codebook": "auto", "min_distance": None}
    term_names: ClassVar[tuple[str, ...]] = ("cls", "quant")

    def __init__(self, nbits: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(nbits, n_classes, **kwargs)
        codes = make_class_codes(
            self.n_classes,
            self.nbits,
            self.generator(),
            method=self.hparams["codebook"],
            min_distance=self.hparams["min_distance"],
        )
        self.register_buffer("codes", codes)

    def compute(self, out: HashOutput, labels: Tensor) -> dict[str, Tensor]:
        """Margin cosine classification against the class codes and the optional cosine quantisation."""
        u = out.u
        cos = F.normalize(u, dim=1) @ F.normalize(self.codes.to(u.dtype), dim=1).T
        logits = self.hparams["s"] * (cos - self.hparams["m"] * labels)
        cls = class_loss(logits, labels, self.multi_label)
        quant = self.hparams["q"] * (1 - F.cosine_similarity(u, signed_code(u), dim=1)).mean()
        return {"cls": cls, "quant": quant}
