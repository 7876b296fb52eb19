"""Run a suite: train every planned config not yet cached, measure search cost, write the report.

Output folder layout::

    <out>/results/<key>.json      one cached result per trained config (coophash.bench.run_grid)
    <out>/search/*.json           cached search timings of the cost experiment
    <out>/runs/<key>/             the run folder of a config being trained (removed when it finishes)
    <out>/report/                 results.json, report.md, *.png, retrievals.html

A rerun after a kill skips the cached results and resumes the interrupted run from its last checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from coophash.bench import find_cached, run_grid
from coophash.config import TrainConfig
from coophash.suite.config import Suite, load_suite
from coophash.suite.experiments import Plan, PlannedRun, extra_evals_for, plan_suite, search_cost
from coophash.train.trainer import Trainer
from coophash.utils.io import atomic_write_text

__all__ = ["SuiteRun", "run_suite", "cached_record", "shard_of"]

log = logging.getLogger(__name__)


@dataclass
class SuiteRun:
    """What a suite run produced: the plan, the results per run key, search timings and report files."""

    plan: Plan
    records: dict[str, dict]
    search: list[dict]
    out: Path
    report_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    trained: int = 0
    seconds: float = 0.0


def cached_record(out: Path, run: PlannedRun) -> Optional[dict]:
    """The cached result of a planned run if it exists and holds every extra evaluation it needs."""
    path = find_cached(out, run.cfg)
    if path is None:
        return None
    rec = json.loads(path.read_text())
    if set(run.extras) - set(rec.get("extra", {})):
        return None
    return rec


def run_suite(
    suite: Suite | str | Path,
    out: Optional[str | Path] = None,
    seeds: Optional[Sequence[int]] = None,
    only: Optional[Iterable[str]] = None,
    device: Optional[str] = None,
    on_start: Optional[Callable[[TrainConfig, Trainer, int, int], None]] = None,
    on_done: Optional[Callable[[TrainConfig, dict, bool, int, int], None]] = None,
    command: str = "",
    note: str = "",
    report: bool = True,
    shard: Optional[tuple[int, int]] = None,
    on_error: Optional[Callable[[TrainConfig, BaseException], None]] = None,
) -> SuiteRun:
    """Train what the suite (or the experiments in ``only``) needs and write the report from every cached result.

    ``on_start(cfg, trainer, i, n)`` / ``on_done(cfg, result, cached, i, n)`` report progress (i counts
    from 1 over the ``n`` selected runs).  A method whose name is not registered is skipped with a warning
    in the report; a registered method that fails raises, unless ``on_error(cfg, exc)`` is given (then the
    suite goes on and the failed run stays untrained).  ``shard=(i, n)`` trains only the runs whose key
    hashes to ``i`` modulo ``n``, so that ``n`` processes sharing one output folder (one per GPU or core)
    split the work; a run that a shard's plan cannot place yet (a ``top`` grid whose ranking needs other
    shards' results) is left to a later unsharded call, which also trains anything a shard missed.
    """
    if shard is not None:
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"--shard: expected I/N with 0 <= I < N, got {i}/{n}")
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    out = Path(out) if out else Path("bench") / suite.name
    only = list(only) if only else None
    if only:
        from coophash.suite.config import EXPERIMENTS

        bad = [k for k in only if k not in EXPERIMENTS]
        if bad:
            raise ValueError(f"--only: unknown experiment kind(s) {bad}; known: {', '.join(EXPERIMENTS)}")
        missing = [k for k in only if k not in suite.experiments]
        if missing:
            raise ValueError(f"--only: suite {suite.name!r} has no experiment(s) {missing}; "
                             f"it has {', '.join(suite.experiments)}")

    def lookup(run: PlannedRun) -> Optional[dict]:
        return cached_record(out, run)

    def mine(run: PlannedRun) -> bool:
        return shard is None or shard_of(run.key, shard[1]) == shard[0]

    plan = plan_suite(suite, seeds=seeds, device=device, out=str(out), lookup=lookup)
    for s in plan.skipped:
        log.warning("%s: %s", s["name"], s["reason"])
    counter = {"i": 0, "trained": 0, "n": sum(mine(r) for r in plan.selected(only))}
    t0 = time.perf_counter()

    def started(cfg: TrainConfig, trainer: Trainer) -> None:
        counter["trained"] += 1
        if on_start:
            on_start(cfg, trainer, counter["i"] + 1, counter["n"])

    def done(cfg: TrainConfig, rec: dict, cached: bool) -> None:
        counter["i"] += 1
        if on_done:
            on_done(cfg, rec, cached, counter["i"], counter["n"])

    out.mkdir(parents=True, exist_ok=True)
    finished: set[str] = set()
    while True:  # a grid ranking methods by results ("top") grows the plan once those results exist
        todo = [r for r in plan.selected(only) if r.key not in finished and mine(r)]
        if not todo:
            break
        run_grid([r.cfg for r in todo], out, on_done=done, extra_evals=extra_evals_for(plan), on_start=started,
                 on_error=on_error)
        finished.update(r.key for r in todo)
        plan = plan_suite(suite, seeds=seeds, device=device, out=str(out), lookup=lookup)
        counter["n"] = counter["i"] + sum(r.key not in finished and mine(r) for r in plan.selected(only))
    records = {}
    for r in plan.runs:
        rec = cached_record(out, r)
        if rec is not None:
            records[r.key] = rec
    search = []
    if "cost" in suite.experiments and (not only or "cost" in only) and shard is None:
        search = [_cached_search(out, b, suite.experiments["cost"]["search"])
                  for b in suite.experiments["cost"]["search"]["bits"]]
    elif "cost" in suite.experiments:
        search = [s for b in suite.experiments["cost"]["search"]["bits"]
                  if (s := _cached_search(out, b, suite.experiments["cost"]["search"], measure=False))]
    result = SuiteRun(plan=plan, records=records, search=search, out=out, report_dir=out / "report",
                      trained=counter["trained"], seconds=time.perf_counter() - t0)
    if report:
        from coophash.suite.report import write_report

        result.files = write_report(result, command=command, note=note)
    return result


def shard_of(key: str, n: int) -> int:
    """The shard (0..n-1) that trains the run with cache key ``key``: stable across processes and machines."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % n


def _cached_search(out: Path, bits: int, settings: dict[str, Any], measure: bool = True) -> Optional[dict]:
    """Search timings for one code length, measured once and cached under ``out/search``."""
    args = {"bits": int(bits), "n_database": settings["n_database"], "n_queries": settings["n_queries"],
            "k": settings["k"], "repeats": settings["repeats"]}
    digest = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:10]
    path = out / "search" / f"search-{bits}b-{digest}.json"
    if path.exists():
        return json.loads(path.read_text())
    if not measure:
        return None
    res = search_cost(**args)
    atomic_write_text(path, json.dumps(res, indent=1, sort_keys=True) + "\n")
    return res
