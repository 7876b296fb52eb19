"""Method interface: what the shared trainer needs from a hashing method.

A method owns its networks, optimisers and losses, says which of them are saved in checkpoints, gives the
trainer its phase list and encodes images with the network used at test time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from coophash.config import TrainConfig
from coophash.methods.phases import Phase
from coophash.nets import create_hashing_net
from coophash.utils.registry import Registry, UnknownName

__all__ = [
    "Method", "DataInfo", "METHODS", "register_method", "create_method", "list_methods", "apply_method_defaults",
]


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
    # TrainConfig fields this method is best run with (its validated recipe), applied by the CLI and the API
    # to every field the user did not set (e.g. a batch of unlabeled images for a semi-supervised method).
    config_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def resolve_config(cls, data: dict[str, Any], given: set[str], user_args: dict[str, Any]) -> dict[str, Any]:
        """``data`` made consistent and explicit after the recipe was filled in: recipe values that contradict
        what the user chose dropped, fields the method's arguments determine recorded, so that the run's
        ``config.yaml`` says what the method really builds (``given``: the fields the user set; ``user_args``: the
        method arguments the user set; a contradiction between the user's own choices is a ValueError).  Called
        by :func:`apply_method_defaults`; the default changes nothing."""
        return data

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


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to the registry (and naming it)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.add(name, cls)

    return deco


def create_method(cfg: TrainConfig, info: DataInfo, device: torch.device) -> Method:
    """Instantiate the method named by ``cfg.method``."""
    try:
        cls = METHODS.get(cfg.method)
    except UnknownName as exc:
        raise ValueError(str(exc)) from None
    return cls(cfg, info, device)


def list_methods() -> list[str]:
    """Registered method names."""
    return METHODS.names()


def apply_method_defaults(data: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """``data`` (a config dict) with the ``config_defaults`` of its method filled into fields not in ``given``.

    ``method_args`` of the defaults (a method's recipe) are merged under the user's: each argument the user set
    wins, the recipe fills the others, so ``config.yaml`` records every value the run used.  An unknown method
    name leaves ``data`` as it is (the config check reports it).
    """
    try:
        cls = METHODS.get(str(data.get("method", "supervised")))
    except UnknownName:
        return data
    out = {**data, **{k: v for k, v in cls.config_defaults.items() if k not in given and k != "method_args"}}
    user_args = dict(data.get("method_args") or {})
    recipe = cls.config_defaults.get("method_args")
    if recipe:
        out["method_args"] = {**recipe, **user_args}
    return cls.resolve_config(out, given, user_args)


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


def build_hashing_net(cfg: TrainConfig, info: DataInfo, n_classes: Optional[int]) -> nn.Module:
    """The config's backbone + hash head (+ a category head when ``n_classes``), on the method's device."""
    return create_hashing_net(
        backbone=cfg.backbone,
        nbits=cfg.bits,
        n_classes=n_classes,
        in_channels=info.channels,
        image_size=info.image_size,
        pretrained=cfg.pretrained,
        **cfg.backbone_args,
    )


def optional(x: Optional[Any], default: Any) -> Any:
    """``x`` unless it is None."""
    return default if x is None else x
