"""Deterministic semi-supervised batch schedule.

An epoch is ``ceil(len(train) / batch_size)`` steps whatever the label fraction, so every method and every
label fraction gets the same number of optimiser steps per epoch.  Each step draws ``batch_size`` labeled
items (cycling through a fresh permutation of the labeled set as often as needed) and, for methods that use
unlabeled images, ``unlabeled_batch_size`` items from the unlabeled rest of train (or from all of train
when every item is labeled).  The order is a pure function of (seed, epoch), which is what lets a killed
run resume mid-epoch and reach the same result as an uninterrupted one.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["StepSchedule"]


def _cycle(rng: np.random.Generator, pool: np.ndarray, n_steps: int, per_step: int) -> np.ndarray:
    """``n_steps`` rows of ``per_step`` ids drawn by cycling through fresh permutations of ``pool``."""
    if per_step == 0 or len(pool) == 0:
        return np.zeros((n_steps, 0), dtype=np.int64)
    need = n_steps * per_step
    reps = math.ceil(need / len(pool))
    seq = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:need]
    return seq.reshape(n_steps, per_step).astype(np.int64)


class StepSchedule:
    """Per-epoch lists of (labeled ids, unlabeled ids) for each step, reproducible from the seed."""

    def __init__(
        self,
        train: np.ndarray,
        labeled: np.ndarray,
        batch_size: int,
        unlabeled_batch_size: int = 0,
        seed: int = 0,
    ) -> None:
        self.train = np.asarray(train, dtype=np.int64)
        self.labeled = np.asarray(labeled, dtype=np.int64)
        if len(self.labeled) == 0:
            raise ValueError("the protocol has no labeled training items")
        unl = np.setdiff1d(self.train, self.labeled)
        self.unlabeled = unl if len(unl) else self.train
        self.batch_size = int(batch_size)
        self.unlabeled_batch_size = int(unlabeled_batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = max(1, math.ceil(len(self.train) / self.batch_size))

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(labeled ids (steps, batch), unlabeled ids (steps, unlabeled_batch)) of one epoch."""
        rng = np.random.default_rng([self.seed, int(epoch), 0xC0]) 
        lab = _cycle(rng, self.labeled, self.steps_per_epoch, min(self.batch_size, max(1, len(self.labeled))))
        unl = _cycle(rng, self.unlabeled, self.steps_per_epoch, self.unlabeled_batch_size)
        return lab, unl
