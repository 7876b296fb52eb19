"""Method interface: what the shared trainer needs from a hashing method.

A method owns its networks, optimisers and losses, says which of them are saved in checkpoints, gives the
trainer its phase list and encodes images with the network used at test time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from coophash.config import TrainConfig
from coophash.methods.phases import Phase

__all__ = ["Method", "DataInfo", "METHODS", "register_method", "create_method", "list_methods"]


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about the data to build its networks."""

    n_classes: int
    channels: int
    image_size: int
    n_train: int
    multi_label: bool = False


class Method:
    """Base class: subclasses build networks in ``__init__`` and return their phases."""

    name: str = "base"
    uses_unlabeled: bool = False  # whether phases read the unlabeled part of the batch
    # A dataclass of the method's own hyperparameters (read from ``cfg.method_args``); the CLI turns each
    # field into a ``--field-name`` option of ``coophash train``, documented by ``field(metadata={"help": ..})``.
    Args: Optional[type] = None

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        self.cfg = cfg
        self.info = info
        self.device = device
        self.args = parse_method_args(type(self), cfg.method_args)

    # -- what the trainer calls -------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state (parameters and buffers) goes into a checkpoint, by name."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (their state goes into checkpoints)."""
        raise NotImplementedError

    def schedulers(self) -> dict[str, Any]:
        """Learning-rate schedulers by name (default: none)."""
        return {}

    def phases(self) -> list[Phase]:
        """The phase list of one training step."""
        raise NotImplementedError

    def on_step(self, global_step: int) -> None:
        """Called after every training step (schedules such as HashNet's beta)."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called at the end of every epoch; may return extra diagnostics to log."""
        return {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous hash outputs u in (-1, 1) for a batch; the code is 1[u >= 0]."""
        raise NotImplementedError

    def ood_score(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-image out-of-distribution score (higher = more unusual), or None if the method has none."""
        return None

    def encoder(self) -> nn.Module:
        """The test-time network (trunk + hash head)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        """Put every module in training (or eval) mode."""
        for m in self.modules().values():
            m.train(mode)


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to the registry."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def create_method(cfg: TrainConfig, info: DataInfo, device: torch.device) -> Method:
    """Instantiate the method named by ``cfg.method``."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; available: {sorted(METHODS)}")
    return METHODS[cfg.method](cfg, info, device)


def list_methods() -> list[str]:
    """Registered method names."""
    return sorted(METHODS)


def parse_method_args(cls: type[Method], values: dict[str, Any]) -> Any:
    """Build ``cls.Args`` from ``values``; unknown names raise ValueError listing the known ones."""
    if cls.Args is None:
        if values:
            raise ValueError(f"method {cls.name!r} takes no method_args, got {sorted(values)}")
        return None
    known = {f.name for f in dataclasses.fields(cls.Args)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"method {cls.name!r}: unknown method_args {unknown}; known: {sorted(known)}")
    return cls.Args(**values)


def optional(x: Optional[Any], default: Any) -> Any:
    """``x`` unless it is None."""
    return default if x is None else x
