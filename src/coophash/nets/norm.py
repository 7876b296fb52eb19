"""Batch-norm helpers: run a network's batch-norm layers on their running statistics, or on batch statistics
without touching the running ones, for a while."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["batch_norm_layers", "frozen_norm_statistics", "running_statistics"]


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
