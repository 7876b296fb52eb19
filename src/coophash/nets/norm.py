"""Batch-norm helpers: run a network's batch-norm layers on their running statistics for a while."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["batch_norm_layers", "running_statistics"]


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
