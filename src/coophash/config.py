"""Training configuration: one flat dataclass, read from YAML, overridden by flags, saved resolved.

Every method reads the fields it needs; method-specific hyperparameters live in ``method_args`` (a dict)
so that the common fields stay the same for every method and a config file stays readable.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["TrainConfig", "load_config"]


@dataclass
class TrainConfig:
    """Everything a training run needs; the resolved copy is written to the run folder."""

    method: str = "supervised"  # which method (registry in coophash.methods)
    loss: str = "dpsh"  # supervised hashing loss (registry in coophash.losses)
    loss_args: dict = field(default_factory=dict)
    method_args: dict = field(default_factory=dict)
    backbone: str = "smallconv"
    backbone_args: dict = field(default_factory=dict)
    pretrained: Optional[str] = None
    bits: int = 32
    dataset: str = "mnist5k"
    dataset_args: dict = field(default_factory=dict)
    image_size: Optional[int] = None
    channels: Optional[int] = None
    protocol: str = "standard"
    protocol_args: dict = field(default_factory=dict)
    manifest: Optional[str] = None  # an existing manifest file instead of making one
    label_fraction: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    unlabeled_batch_size: int = 0  # > 0 only for methods that use unlabeled images
    lr: float = 1e-3
    weight_decay: float = 1e-5
    augment: str = "shift"  # none | shift | shift+flip
    seed: int = 0
    split_seed: Optional[int] = None  # seed of the protocol's splits and labeled subset (None: ``seed``)
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU); false keeps float32 everywhere
    eval_every: int = 1  # epochs between validation evaluations (model selection)
    checkpoint_every: int = 50  # optimiser steps between 'last' checkpoints (a killed run resumes there)
    eval_batch_size: int = 128
    threads: Optional[int] = None  # torch.set_num_threads for the run (None: leave as is)
    out: str = "runs"

    @classmethod
    def fields(cls) -> list[str]:
        """Names of all configuration fields."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a dict, rejecting unknown keys with a clear message."""
        known = set(cls.fields())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Check value ranges; raise ValueError naming the field."""
        if self.bits <= 0:
            raise ValueError(f"{source}: bits must be a positive integer, got {self.bits}")
        if not 0.0 < float(self.label_fraction) <= 1.0:
            raise ValueError(f"{source}: label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.epochs < 0:
            raise ValueError(f"{source}: epochs must be >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"{source}: batch_size must be positive, got {self.batch_size}")
        if self.unlabeled_batch_size < 0:
            raise ValueError(f"{source}: unlabeled_batch_size must be >= 0")
        if self.augment not in ("none", "shift", "shift+flip"):
            raise ValueError(f"{source}: augment must be none, shift or shift+flip, got {self.augment!r}")
        if not isinstance(self.amp, bool):
            raise ValueError(f"{source}: amp must be true or false, got {self.amp!r}")
        for name in ("loss_args", "method_args", "backbone_args", "dataset_args", "protocol_args"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{source}: {name} must be a mapping")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-safe)."""
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A copy with some fields replaced (None values are ignored)."""
        data = self.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(data, "overrides")


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file; unknown keys and bad values raise ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of config fields at the top level")
    return TrainConfig.from_dict(data, str(p))
