"""Resumable experiment grids: each finished (config, seed) result is cached as one JSON file.

A rerun after a kill skips every cached result and continues with the rest; a run killed mid-training
resumes from its last checkpoint (its run folder is kept under ``<out>/runs/<key>``).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from coophash.config import TrainConfig
from coophash.train.trainer import Trainer
from coophash.utils.io import atomic_write_text

__all__ = ["config_key", "run_grid", "load_results", "aggregate", "format_table"]


def config_key(cfg: TrainConfig) -> str:
    """A short stable name for a config: readable prefix plus a hash of every field."""
    d = cfg.to_dict()
    d.pop("out", None)
    d.pop("threads", None)
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.method}-{cfg.loss}-{cfg.bits}b-lf{cfg.label_fraction:g}-s{cfg.seed}-{digest}"


def run_grid(
    configs: Iterable[TrainConfig],
    out: str | Path,
    on_done: Optional[Callable[[TrainConfig, dict, bool], None]] = None,
    keep_runs: bool = False,
) -> list[dict]:
    """Train and evaluate every config not yet cached in ``out/results``; return all results."""
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in configs:
        key = config_key(cfg)
        path = out / "results" / f"{key}.json"
        if path.exists():
            rec = json.loads(path.read_text())
            results.append(rec)
            if on_done:
                on_done(cfg, rec, True)
            continue
        run_dir = out / "runs" / key
        trainer = Trainer(cfg, run_dir)
        res = trainer.fit(resume=(run_dir / "last.safetensors").exists())
        epoch_secs = _epoch_seconds(run_dir)
        rec = {
            "key": key,
            "config": cfg.to_dict(),
            "map@all": res["map@all"],
            "precision@r2": res.get("precision@r2"),
            "best_val_map": res["best_val_map"],
            "best_epoch": res["best_epoch"],
            "seconds_per_epoch": epoch_secs,
            "steps_per_epoch": trainer.schedule.steps_per_epoch,
        }
        atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")
        if not keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
        results.append(rec)
        if on_done:
            on_done(cfg, rec, False)
    return results


def _epoch_seconds(run_dir: Path) -> float:
    from coophash.train import runs

    recs = [r for r in runs.read_metrics(run_dir / runs.METRICS) if "seconds" in r and not r.get("final")]
    secs = [r["seconds"] for r in recs]
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
