"""Batch-norm helpers: run a network's batch-norm layers on their running statistics, on batch statistics
without touching the running ones, or on the statistics of a reference batch (captured from a pass over it), for a
while."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = ["batch_norm_layers", "capture_batch_statistics", "frozen_norm_statistics", "own_batch_statistics",
           "reference_statistics", "running_statistics"]


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of ``module`` (1d, 2d, 3d)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def running_statistics(module: nn.Module) -> Iterator[None]:
    """Inside, every batch-norm layer of ``module`` is in eval mode: it normalises by its running statistics
    (a fixed affine map per image, so outputs do not depend on the rest of the batch) and does not update them;
    gradients still flow.  Each layer's mode is restored afterwards."""
    layers = batch_norm_layers(module)
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.eval()
        yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


@contextlib.contextmanager
def frozen_norm_statistics(net: nn.Module) -> Iterator[None]:
    """Forward passes whose batch-norm layers normalise by their batch but leave the running statistics alone.

    Inside the block every normalisation layer of ``net`` that tracks running statistics stops tracking them
    (``track_running_stats = False``): in training mode it still normalises by the statistics of the batch it
    sees and passes gradients through them, but its ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` are neither read nor written (not even touched, so autograd's saved tensors of
    other passes stay valid).  On exit the flags are put back.  Nothing random is drawn and no state is added,
    so a killed run resumes as before.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


@contextlib.contextmanager
def own_batch_statistics(module: nn.Module) -> Iterator[None]:
    """Inside, every batch-norm layer of ``module`` is in training mode, whatever its mode outside: it normalises by
    the statistics of the batch it sees and leaves the running ones alone (:func:`frozen_norm_statistics`).  Each
    layer's mode is restored afterwards."""
    layers = batch_norm_layers(module)
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.train(True)
        with frozen_norm_statistics(module):
            yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


@contextlib.contextmanager
def capture_batch_statistics(module: nn.Module) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Record, for every batch-norm layer of ``module`` in order, the mean and biased variance per channel of the
    input it sees in the passes inside the block (detached; the last pass wins): the statistics a layer in
    training mode normalises that batch by.  Yields the list, filled when the block's passes have run."""
    layers = batch_norm_layers(module)
    stats: list[tuple[Tensor, Tensor]] = [(torch.empty(0), torch.empty(0))] * len(layers)

    def hook(i: int):
        def record(_m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            dims = [0] + list(range(2, x.dim()))
            stats[i] = (x.mean(dims), x.var(dims, unbiased=False))
        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def reference_statistics(module: nn.Module, stats: list[tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Inside, every batch-norm layer of ``module`` normalises by the given per-channel (mean, biased variance)
    (:func:`capture_batch_statistics` of a reference batch) instead of its batch's or its running ones: a fixed
    affine map per image, as in eval mode, so an image's output does not depend on the rest of its batch, and the
    running statistics are neither read nor updated.  Gradients flow to the inputs and the affine weights, not to
    the statistics.  Modes and buffers are restored afterwards (the buffers are swapped, never written)."""
    layers = batch_norm_layers(module)
    if len(stats) != len(layers):
        raise ValueError(f"reference_statistics: {len(stats)} statistics for {len(layers)} batch-norm layers")
    saved = [(m.training, m._buffers.get("running_mean"), m._buffers.get("running_var")) for m in layers]
    try:
        for m, (mean, var) in zip(layers, stats):
            m._buffers["running_mean"], m._buffers["running_var"] = mean, var
            m.eval()
        yield
    finally:
        for m, (mode, mean, var) in zip(layers, saved):
            m._buffers["running_mean"], m._buffers["running_var"] = mean, var
            m.train(mode)
