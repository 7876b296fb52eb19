"""Identical reruns on the CPU: deterministic kernels and a fixed thread count recorded in the run's config.

Two processes running one training config on one machine used to differ from the second step on: the
backward pass of advanced indexing (``u[i] * u[j]`` over the pairs of a batch, as in DPSH, and every
``index_put_(accumulate=True)``) adds into its output with atomic additions from several OpenMP threads,
in whatever order the threads arrive.  ``torch.use_deterministic_algorithms(True)`` switches such ops
to their deterministic kernels (a sorted accumulation); the other CPU kernels are deterministic for a
given thread count, but their sums are split by thread, so the count changes the last bits.  Hence
:func:`make_reproducible` fixes the count (``cfg.threads``, else torch's current count) and returns the
config with it filled in, so the run folder records it and a rerun or resume uses it again.

The count has to be set for numba too: numba's OpenMP threading layer shares torch's OpenMP runtime, and
its first parallel Hamming search (the first validation) used to reset torch to numba's count (all
cores), so ``threads: 1`` held only until the first evaluation; that is why ``OMP_NUM_THREADS=1`` alone
did not make reruns identical either.

On CUDA nothing is switched: several CUDA kernels have no deterministic form (docs/reliability.md).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from coophash.index import _kernels

if TYPE_CHECKING:  # annotations only
    from coophash.config import TrainConfig

__all__ = ["check_device", "make_reproducible"]


def check_device(name: str) -> torch.device:
    """``name`` as a torch device that this machine has; ValueError with a one-line reason otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a torch device (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "finds no CUDA device"
            raise ValueError(f"device {name!r}: cuda is not available on this machine (torch {torch.__version__} "
                             f"{build}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:N with N < {count})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r}: mps is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: coophash trains on cpu, cuda or mps, not {device.type}")
    return device


def make_reproducible(cfg: "TrainConfig") -> "TrainConfig":
    """Set torch's thread count and, on the CPU, deterministic kernels for a run of ``cfg``.

    Returns ``cfg`` with ``threads`` filled in (torch's current count when unset), the value to record in
    the run folder.  Process-wide, like ``torch.set_num_threads``: later work in the process keeps both.
    ``threads`` is an execution field, outside the suite's cache keys, so cached results stay valid.
    """
    device = check_device(cfg.device)
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or int(cfg.threads) < 1):
        raise ValueError(f"threads must be a positive integer, got {cfg.threads!r}")
    threads = int(cfg.threads) if cfg.threads is not None else torch.get_num_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    # numba's parallel launches set the shared OpenMP thread count to numba's own count: keep them equal
    _kernels.set_numba_threads(min(threads, _kernels.max_numba_threads()))
    if device.type == "cpu":
        # warn_only: an op without a deterministic CPU kernel warns (UserWarning) instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
    return cfg if cfg.threads == threads else dataclasses.replace(cfg, threads=threads)
