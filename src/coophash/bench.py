"""Resumable experiment grids: each finished (config, seed) result is cached as one JSON file.

A rerun after a kill skips every cached result and continues with the rest; a run killed mid-training
resumes from its last checkpoint (its run folder is kept under ``<out>/runs/<key>``).

A result holds the query-split metrics of the best checkpoint (``map@all``, ``precision@r2``, every other
scalar under ``metrics`` and the ``pr_curve``), the per-epoch ``curves`` of the run (validation and
training-sample mAP, :func:`epoch_curves`; results cached before they were recorded have none) and, under
``extra``, what the optional ``extra_evals`` callbacks computed from the trained model right after training
(out-of-distribution scores, retrieval on another dataset, ...), so that no run folder has to be kept for
later evaluations.  A cached result that
lacks an extra evaluation now asked for is trained again (training is seeded, so it gives the same model).
Configs train through :func:`coophash.pipeline.train` (every stage they need); a result is filed under the
key of the config asked for (:func:`config_key`), never of a stage's derived config, so caches stay valid.
Extra evaluations see the trained run through an :class:`EvalContext`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch

from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest
from coophash.methods.base import DataInfo, Method
from coophash.pipeline import StageResult, train
from coophash.train import runs
from coophash.train.encoding import encode_indices
from coophash.train.progress import ProgressFn
from coophash.train.trainer import Trainer
from coophash.utils.io import atomic_write_text

__all__ = ["config_key", "find_cached", "run_grid", "EvalContext", "load_results", "aggregate", "format_table",
           "epoch_curves"]

log = logging.getLogger(__name__)


# config fields added after results were cached: left out of the key while at their default value
KEY_ADDED_DEFAULTS: dict[str, Any] = {"amp": True}


def config_key(cfg: TrainConfig) -> str:
    """A short stable name for a config: readable prefix plus a hash of every field."""
    d = cfg.to_dict()
    d.pop("out", None)
    d.pop("threads", None)
    for name, default in KEY_ADDED_DEFAULTS.items():  # fields added later: old caches stay valid
        if d.get(name) == default:
            d.pop(name)
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.method}-{cfg.loss}-{cfg.bits}b-lf{cfg.label_fraction:g}-s{cfg.seed}-{digest}"


# fields that change how a run executes, not what it computes: a cached result made with other values of
# these (an earlier default encoding batch, another thread count) is reused rather than trained again
EXECUTION_FIELDS = ("out", "threads", "eval_batch_size")


def _result_fields(config: Mapping[str, Any]) -> Any:
    d = {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}
    for name, default in KEY_ADDED_DEFAULTS.items():
        d.setdefault(name, default)  # results cached before the field existed ran at its default
    return json.loads(json.dumps(d, sort_keys=True))


def find_cached(out: str | Path, cfg: TrainConfig) -> Optional[Path]:
    """The cached result file of ``cfg`` under ``out/results``: its own key, else a result whose config
    differs only in :data:`EXECUTION_FIELDS`; None when there is none."""
    res = Path(out) / "results"
    key = config_key(cfg)
    path = res / f"{key}.json"
    if path.exists():
        return path
    want = _result_fields(cfg.to_dict())
    for p in sorted(res.glob(f"{key.rsplit('-', 1)[0]}-*.json")):
        try:
            config = json.loads(p.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _result_fields(config) == want:
            return p
    return None


class EvalContext:
    """A trained run as its extra evaluations see it: config, method, data, split and device.

    One context per trained config is handed to every extra evaluation of that config, so that codes
    computed by one (the database, say) are reused by the next instead of encoded again.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.cfg: TrainConfig = trainer.cfg
        self.method: Method = trainer.method
        self.ds: HashDataset = trainer.ds
        self.manifest: Manifest = trainer.manifest
        self.info: DataInfo = trainer.info
        self.device: torch.device = trainer.device
        self._codes: dict[tuple, np.ndarray] = {}

    def codes(self, ds: HashDataset, idx: np.ndarray) -> np.ndarray:
        """Packed codes of items ``idx`` of ``ds`` (this run's data or another dataset), encoded once per run."""
        idx = np.asarray(idx, dtype=np.int64)
        key = (ds.name, tuple(ds.image_shape), int(idx.size), idx.tobytes())
        if key not in self._codes:
            self._codes[key] = encode_indices(self.method.encode, ds, idx, self.device, self.cfg.eval_batch_size)
        return self._codes[key]


ExtraEval = Callable[[EvalContext], dict]
ProgressFactory = Callable[[TrainConfig], Optional[ProgressFn]]


def run_grid(
    configs: Iterable[TrainConfig],
    out: str | Path,
    on_done: Optional[Callable[[TrainConfig, dict, bool], None]] = None,
    keep_runs: bool = False,
    extra_evals: Optional[Callable[[TrainConfig], Mapping[str, ExtraEval]]] = None,
    on_start: Optional[ProgressFactory] = None,
    on_error: Optional[Callable[[TrainConfig, BaseException], None]] = None,
) -> list[dict]:
    """Train and evaluate every config not yet cached in ``out/results``; return all results.

    Training goes through :func:`coophash.pipeline.train` (every stage a config needs).  ``on_error(cfg,
    exc)``, when given, receives the exception of a config that failed (its run folder is kept for a
    resume) and the grid goes on with the next config; without it the exception propagates.

    ``extra_evals(cfg)`` names evaluations ``fn(ctx: EvalContext) -> dict`` run on the best checkpoint right
    after training and stored under ``result["extra"][name]``; ``on_start(cfg)`` is called before a config
    trains and may return the progress callback of its training; ``on_done(cfg, result, cached)`` is called
    after each config.
    """
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in configs:
        extras = dict(extra_evals(cfg)) if extra_evals else {}
        rec = _cached_with(out, cfg, extras)
        if rec is None:
            try:
                rec = _train_and_record(cfg, out, extras, keep_runs, on_start)
            except Exception as exc:  # noqa: BLE001 - handed to on_error, or re-raised
                if on_error is None:
                    raise
                on_error(cfg, exc)
                continue
            cached = False
        else:
            cached = True
        results.append(rec)
        if on_done:
            on_done(cfg, rec, cached)
    return results


def _cached_with(out: Path, cfg: TrainConfig, extras: Mapping[str, ExtraEval]) -> Optional[dict]:
    """The cached result of ``cfg`` if it holds every extra evaluation asked for, else None."""
    found = find_cached(out, cfg)
    if found is None:
        return None
    rec = json.loads(found.read_text())
    missing = sorted(set(extras) - set(rec.get("extra", {})))
    if not missing:
        return rec
    log.warning("%s: cached result lacks %s; training it again", found, ", ".join(missing))
    return None


def _train_and_record(cfg: TrainConfig, out: Path, extras: Mapping[str, ExtraEval], keep_runs: bool,
                      on_start: Optional[ProgressFactory]) -> dict:
    """Train ``cfg`` under ``out/runs/<key>``, run its extra evaluations and cache its result."""
    key = config_key(cfg)
    run_dir = out / "runs" / key
    progress = on_start(cfg) if on_start else None
    result = train(cfg, run_dir, resume=(run_dir / runs.LAST).exists(), progress=progress)
    rec = _record(key, cfg, result, run_dir)
    if extras:
        rec["extra"] = _extra_results(result.trainer, extras)
    atomic_write_text(out / "results" / f"{key}.json", json.dumps(rec, indent=1, sort_keys=True,
                                                                  default=_json_default) + "\n")
    if not keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rec


def _record(key: str, cfg: TrainConfig, result: StageResult, run_dir: Path) -> dict:
    """The cached result of a trained config: query-split metrics of the best checkpoint, timings, config.

    ``config`` is the config asked for (the one the key is made of), not a stage's config."""
    res = result.results
    return {
        "key": key,
        "config": cfg.to_dict(),
        "map@all": res["map@all"],
        "precision@r2": res.get("precision@r2"),
        "best_val_map": res["best_val_map"],
        "best_epoch": res["best_epoch"],
        "seconds_per_epoch": _epoch_seconds(run_dir),
        "epoch_seconds": _epoch_seconds_list(run_dir),
        "curves": epoch_curves(run_dir),
        "steps_per_epoch": result.trainer.schedule.steps_per_epoch,
        "metrics": {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "pr_curve": res.get("pr_curve"),
    }


def _extra_results(trainer: Trainer, extras: Mapping[str, ExtraEval]) -> dict[str, dict]:
    """Every extra evaluation on the trained method (in eval mode), sharing one :class:`EvalContext`."""
    ctx = EvalContext(trainer)
    ctx.method.train(False)
    try:
        return {name: fn(ctx) for name, fn in sorted(extras.items())}
    finally:
        ctx.method.train(True)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _optional_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def epoch_curves(run_dir: Path) -> dict[str, list]:
    """The per-epoch curves of a run, from its metrics.jsonl: ``epoch``, ``val_map`` and ``train_map`` lists.

    ``val_map`` is the validation mAP@all the trainer selects the best epoch by, ``train_map`` the mAP@all of
    its fixed sample of labeled training images (``TrainConfig.train_map_every``); an epoch that did not log
    one holds None there.  Their difference is the over-fitting gap the suite report shows.
    """
    recs = [r for r in runs.read_metrics(run_dir / runs.METRICS) if "epoch" in r and not r.get("final")]
    return {"epoch": [int(r["epoch"]) for r in recs],
            "val_map": [_optional_float(r.get("val_map")) for r in recs],
            "train_map": [_optional_float(r.get("train_map")) for r in recs]}


def _epoch_seconds_list(run_dir: Path) -> list[float]:
    """Training seconds of every epoch of a run (from its metrics.jsonl)."""
    recs = [r for r in runs.read_metrics(run_dir / runs.METRICS) if "seconds" in r and not r.get("final")]
    return [float(r["seconds"]) for r in recs]


def _epoch_seconds(run_dir: Path) -> float:
    secs = _epoch_seconds_list(run_dir)
    return float(sum(secs) / len(secs)) if secs else float("nan")


def load_results(out: str | Path) -> list[dict]:
    """Every cached result under ``out/results``."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "results").glob("*.json"))]


def aggregate(results: list[dict], keys: tuple[str, ...], metric: str = "map@all") -> dict[tuple, dict]:
    """Mean, sample std and count of ``metric`` over seeds, grouped by config fields ``keys``."""
    groups: dict[tuple, list[float]] = {}
    secs: dict[tuple, list[float]] = {}
    for r in results:
        g = tuple(r["config"][k] for k in keys)
        groups.setdefault(g, []).append(float(r[metric]))
        secs.setdefault(g, []).append(float(r.get("seconds_per_epoch", float("nan"))))
    out = {}
    for g, vals in groups.items():
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        out[g] = {"mean": mean, "std": std, "n": n, "seconds_per_epoch": sum(secs[g]) / len(secs[g])}
    return out


def format_table(agg: dict[tuple, dict], row_key: int, col_key: int, fixed: dict[int, Any],
                 row_name: str, col_name: str, fmt: Callable[[Any], str] = str) -> str:
    """A Markdown table of mean ± std (n) with rows/cols from two config fields, others fixed."""
    rows = sorted({g[row_key] for g in agg if all(g[i] == v for i, v in fixed.items())}, key=str)
    cols = sorted({g[col_key] for g in agg if all(g[i] == v for i, v in fixed.items())},
                  key=lambda v: -v if isinstance(v, (int, float)) else 0)
    lines = [f"| {row_name} | " + " | ".join(f"{col_name} {fmt(c)}" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            match = [v for g, v in agg.items() if g[row_key] == r and g[col_key] == c
                     and all(g[i] == val for i, val in fixed.items())]
            cells.append(f"{match[0]['mean']:.4f} ± {match[0]['std']:.4f} ({match[0]['n']})" if match else "–")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
