"""Deterministic semi-supervised batch schedule.

An epoch is ``ceil(len(train) / batch_size)`` steps whatever the label fraction, so every method and every
label fraction gets the same number of optimiser steps per epoch.  Each step draws ``batch_size`` labeled
items (cycling through a fresh permutation of the labeled set as often as needed) and, for methods that use
unlabeled images, ``unlabeled_batch_size`` items from the unlabeled rest of train (or from all of train
when every item is labeled).  The order is a pure function of (seed, epoch), which is what lets a killed
run resume mid-epoch and reach the same result as an uninterrupted one.

Distributed (``world_size`` > 1): every rank draws the same global schedule and keeps its own contiguous block
of each step's items (sizes differ by at most one when the batch does not divide evenly), so the global batch
and the number of optimiser steps per epoch are those of one process with ``batch_size``, and the ranks'
blocks, concatenated in rank order, are exactly that process's batch.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["StepSchedule", "rank_block"]


def _cycle(rng: np.random.Generator, pool: np.ndarray, n_steps: int, per_step: int) -> np.ndarray:
    """``n_steps`` rows of ``per_step`` ids drawn by cycling through fresh permutations of ``pool``."""
    if per_step == 0 or len(pool) == 0:
        return np.zeros((n_steps, 0), dtype=np.int64)
    need = n_steps * per_step
    reps = math.ceil(need / len(pool))
    seq = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:need]
    return seq.reshape(n_steps, per_step).astype(np.int64)


def rank_block(ids: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank's contiguous block of the columns of ``ids`` (steps, batch); the first ``batch % world`` get one more."""
    if world_size == 1:
        return ids
    n = ids.shape[1]
    sizes = [n // world_size + (1 if r < n % world_size else 0) for r in range(world_size)]
    start = sum(sizes[:rank])
    return ids[:, start : start + sizes[rank]]


class StepSchedule:
    """Per-epoch lists of (labeled ids, unlabeled ids) for each step, reproducible from the seed."""

    def __init__(
        self,
        train: np.ndarray,
        labeled: np.ndarray,
        batch_size: int,
        unlabeled_batch_size: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"StepSchedule: rank must be in [0, {world_size}), got {rank}")
        self.rank = int(rank)
        self.world_size = int(world_size)
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
        """(labeled ids (steps, batch), unlabeled ids (steps, unlabeled_batch)) of one epoch, this rank's block."""
        rng = np.random.default_rng([self.seed, int(epoch), 0xC0]) 
        lab = _cycle(rng, self.labeled, self.steps_per_epoch, min(self.batch_size, max(1, len(self.labeled))))
        unl = _cycle(rng, self.unlabeled, self.steps_per_epoch, self.unlabeled_batch_size)
        return rank_block(lab, self.rank, self.world_size), rank_block(unl, self.rank, self.world_size)
