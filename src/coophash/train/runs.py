"""Run folders: numbered ``runs/00003-<tag>/`` folders holding the config, metrics and checkpoints.

A run folder contains (names below are module constants):

* ``config.yaml``      -- the resolved training config (:func:`write_config` / :func:`read_config`);
* ``manifest.json``    -- the data split manifest;
* ``metrics.jsonl``    -- one JSON object per line (:class:`MetricsLogger` / :func:`read_metrics`);
* ``last.safetensors`` / ``best.safetensors`` -- checkpoints (:mod:`coophash.train.checkpoint`).

Metrics are strict JSON: NaN and +-inf are written as ``null``.  A run killed while writing leaves at most
a partial last line; readers ignore it and a new :class:`MetricsLogger` removes it before appending.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Mapping, Optional, Union

import numpy as np
import torch
import yaml

from coophash.utils.io import atomic_write_text

if TYPE_CHECKING:  # annotations only
    from coophash.config import TrainConfig

__all__ = [
    "CONFIG",
    "MANIFEST",
    "METRICS",
    "BEST",
    "LAST",
    "create_run_dir",
    "run_tag",
    "new_run_dir",
    "list_runs",
    "find_run",
    "resolve_run",
    "write_config",
    "read_config",
    "MetricsLogger",
    "read_metrics",
    "truncate_metrics",
]

PathLike = Union[str, Path]

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
BEST = "best.safetensors"
LAST = "last.safetensors"

_RUN_NAME = re.compile(r"^(\d+)(?:-|$)")


# --------------------------------------------------------------------------------------------------
# run folders


def _run_number(name: str) -> Optional[int]:
    """The leading number of a run folder name (``'00012-cifar'`` -> 12), or None."""
    m = _RUN_NAME.match(name)
    return int(m.group(1)) if m else None


def list_runs(root: PathLike = "runs") -> list[Path]:
    """Numbered run folders under ``root``, sorted by number (empty if ``root`` does not exist)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and _run_number(p.name) is not None]
    return sorted(runs, key=lambda p: (_run_number(p.name), p.name))


def _clean_tag(tag: str) -> str:
    """Make ``tag`` safe as part of a folder name: runs of other characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", str(tag)).strip("_")


def create_run_dir(root: PathLike = "runs", tag: str = "", max_tries: int = 100) -> Path:
    """Create and return ``root/NNNNN-<tag>`` numbered 1 + the highest existing number (``NNNNN`` if no tag).

    Safe when several processes start runs at once: a process that finds another folder with the number
    it just took removes its own (empty) folder and tries the next number, so numbers stay unique.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tag = _clean_tag(tag)
    for _ in range(max_tries):
        numbers = [_run_number(p.name) for p in list_runs(root)]
        number = max(numbers, default=-1) + 1
        name = f"{number:05d}-{tag}" if tag else f"{number:05d}"
        path = root / name
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        rivals = [p for p in list_runs(root) if _run_number(p.name) == number and p.name != name]
        if not rivals:
            return path
        os.rmdir(path)  # another process took this number at the same time: back off and retry
        time.sleep(random.uniform(0.0, 0.05))
    raise RuntimeError(f"{root}: could not create a run folder after {max_tries} tries")


def find_run(root: PathLike, spec: Union[str, int, Path]) -> Path:
    """Resolve a run given its number (``3`` or ``"3"``), its folder name under ``root``, or a path."""
    root = Path(root)
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        number = int(text)
        hits = [p for p in list_runs(root) if _run_number(p.name) == number]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"{root}: run number {number} is ambiguous: {', '.join(p.name for p in hits)}")
    else:
        for candidate in (root / text, Path(text)):
            if candidate.is_dir():
                return candidate
    names = [p.name for p in list_runs(root)]
    shown = ", ".join(names[-10:]) if names else "none"
    raise FileNotFoundError(f"{root}: no run matches {text!r} (latest runs: {shown})")


def run_tag(cfg: "TrainConfig") -> str:
    """The folder tag of a run of ``cfg`` (a TrainConfig): ``{method}-{loss}-{dataset}-{bits}b-lf{lf}-s{seed}``.

    A GAN run (stage 1 of fake-image hashing) has no loss or code length of interest: ``gan-{dataset}-s{seed}``.
    """
    if cfg.method == "gan":
        return f"gan-{cfg.dataset}-s{cfg.seed}"
    return f"{cfg.method}-{cfg.loss}-{cfg.dataset}-{cfg.bits}b-lf{cfg.label_fraction:g}-s{cfg.seed}"


def new_run_dir(cfg: "TrainConfig", tag: Optional[str] = None) -> Path:
    """Create the next numbered run folder for ``cfg`` under ``cfg.out`` (tag: :func:`run_tag` unless given)."""
    return create_run_dir(cfg.out, run_tag(cfg) if tag is None else tag)


def resolve_run(run: Union[str, int, Path], root: PathLike = "runs", which: str = "best") -> tuple[Path, Path]:
    """(run folder, checkpoint) of a run given as a checkpoint file, a folder, or a number/name under ``root``.

    The checkpoint is the given file, else ``best`` (``which="best"``, falling back to ``last`` when the run
    has no best yet) or ``last``; it may not exist (a run that never saved one).
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be best or last, got {which!r}")
    path = None if isinstance(run, int) else Path(run)
    if path is not None and path.is_file():
        return path.parent, path
    run_dir = path if path is not None and path.is_dir() else find_run(root, run)
    ckpt = run_dir / (BEST if which == "best" else LAST)
    if not ckpt.exists():
        ckpt = run_dir / LAST
    return run_dir, ckpt


# --------------------------------------------------------------------------------------------------
# config


def _plain(obj: Any, where: str) -> Any:
    """Convert tuples, paths and NumPy/torch scalars to plain YAML/JSON types (refuse anything else)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    raise TypeError(f"{where}: value of type {type(obj).__name__} cannot be written")


def write_config(run_dir: PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``config`` to ``run_dir/config.yaml`` (sorted keys, atomic); returns the file path."""
    path = Path(run_dir) / CONFIG
    try:
        text = yaml.safe_dump(_plain(dict(config), "config"), sort_keys=True, default_flow_style=False)
    except TypeError as e:
        raise TypeError(f"{path}: {e}") from None
    atomic_write_text(path, text)
    return path


def read_config(path: PathLike) -> dict:
    """Read a YAML config (a file, or a run folder holding ``config.yaml``); an empty file gives {}."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------------
# metrics


def _json_value(obj: Any) -> Any:
    """Tensors/NumPy values to Python numbers or lists; NaN and +-inf to None (strict JSON)."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        obj = obj.item() if obj.numel() == 1 and obj.dim() == 0 else obj.tolist()
    elif isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_json_value(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _json_value(v) for k, v in obj.items()}
    raise TypeError(f"value of type {type(obj).__name__} cannot be logged as JSON")


def _is_record(line: Union[str, bytes]) -> bool:
    """Whether ``line`` parses as a JSON object."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _repair_last_line(path: Path) -> None:
    """End the file with a newline: complete a valid last record, cut off a half-written one."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "rb+") as f:
        if _is_record(data[cut:]):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(cut)


class MetricsLogger:
    """Append one JSON object per :meth:`log` call to a ``.jsonl`` file, flushed at once."""

    def __init__(self, path: PathLike) -> None:
        """Open ``path`` for appending, first removing a partial last line left by a killed run."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _repair_last_line(self.path)
        self._file: Optional[IO[str]] = open(self.path, "a", encoding="utf-8")

    def log(self, **record: Any) -> dict:
        """Write ``record`` as one line (tensors/NumPy converted, NaN/inf as null); returns what was written."""
        if self._file is None:
            raise ValueError(f"{self.path}: MetricsLogger is closed")
        try:
            plain = {k: _json_value(v) for k, v in record.items()}
        except TypeError as e:
            raise TypeError(f"{self.path}: {e}") from None
        self._file.write(json.dumps(plain, allow_nan=False) + "\n")
        self._file.flush()
        return plain

    def close(self) -> None:
        """Close the file (further :meth:`log` calls raise)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MetricsLogger":
        """Use as a context manager that closes the file."""
        return self

    def __exit__(self, *exc: Any) -> None:
        """Close on leaving the ``with`` block."""
        self.close()


def _read_lines(path: Path) -> list[tuple[str, dict]]:
    """(raw line, record) pairs of a ``.jsonl`` file; a bad last line is ignored, a bad earlier one raises."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: metrics file does not exist") from None
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except ValueError as e:
            if i == len(lines) - 1:
                break  # written by a run that was killed mid-line
            raise ValueError(f"{path}, line {i + 1}: not a JSON object: {e}") from None
        out.append((line, record))
    return out


def read_metrics(path: PathLike) -> list[dict]:
    """All records of a ``.jsonl`` file; an unreadable last line (a killed run) is ignored, others raise."""
    return [record for _, record in _read_lines(Path(path))]


def truncate_metrics(path: PathLike, after: int, key: str = "step") -> int:
    """Drop every record from the first one whose ``key`` exceeds ``after`` on; returns how many were dropped.

    Meant for resuming: ``truncate_metrics(run / METRICS, after=ckpt_step)`` forgets what was logged after
    the checkpoint.  Records are chronological, so records without ``key`` (e.g. an evaluation summary)
    are kept when they come before the cut and dropped after it.  A partial last line is dropped too;
    kept lines are written back unchanged and atomically.  A missing file is left missing (returns 0).
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines = _read_lines(path)
    keep = len(lines)
    for i, (_, record) in enumerate(lines):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > after:
            keep = i
            break
    text = "".join(line + "\n" for line, _ in lines[:keep])
    if path.read_text(encoding="utf-8", errors="replace") != text:
        atomic_write_text(path, text)
    return len(lines) - keep
