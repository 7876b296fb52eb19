"""Run folders: numbered ``runs/00003-<tag>/`` folders holding the config, metrics and checkpoints.

A run folder contains (names below are module constants):

* ``config.yaml``      -- the resolved training config behind a checksum line (:func:`write_config` /
  :func:`read_config`; :func:`read_run_config` for a resume, which also requires every field);
* ``manifest.json``    -- the data split manifest (with its own checksum);
* ``metrics.jsonl``    -- a header line, then one JSON object per line, each with a checksum of its line
  (:class:`MetricsLogger` / :func:`read_metrics`);
* ``last.safetensors`` / ``best.safetensors`` -- checkpoints (:mod:`coophash.train.checkpoint`);
* ``.writer.lock``     -- the lock that gives a run folder one writer at a time (:func:`writer_lock`).

Metrics are strict JSON: NaN and +-inf are written as ``null``.  A damaged line (cut short, a changed
byte, no checksum in a file that has them) is an error naming the file and the line, never skipped.
Files written before checksums (no header line) are read as they are and sealed when a run appends.

Resuming (:func:`check_resume`, :func:`resume_metrics`) checks that the folder's config, manifest and
metrics are intact and describe the run being continued.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from coophash.config import load_config, read_yaml_mapping, seal_yaml
from coophash.data import DataError, HashDataset, Manifest
from coophash.utils.integrity import IntegrityError, PLACEHOLDER, seal, verify
from coophash.utils.io import atomic_write_text, remove_orphaned_temps

if TYPE_CHECKING:  # annotations only
    from coophash.config import TrainConfig

__all__ = [
    "CONFIG",
    "MANIFEST",
    "METRICS",
    "BEST",
    "LAST",
    "LOCK",
    "RESUME_FREE_FIELDS",
    "RunFolderBusy",
    "create_run_dir",
    "run_tag",
    "new_run_dir",
    "fresh_run_dir",
    "discard_if_empty",
    "list_runs",
    "find_run",
    "resolve_run",
    "write_config",
    "read_config",
    "read_run_config",
    "config_differences",
    "writer_lock",
    "check_not_busy",
    "check_resume",
    "resume_metrics",
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
LOCK = ".writer.lock"

# Config fields that may differ between a run and its resume: how long it trains, where it runs and how
# often it evaluates or saves (a GAN folder shared by several runs is resumed by any of them).
RESUME_FREE_FIELDS = ("epochs", "out", "threads", "device", "eval_batch_size", "checkpoint_every", "eval_every",
                      "train_map_every")

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


@contextlib.contextmanager
def fresh_run_dir(cfg: "TrainConfig", tag: Optional[str] = None) -> Iterator[Path]:
    """A new run folder for ``cfg`` (:func:`new_run_dir`), removed again when the block fails before
    anything was written into it (a bad dataset name, say), so that failed starts leave no empty folders."""
    run_dir = new_run_dir(cfg, tag)
    try:
        yield run_dir
    except BaseException:
        discard_if_empty(run_dir)
        raise


def discard_if_empty(run_dir: PathLike) -> bool:
    """Remove ``run_dir`` if it holds nothing but its lock and temporary files; whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    remove_orphaned_temps(run_dir)
    if any(p.name != LOCK for p in run_dir.iterdir()):
        return False
    (run_dir / LOCK).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        return False
    return True


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
    """Write ``config`` to ``run_dir/config.yaml`` (sorted keys, a checksum line first, atomic); returns the path."""
    path = Path(run_dir) / CONFIG
    try:
        text = yaml.safe_dump(_plain(dict(config), "config"), sort_keys=True, default_flow_style=False)
    except TypeError as e:
        raise TypeError(f"{path}: {e}") from None
    atomic_write_text(path, seal_yaml(text))
    return path


def read_config(path: PathLike) -> dict:
    """Read a YAML config as a dict (a file, or a run folder holding ``config.yaml``; its checksum line checked).

    An empty file, a damaged one or one that is not a mapping raises ValueError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    return read_yaml_mapping(path, "config")


def read_run_config(run_dir: PathLike) -> "TrainConfig":
    """The TrainConfig of a run folder, read strictly: checksum checked and every field required."""
    return load_config(Path(run_dir) / CONFIG, complete=True)


def config_differences(a: "TrainConfig", b: "TrainConfig", ignore: Sequence[str] = ()) -> list[str]:
    """Names of the config fields whose values differ between ``a`` and ``b`` (``ignore``: fields not compared)."""
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if k not in ignore and da[k] != db.get(k)]


# --------------------------------------------------------------------------------------------------
# one writer per run folder; resuming


class RunFolderBusy(RuntimeError):
    """Another process is writing the run folder (it holds the folder's writer lock)."""


@contextlib.contextmanager
def writer_lock(run_dir: PathLike) -> Iterator[Path]:
    """Hold the writer lock of ``run_dir`` (``fcntl.flock`` on ``.writer.lock``) for the block.

    Fails at once with :class:`RunFolderBusy` when another process holds it.  Once held, temporary files
    that killed atomic writes left in the folder are removed.  Where ``fcntl`` is missing (Windows) no
    lock is taken and nothing is removed.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield run_dir
        return
    with open(run_dir / LOCK, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            fh.seek(0)
            holder = fh.read().strip()[:20]
            raise RunFolderBusy(f"{run_dir}: another process{f' (pid {holder})' if holder else ''} is writing "
                                "this run folder; wait for it to finish or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        remove_orphaned_temps(run_dir)
        yield run_dir  # closing the file releases the lock


def check_not_busy(run_dir: PathLike) -> None:
    """Raise :class:`RunFolderBusy` when another process holds the writer lock of ``run_dir`` (a quick look
    before loading data; the writer takes the lock itself for as long as it writes)."""
    with writer_lock(run_dir):
        pass


def check_resume(run_dir: PathLike, cfg: "TrainConfig", manifest: Manifest, dataset: HashDataset) -> None:
    """Before resuming ``run_dir``: its config and manifest must be intact and describe this run.

    The saved config must equal ``cfg`` but for :data:`RESUME_FREE_FIELDS`; the saved manifest must fit
    ``dataset`` (size and fingerprint) and equal ``manifest``, the split ``cfg`` makes now.
    """
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    diff = config_differences(saved, cfg, RESUME_FREE_FIELDS)
    if diff:
        shown = "; ".join(f"{k}: {getattr(saved, k)!r:.40} in the run, {getattr(cfg, k)!r:.40} now" for k in diff)
        raise ValueError(f"{run_dir / CONFIG}: cannot resume this run with another config ({shown})")
    path = run_dir / MANIFEST
    saved_manifest = Manifest.load(path)
    try:
        saved_manifest.check(dataset)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    if saved_manifest.to_dict() != manifest.to_dict():
        raise DataError(f"{path}: the run's split differs from the one its config makes now "
                        f"({saved_manifest!r} vs {manifest!r})")


def resume_metrics(path: PathLike, state: Mapping[str, Any]) -> None:
    """Cut ``metrics.jsonl`` back to a checkpoint's ``global_step`` and check it holds one record for each
    epoch the checkpoint has finished (``state["epoch"]``); ValueError naming the file otherwise."""
    path = Path(path)
    epochs = int(state["epoch"])
    if not path.exists() or path.stat().st_size == 0:
        if epochs:
            raise ValueError(f"{path}: {'missing' if not path.exists() else 'empty'}, but the checkpoint has "
                             f"finished {epochs} epoch(s): their records are lost")
        path.unlink(missing_ok=True)
        return
    truncate_metrics(path, int(state["global_step"]))
    found = [r["epoch"] for r in read_metrics(path) if "epoch" in r and not r.get("final")]
    if found != list(range(1, epochs + 1)):
        shown = found if len(found) <= 8 else found[:4] + ["..."] + found[-3:]
        raise ValueError(f"{path}: holds records of epochs {shown}, but the checkpoint has finished epochs "
                         f"1..{epochs}: records are missing or damaged")


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


_METRICS_FORMAT = "coophash-metrics"
_METRICS_VERSION = 2
_LINE_FIELD = b'"sha256": "'  # how a line's checksum appears (json.dumps' default separators)


def _sealed_line(record: Mapping[str, Any]) -> str:
    """One metrics line: ``record`` as JSON with a checksum of the line as its last field (no newline)."""
    if "sha256" in record:
        raise ValueError("a metrics record cannot have a field named 'sha256' (the line's checksum)")
    text = json.dumps({**record, "sha256": PLACEHOLDER.decode()}, allow_nan=False)
    return seal(text.encode(), _LINE_FIELD).decode()


def _header() -> str:
    """The first line of a metrics file (names the format, so that every later line must carry a checksum)."""
    return _sealed_line({"format": _METRICS_FORMAT, "version": _METRICS_VERSION})


def _decode(path: Path, data: bytes) -> list[str]:
    """The lines of a metrics file (without newlines); ValueError naming the file (and line) when damaged."""
    if not data:
        raise ValueError(f"{path}: empty metrics file (damaged: every metrics file starts with a header line)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (damaged)") from None
    lines = text.split("\n")
    if lines[-1] != "":
        raise ValueError(f"{path}, line {len(lines)}: the last line is incomplete (damaged or cut short)")
    return lines[:-1]


def _parse(path: Path, number: int, line: str, sealed: bool) -> dict:
    """The record of line ``number`` (checksum checked and removed when ``sealed``)."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ValueError(f"{path}, line {number}: not a JSON object ({e}); the file is damaged") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}, line {number}: not a JSON object (a {type(record).__name__}); the file is damaged")
    if not sealed:
        return record
    if "sha256" not in record:
        raise ValueError(f"{path}, line {number}: the line has no checksum (damaged)")
    try:
        verify(line.encode("utf-8"), _LINE_FIELD, record.pop("sha256"))
    except IntegrityError as e:
        raise ValueError(f"{path}, line {number}: {e}") from None
    return record


def _read_lines(path: Path) -> list[tuple[str, dict]]:
    """(raw line, record) pairs of a metrics file, header excluded; any damaged line raises, naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: metrics file does not exist") from None
    lines = _decode(path, data)
    first = _parse(path, 1, lines[0], sealed=False)
    sealed = first.get("format") == _METRICS_FORMAT
    if sealed:
        _parse(path, 1, lines[0], sealed=True)
        if first.get("version") != _METRICS_VERSION:
            raise ValueError(f"{path}, line 1: metrics format version {first.get('version')!r:.20} is not "
                             f"{_METRICS_VERSION} (damaged, or written by a newer coophash)")
        lines = lines[1:]
        offset = 2
    else:  # written before checksums; a line with a checksum means the header was damaged
        if any(_LINE_FIELD.decode() in line for line in lines):
            raise ValueError(f"{path}, line 1: the header line is damaged")
        offset = 1
    return [(line, _parse(path, i + offset, line, sealed)) for i, line in enumerate(lines)]


def _write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write a whole metrics file (header + sealed records) atomically."""
    atomic_write_text(path, "".join(line + "\n" for line in [_header(), *map(_sealed_line, records)]))


class MetricsLogger:
    """Append one JSON object per :meth:`log` call to a ``.jsonl`` file, flushed at once, each line sealed
    with its own checksum.  A new file starts with a header line; an existing one is checked first (a
    damaged one raises), and one written before checksums is rewritten with them."""

    def __init__(self, path: PathLike) -> None:
        """Open ``path`` for appending (created with its header line when missing or empty)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            _write_records(self.path, [])
        else:
            lines = _read_lines(self.path)
            if not self.path.read_text(encoding="utf-8").startswith(_header()):
                _write_records(self.path, [record for _, record in lines])
        self._file: Optional[IO[str]] = open(self.path, "a", encoding="utf-8")

    def log(self, **record: Any) -> dict:
        """Write ``record`` as one line (tensors/NumPy converted, NaN/inf as null); returns what was written."""
        if self._file is None:
            raise ValueError(f"{self.path}: MetricsLogger is closed")
        try:
            plain = {k: _json_value(v) for k, v in record.items()}
            line = _sealed_line(plain)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{self.path}: {e}") from None
        self._file.write(line + "\n")
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


def read_metrics(path: PathLike) -> list[dict]:
    """All records of a metrics file (checksums checked); a damaged line raises ValueError naming the line."""
    return [record for _, record in _read_lines(Path(path))]


def truncate_metrics(path: PathLike, after: int, key: str = "step") -> int:
    """Drop every record from the first one whose ``key`` exceeds ``after`` on; returns how many were dropped.

    Meant for resuming: ``truncate_metrics(run / METRICS, after=ckpt_step)`` forgets what was logged after
    the checkpoint.  Records are chronological, so records without ``key`` (e.g. an evaluation summary)
    are kept when they come before the cut and dropped after it.  A damaged file raises (nothing is
    dropped silently); the kept records are written back, sealed, atomically.  A missing file is left
    missing (returns 0).
    """
    path = Path(path)
    if not path.exists():
        return 0
    records = [record for _, record in _read_lines(path)]
    keep = len(records)
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > after:
            keep = i
            break
    text = "".join(line + "\n" for line in [_header(), *map(_sealed_line, records[:keep])])
    if path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return len(records) - keep
