"""Resumable experiment grids: each finished (config, seed) result is cached as one JSON file.

A rerun after a kill skips every cached result and continues with the rest; a run killed mid-training
resumes from its last checkpoint (its run folder is kept under ``<out>/runs/<key>``).

A result holds the query-split metrics of the best checkpoint (``map@all``, ``precision@r2``, every other
scalar under ``metrics`` and the ``pr_curve``) and, under ``extra``, what the optional ``extra_evals``
callbacks computed from the trained model right after training (out-of-distribution scores, retrieval on
another dataset, ...), so that no run folder has to be kept for later evaluations.  A cached result that
lacks an extra evaluation now asked for is trained again (training is seeded, so it gives the same model).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from coophash.config import TrainConfig
from coophash.train.trainer import Trainer
from coophash.utils.io import atomic_write_text

__all__ = ["config_key", "find_cached", "run_grid", "load_results", "aggregate", "format_table"]

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


ExtraEval = Callable[[Trainer], dict]


def run_grid(
    configs: Iterable[TrainConfig],
    out: str | Path,
    on_done: Optional[Callable[[TrainConfig, dict, bool], None]] = None,
    keep_runs: bool = False,
    extra_evals: Optional[Callable[[TrainConfig], Mapping[str, ExtraEval]]] = None,
    on_start: Optional[Callable[[TrainConfig, Trainer], None]] = None,
    on_error: Optional[Callable[[TrainConfig, BaseException], None]] = None,
) -> list[dict]:
    """Train and evaluate every config not yet cached in ``out/results``; return all results.

    ``on_error(cfg, exc)``, when given, receives the exception of a config that failed (its run folder
    is kept for a resume) and the grid goes on with the next config; without it the exception propagates.

    ``extra_evals(cfg)`` names evaluations ``fn(trainer) -> dict`` run on the best checkpoint right after
    training and stored under ``result["extra"][name]``; ``on_start(cfg, trainer)`` is called before a
    config trains (e.g. to attach a progress callback), ``on_done(cfg, result, cached)`` after each config.
    """
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in configs:
        key = config_key(cfg)
        path = out / "results" / f"{key}.json"
        extras = dict(extra_evals(cfg)) if extra_evals else {}
        found = find_cached(out, cfg)
        if found is not None:
            rec = json.loads(found.read_text())
            missing = sorted(set(extras) - set(rec.get("extra", {})))
            if not missing:
                results.append(rec)
                if on_done:
                    on_done(cfg, rec, True)
                continue
            log.warning("%s: cached result lacks %s; training it again", found, ", ".join(missing))
        run_dir = out / "runs" / key
        try:
            trainer, res = _train(cfg, run_dir, on_start)
        except Exception as exc:  # noqa: BLE001 - handed to on_error, or re-raised
            if on_error is None:
                raise
            on_error(cfg, exc)
            continue
        epoch_secs = _epoch_seconds(run_dir)
        rec = {
            "key": key,
            "config": cfg.to_dict(),
            "map@all": res["map@all"],
            "precision@r2": res.get("precision@r2"),
            "best_val_map": res["best_val_map"],
            "best_epoch": res["best_epoch"],
            "seconds_per_epoch": epoch_secs,
            "epoch_seconds": _epoch_seconds_list(run_dir),
            "steps_per_epoch": trainer.schedule.steps_per_epoch,
            "metrics": {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "pr_curve": res.get("pr_curve"),
        }
        if extras:
            trainer.method.train(False)
            try:
                rec["extra"] = {name: fn(trainer) for name, fn in sorted(extras.items())}
            finally:
                trainer.method.train(True)
        atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True,
                                           default=_json_default) + "\n")
        if not keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
        results.append(rec)
        if on_done:
            on_done(cfg, rec, False)
    return results


def _train(cfg: TrainConfig, run_dir: Path,
           on_start: Optional[Callable[[TrainConfig, Trainer], None]]) -> tuple[Trainer, dict]:
    trainer = Trainer(cfg, run_dir)
    if on_start:
        on_start(cfg, trainer)
    return trainer, trainer.fit(resume=(run_dir / "last.safetensors").exists())


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _epoch_seconds_list(run_dir: Path) -> list[float]:
    """Training seconds of every epoch of a run (from its metrics.jsonl)."""
    from coophash.train import runs

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
    cols = sorted({g[col_key] for g in agg if all(g[i] == v for i, v in fixed.items())}, key=lambda v: -v if isinstance(v, (int, float)) else 0)
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
