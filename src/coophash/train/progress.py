"""What a training loop reports after every step, for progress bars and logs (the CLI draws them)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Progress", "ProgressFn"]


@dataclass(frozen=True)
class Progress:
    """One finished optimiser step of one stage: where it is in the run and the logged values."""

    stage: str
    epoch: int  # 0-based epoch of this step
    epochs: int
    step: int  # 1-based step within the epoch (just finished)
    steps_per_epoch: int
    values: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Steps finished in the whole run."""
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def total(self) -> int:
        """Steps of the whole run."""
        return self.epochs * self.steps_per_epoch


ProgressFn = Callable[[Progress], None]
