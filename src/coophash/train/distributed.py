"""Data-parallel training under ``torchrun``: the process group, gradient averaging, rank-0 decisions and writes.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m coophash train ...`` starts one process
per device with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment.  :func:`setup` turns them into
a process group (gloo on the CPU, NCCL on CUDA, chosen from the run's device; each process on
``cuda:LOCAL_RANK``) and a :class:`DistContext`.  With one process there is no process group and every helper
here is a no-op that returns its input, so a one-process run takes exactly the code path it always took.

How the trainer uses it (the same arithmetic as ``DistributedDataParallel``, applied phase by phase, so that
methods with several networks and optimisers need no wrapping):

* every rank builds the same networks from the same seed and takes rank 0's parameters and buffers
  (:func:`broadcast_state`) at the start, and rank 0's buffers (batch-norm statistics) after every step;
* each phase ends in one all-reduce (:func:`average_gradients`) that averages its parameters' gradients over
  ranks and sums status flags, so that every rank steps, skips or stops (a diverged loss) together;
* randomness inside a step (augmentation, Langevin chains, latents, fake draws) comes from per-rank seeds
  derived from (run seed, rank, step) (:func:`rank_seed`), so a resumed run redraws exactly what it would have;
* rank 0 alone writes the run folder and checkpoints (atomically) and evaluates; its decisions and results
  reach the other ranks by broadcast (:func:`on_main`, :func:`broadcast_object`).

The run folder must be on a file system every rank sees (``--resume`` reads the last checkpoint on each rank).
Losses see the global batch through :func:`coophash.losses.distributed.global_batch_loss`.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "DEFAULT_TIMEOUT",
    "launched_world",
    "setup",
    "session",
    "broadcast_object",
    "on_main",
    "barrier",
    "broadcast_state",
    "broadcast_buffers",
    "average_gradients",
    "mean_over_ranks",
    "rank_seed",
    "NullLogger",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a rank waits in a collective (rank 0 evaluates while the others wait for its decision).
DEFAULT_TIMEOUT = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes, its device and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """Whether there are several processes (collectives needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes and evaluates."""
        return self.rank == 0


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment ``torchrun`` sets ((0, 1, 0) without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, int(os.environ.get("LOCAL_RANK", str(rank)))


def _device_for(device: str | torch.device, local_rank: int, world: int) -> torch.device:
    """The run's device for this process: ``cuda:LOCAL_RANK`` for a CUDA run of several processes."""
    dev = torch.device(device)
    if dev.type != "cuda" or world == 1:
        return dev
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise ValueError(f"distributed run on {device}: local rank {local_rank} needs GPU {local_rank}, "
                         f"but this machine has {n}; start at most {n} processes per node")
    return torch.device("cuda", local_rank)


def setup(device: str | torch.device, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DistContext:
    """The context of this process: joins (once) the process group ``torchrun`` describes in the environment.

    An already initialised default group is used as is (tests start their own).  Without ``torchrun``
    (``WORLD_SIZE`` unset or 1) nothing is initialised and the context is a one-process one on ``device``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        return DistContext(rank, world, local, _device_for(device, local, world), dist.get_backend())
    rank, world, local = launched_world()
    if world == 1:
        return DistContext(device=torch.device(device))
    dev = _device_for(device, local, world)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    log.info("rank %d of %d on %s (%s)", rank, world, dev, backend)
    return DistContext(rank, world, local, dev, backend)


@contextlib.contextmanager
def session(device: str | torch.device) -> Iterator[DistContext]:
    """:func:`setup` for a block; a process group this block created is destroyed when it ends."""
    created = launched_world()[1] > 1 and not (dist.is_available() and dist.is_initialized())
    ctx = setup(device)
    try:
        yield ctx
        if created and dist.is_initialized():
            dist.barrier()  # every rank done with every collective before any tears its group down
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result (or its failure) given to every rank."""
    if not ctx.enabled:
        return fn()
    payload: Any = None
    error: Optional[BaseException] = None
    if ctx.is_main:
        try:
            payload = ("ok", fn())
        except Exception as exc:  # every rank must learn that rank 0 failed, or the others wait forever
            error, payload = exc, ("error", f"{type(exc).__name__}: {exc}")
    payload = broadcast_object(payload, ctx)
    if error is not None:
        raise error
    if payload[0] == "error":
        raise RuntimeError(f"rank 0 failed: {payload[1]}")
    return payload[1]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if ctx.enabled:
        dist.barrier()


def _broadcast_tensors(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (one broadcast per dtype)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_state(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Give every rank rank 0's parameters and buffers (DDP does this when it wraps a module)."""
    if ctx.enabled:
        tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
        _broadcast_tensors(_unique(tensors), ctx)


def broadcast_buffers(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics), as DDP's ``broadcast_buffers``."""
    if ctx.enabled:
        _broadcast_tensors(_unique([b for m in modules for b in m.buffers()]), ctx)


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` without repeats (a module reachable twice), in first-seen order."""
    seen: set[int] = set()
    return [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]  # type: ignore[func-returns-value]


def average_gradients(params: list[torch.Tensor], ctx: DistContext, flags: list[float]) -> list[float]:
    """Average the gradients of ``params`` over ranks in one all-reduce; return ``flags`` summed over ranks.

    A parameter without a gradient on every rank keeps none (the optimiser skips it, as with one process);
    one with a gradient on some ranks gets the sum of those divided by the world size (DDP's average).
    """
    if not ctx.enabled:
        return list(flags)
    params = _unique(list(params))
    has = [p.grad is not None for p in params]
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    head = torch.tensor(list(flags) + [float(h) for h in has], dtype=dtype, device=ctx.device)
    grads = [p.grad.reshape(-1).to(dtype) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype,
             device=ctx.device) for p in params]
    flat = torch.cat([head, *grads])
    dist.all_reduce(flat)
    k, offset = len(flags), len(flags) + len(params)
    for p, n_has in zip(params, flat[k : k + len(params)].tolist()):
        if n_has > 0:
            g = (flat[offset : offset + p.numel()] / ctx.world_size).view_as(p).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        offset += p.numel()
    return flat[:k].tolist()


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Each logged value averaged over the ranks that have it (keys in rank 0's order, then new ones)."""
    if not ctx.enabled:
        return values
    gathered: list[dict[str, float]] = [{} for _ in range(ctx.world_size)]
    dist.all_gather_object(gathered, dict(values))
    keys = list(dict.fromkeys(k for d in gathered for k in d))
    out: dict[str, float] = {}
    for k in keys:
        vals = [d[k] for d in gathered if k in d and d[k] is not None]
        out[k] = float(np.mean(vals)) if vals else values.get(k)  # type: ignore[assignment]
    return out


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed for the random draws of one rank at one step (distinct per rank, reproducible)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(rank), int(step), 0xD15]).generate_state(1)[0])


class NullLogger:
    """The metrics logger of ranks other than 0: records go nowhere (rank 0 writes ``metrics.jsonl``)."""

    def log(self, **record: Any) -> dict:
        """Return ``record`` unwritten."""
        return record

    def close(self) -> None:
        """Nothing to close."""
