"""Training configuration: one flat dataclass, read from YAML, overridden by flags, saved resolved.

Every method reads the fields it needs; method-specific hyperparameters live in ``method_args`` (a dict)
so that the common fields stay the same for every method and a config file stays readable.

Parsing is strict: unknown fields, values of the wrong type (``bits: abc``) or out of range, an empty
file, a file that is not UTF-8 text, each raise a ValueError naming the file and the field.  The copy a
run folder keeps (:func:`seal_yaml`) starts with a line holding the SHA-256 of the rest
(``# coophash-config sha256=...``), checked whenever the file is read; ``load_config(..., complete=True)``
(resuming a run) also requires every field, so that a file cut short never falls back to defaults.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["ADDED_DEFAULTS", "TrainConfig", "load_config", "read_yaml_mapping", "seal_yaml"]

_SEAL_PREFIX = "# coophash-config sha256="
_SEAL_LINE = re.compile(r"\A# coophash-config sha256=([0-9a-f]{64})\n")


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
    train_map_every: int = 1  # epochs between training-sample mAP evaluations (over-fitting curves; 0: off)
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
        """Build from a dict, rejecting unknown keys and values of the wrong type with a clear message."""
        known = set(cls.fields())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        cfg = cls(**{k: _typed(k, v, source) for k, v in data.items()})
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Check types and value ranges; raise ValueError naming the field."""
        for name in self.fields():
            _typed(name, getattr(self, name), source)
        for name, low in (("bits", 1), ("epochs", 0), ("batch_size", 1), ("unlabeled_batch_size", 0), ("seed", 0),
                          ("split_seed", 0), ("eval_every", 0), ("train_map_every", 0), ("checkpoint_every", 0),
                          ("eval_batch_size", 1), ("threads", 1), ("image_size", 1), ("channels", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{source}: {name} must be {'positive' if low == 1 else '>= 0'}, got {value}")
        if not 0.0 < float(self.label_fraction) <= 1.0:
            raise ValueError(f"{source}: label_fraction must be in (0, 1], got {self.label_fraction}")
        for name in ("lr", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{source}: {name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.augment not in ("none", "shift", "shift+flip"):
            raise ValueError(f"{source}: augment must be none, shift or shift+flip, got {self.augment!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-safe); fields of :data:`ADDED_DEFAULTS` at their default are left out."""
        d = dataclasses.asdict(self)
        for name, default in ADDED_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A copy with some fields replaced (None values are ignored)."""
        data = self.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(data, "overrides")


# Field -> (kind, may be None).  Kinds: int (not bool), float (int accepted and kept as it is, so that
# configs and the keys made from them do not change; a numeric string such as YAML 1.1's "1e-3" is
# converted), str, bool, dict.
_KINDS: dict[str, tuple[str, bool]] = {
    "method": ("str", False), "loss": ("str", False), "loss_args": ("dict", False), "method_args": ("dict", False),
    "backbone": ("str", False), "backbone_args": ("dict", False), "pretrained": ("str", True), "bits": ("int", False),
    "dataset": ("str", False), "dataset_args": ("dict", False), "image_size": ("int", True),
    "channels": ("int", True), "protocol": ("str", False), "protocol_args": ("dict", False),
    "manifest": ("str", True), "label_fraction": ("float", False), "epochs": ("int", False),
    "batch_size": ("int", False), "unlabeled_batch_size": ("int", False), "lr": ("float", False),
    "weight_decay": ("float", False), "augment": ("str", False), "seed": ("int", False), "split_seed": ("int", True),
    "device": ("str", False), "amp": ("bool", False), "eval_every": ("int", False),
    "train_map_every": ("int", False),
    "checkpoint_every": ("int", False), "eval_batch_size": ("int", False), "threads": ("int", True),
    "out": ("str", False),
}
_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "dict": "a mapping"}
# Fields every run config written by coophash holds (a run config missing one was cut short or damaged):
# all but those added later (amp), so that run folders of earlier versions still resume.  Keys are
# written sorted, so a cut loses at least the last one (weight_decay).
_RUN_FIELDS = frozenset(_KINDS) - {"amp", "train_map_every"}
# Fields added after configs were hashed into cache keys (benchmark results, GAN stage folders) and written to
# run folders: ``to_dict`` leaves them out while at their default, so every key, every ``config.yaml`` and
# every comparison of configs stays as it was before the field existed.
ADDED_DEFAULTS: dict[str, Any] = {"train_map_every": 1}


def _typed(name: str, value: Any, source: str) -> Any:
    """``value`` checked against the kind of field ``name`` (ValueError naming the field when it does not fit)."""
    kind, nullable = _KINDS.get(name, ("any", True))
    if kind == "any" or (value is None and nullable):
        return value
    if kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str), "bool": isinstance(value, bool), "dict": isinstance(value, dict)}[kind]
    if not ok:
        expected = _NAMES[kind] + (" or null" if nullable else "")
        raise ValueError(f"{source}: {name} must be {expected}, got {value!r:.60}")
    return value


def seal_yaml(body: str) -> str:
    """``body`` (YAML text) behind a first line holding its SHA-256 (checked by :func:`read_yaml_mapping`)."""
    return f"{_SEAL_PREFIX}{hashlib.sha256(body.encode('utf-8')).hexdigest()}\n{body}"


def _unsealed(text: str, path: Path) -> str:
    """The YAML text of a file, its checksum line (when it has one) checked and removed."""
    m = _SEAL_LINE.match(text)
    if m is None:
        first = text.partition("\n")[0]
        if "coophash-config" in first or "sha256=" in first:
            raise ValueError(f"{path}: line 1 (the checksum line) is damaged")
        return text
    body = text[m.end():]
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != m.group(1):
        raise ValueError(f"{path}: checksum mismatch: the file was damaged or edited after it was written "
                         "(if you edited it on purpose, delete its first line, the checksum)")
    return body


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file (checksum line checked); ValueError naming the file when it is empty,
    not UTF-8 text, not YAML or not a mapping; FileNotFoundError when it does not exist."""
    return _read_yaml(Path(path), what)[0]


def _read_yaml(p: Path, what: str) -> tuple[dict[str, Any], str]:
    """(mapping, YAML text without its checksum line) of a file; see :func:`read_yaml_mapping`."""
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: {what} file does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: is a folder, not a {what} file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not a {what} file (not UTF-8 text at byte {exc.start}; damaged?)") from None
    body = _unsealed(text, p)
    if not body.strip():
        raise ValueError(f"{p}: the {what} file is empty")
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of {what} fields at the top level, got {type(data).__name__}")
    return data, body


def load_config(path: str | Path, complete: bool = False) -> TrainConfig:
    """Read a YAML config file; unknown keys and bad values raise ValueError naming the file.

    ``complete=True`` (the config of a run folder, e.g. when resuming) also requires every field that
    coophash writes, so that a file cut short is refused instead of falling back to defaults.
    """
    p = Path(path)
    data, body = _read_yaml(p, "config")
    if complete:
        if not body.endswith("\n"):
            raise ValueError(f"{p}: incomplete run config (cut short?): its last line has no end")
        missing = sorted(_RUN_FIELDS - set(data))
        if missing:
            raise ValueError(f"{p}: incomplete run config (cut short or damaged?): missing field(s) "
                             f"{', '.join(missing)}")
    return TrainConfig.from_dict(data, str(p))
