"""The output record of a hashing network (shared with the losses)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["HashOutput"]


@dataclass
class HashOutput:
    """What a hashing network returns: trunk features, hash pre-activation, its tanh, class logits.

    Shapes: ``features`` (N, F) (always set by the nets; ``None`` allowed for outputs built elsewhere);
    ``pre`` (N, K), the hash head's pre-activation; ``u = tanh(pre)`` (N, K) in (-1, 1);
    ``logits`` (N, C) or ``None`` when the net has no category head.
    The binary code is ``b = 1[u >= 0]`` (never ``sign``, which maps 0 to 0).
    """

    features: Tensor | None
    pre: Tensor
    u: Tensor
    logits: Tensor | None = None

    def select(self, index: Tensor) -> HashOutput:
        """The rows ``index`` (bool mask or integer index) of every field."""
        return HashOutput(
            features=None if self.features is None else self.features[index],
            pre=self.pre[index],
            u=self.u[index],
            logits=None if self.logits is None else self.logits[index],
        )
