"""Global-batch losses for data-parallel training: rows all-gathered across processes, local rows keep their gradient.

Under ``torchrun`` each process holds a part of every batch.  A pairwise loss (DPSH, DSH, HashNet, ...) must
see the pairs *between* the parts too, so :func:`global_batch_loss` all-gathers the hash outputs, labels and
labeled mask of every process and evaluates the loss on the concatenation, as one process would on the whole
batch (the idea of pytorch-metric-learning's ``DistributedLossWrapper``); :func:`global_triplet_loss` does the
same for CoopHash's (gated) triplet.  The rows of other processes come back detached; the local rows are the
local tensors themselves, so the gradient reaches the local network.

Scaling: every process computes the same global loss ``L`` and backpropagates ``∂L/∂(its rows)``; the trainer
then *averages* gradients over the ``W`` processes (as DDP does).  The local rows' gradient is therefore
multiplied by ``W`` on its way back (:func:`scale_grad`), so that the average of the per-process gradients is
``Σ_r ∂L/∂(rows of r) = ∂L/∂θ``, the gradient of one process on the global batch.  A loss's own parameters
(GreedyHash's classifier) see the whole batch on every process, get the unscaled ``∂L/∂θ_loss`` everywhere, and
average to it too.  The loss *value* (and its logged terms) is unscaled: it equals the single-process value.

With one process (no process group) nothing is gathered and the loss is called as is: same numbers, bit for
bit.  This module is the lowest layer that knows about process groups; the trainer's side (process group,
gradient averaging, rank-0 writes) is :mod:`coophash.train.distributed`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .base import HashOutput, LossOutput, triplet_loss

__all__ = [
    "world_size",
    "rank",
    "rank_share",
    "scale_grad",
    "all_gather_rows",
    "global_batch_loss",
    "global_triplet_loss",
]


def world_size() -> int:
    """Number of processes of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_share(n: int, world: Optional[int] = None, this_rank: Optional[int] = None) -> int:
    """This rank's part of ``n`` items split as evenly as possible (the first ``n % world`` ranks get one more)."""
    w = world_size() if world is None else int(world)
    r = rank() if this_rank is None else int(this_rank)
    return n // w + (1 if r < n % w else 0)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` on the way back."""
    return _ScaleGrad.apply(x, float(scale))


def all_gather_rows(tensors: Sequence[Tensor], grad_scale: float = 1.0) -> list[Tensor]:
    """Concatenate each tensor's rows over all ranks (rank order); the local rows keep their gradient.

    All tensors share their row count on a rank (row counts may differ between ranks).  Everything travels
    in one float32 buffer (two all-gathers: row counts, then rows) and comes back in each tensor's dtype.
    Rows of other ranks are detached; the local rows are the given tensors, their gradient scaled by
    ``grad_scale``.
    """
    w, r = world_size(), rank()
    if w == 1:
        return list(tensors)
    n = tensors[0].shape[0]
    dev = tensors[0].device
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"all_gather_rows: tensors must share their row count, got {[t.shape[0] for t in tensors]}")
    flat = [t.detach().reshape(n, -1).to(torch.float32) for t in tensors]
    widths = [f.shape[1] for f in flat]
    counts = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(w)]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=dev))
    sizes = [int(c) for c in counts]
    m = max(sizes)
    buf = torch.zeros(m, sum(widths), dtype=torch.float32, device=dev)
    if n:
        buf[:n] = torch.cat(flat, dim=1)
    parts = [torch.empty_like(buf) for _ in range(w)]
    dist.all_gather(parts, buf)
    rows = torch.cat([parts[i][: sizes[i]] for i in range(w)])
    start = sum(sizes[:r])
    out, col = [], 0
    for t, width in zip(tensors, widths):
        g = rows[:, col : col + width].reshape(rows.shape[0], *t.shape[1:]).to(t.dtype)
        col += width
        local = scale_grad(t, grad_scale) if t.requires_grad else t
        out.append(torch.cat([g[:start], local, g[start + n :]]))
    return out


def global_batch_loss(loss: Any, out: Any, labels: Tensor, labeled: Optional[Tensor] = None) -> LossOutput:
    """``loss(out, labels, labeled)`` on the batch of every rank together (just the call with one process).

    ``out`` is a :class:`HashOutput` (or has its fields); its present fields, the labels and the labeled mask
    are gathered with :func:`all_gather_rows`, local gradients scaled by the world size (see the module doc).
    Every rank must call it at the same point of its step.
    """
    w = world_size()
    if w == 1:
        return loss(out, labels, labeled)
    n = out.u.shape[0]
    mask = torch.ones(n, dtype=torch.bool, device=out.u.device) if labeled is None else labeled.to(out.u.device)
    names = [f for f in ("features", "pre", "u", "logits") if getattr(out, f, None) is not None]
    parts = [getattr(out, f) for f in names] + [labels.to(out.u.device), mask.to(torch.float32)]
    gathered = all_gather_rows(parts, grad_scale=w)
    fields = dict(zip(names, gathered))
    g_out = HashOutput(fields.get("features"), fields["pre"], fields["u"], fields.get("logits"))
    return loss(g_out, gathered[-2], gathered[-1] > 0.5)


def global_triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float, *,
                        distance: str = "hamming", gate: Optional[Tensor] = None) -> Tensor:
    """:func:`~coophash.losses.base.triplet_loss` over the triplets of every rank together (one process: the call).

    The rows (and the gate) are gathered as in :func:`global_batch_loss`, so the mean — and the gated mean
    ``Σ gate·hinge / Σ gate`` — runs over the global batch, and the gradients average to one process's.
    """
    w = world_size()
    if w == 1:
        return triplet_loss(anchor, positive, negative, margin, distance=distance, gate=gate)
    parts = [anchor, positive, negative] + ([gate] if gate is not None else [])
    gathered = all_gather_rows(parts, grad_scale=w)
    g_gate = gathered[3] if gate is not None else None
    return triplet_loss(gathered[0], gathered[1], gathered[2], margin, distance=distance, gate=g_gate)
