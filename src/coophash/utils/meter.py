"""Running means of named scalars (logged loss terms, diagnostics), serialisable for mid-epoch resume."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["RunningMeans"]


class RunningMeans:
    """Sums and a count of named scalars; ``means()`` averages over the ``add`` calls so far."""

    def __init__(self, sums: Optional[Mapping[str, float]] = None, count: int = 0) -> None:
        self.sums: dict[str, float] = dict(sums or {})
        self.count = int(count)

    def add(self, values: Mapping[str, Any]) -> None:
        """Add one record (tensors are read with ``float``); a name missing from a record counts as 0."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def means(self, prefix: str = "") -> dict[str, float]:
        """Mean of each name (``prefix`` prepended to the names)."""
        return {f"{prefix}{k}": v / max(1, self.count) for k, v in self.sums.items()}

    def reset(self) -> dict[str, float]:
        """The means so far, then start again from empty."""
        out = self.means()
        self.sums, self.count = {}, 0
        return out
