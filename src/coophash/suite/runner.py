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
from coophash.suite.config import EXPERIMENTS, Suite, load_suite
from coophash.suite.experiments import Plan, PlannedRun, extra_evals_for, plan_suite
from coophash.suite.report import write_report
from coophash.suite.search import search_cost
from coophash.train.progress import ProgressFn
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
    on_start: Optional[Callable[[TrainConfig, int, int], Optional[ProgressFn]]] = None,
    on_done: Optional[Callable[[TrainConfig, dict, bool, int, int], None]] = None,
    command: str = "",
    note: str = "",
    report: bool = True,
    shard: Optional[tuple[int, int]] = None,
    on_error: Optional[Callable[[TrainConfig, BaseException], None]] = None,
) -> SuiteRun:
    """Train what the suite (or the experiments in ``only``) needs and write the report from every cached result.

    ``on_start(cfg, i, n)`` (which may return the progress callback of the run's training) / ``on_done(cfg,
    result, cached, i, n)`` report progress (i counts from 1 over the ``n`` selected runs).  A method whose
    name is not registered is skipped with a warning in the report; a registered method that fails raises,
    unless ``on_error(cfg, exc)`` is given (then the suite goes on and the failed run stays untrained).
    ``shard=(i, n)`` trains only the runs whose key hashes to ``i`` modulo ``n``, so that ``n`` processes
    sharing one output folder (one per GPU or core) split the work; a run that a shard's plan cannot place
    yet (a ``top`` grid whose ranking needs other shards' results) is left to a later unsharded call, which
    also trains anything a shard missed.
    """
    _check_shard(shard)
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    out = Path(out) if out else Path("bench") / suite.name
    only = list(only) if only else None
    if only:
        _check_only(suite, only)
    t0 = time.perf_counter()
    grid = _Grid(suite, out, seeds, device, only, shard, on_start, on_done)
    out.mkdir(parents=True, exist_ok=True)
    plan = grid.train_all(on_error)
    records = {}
    for r in plan.runs:
        rec = cached_record(out, r)
        if rec is not None:
            records[r.key] = rec
    result = SuiteRun(plan=plan, records=records, search=_search_results(suite, out, only, shard), out=out,
                      report_dir=out / "report", trained=grid.trained, seconds=time.perf_counter() - t0)
    if report:
        result.files = write_report(result, command=command, note=note)
    return result


def _check_shard(shard: Optional[tuple[int, int]]) -> None:
    """``shard=(i, n)`` needs 0 <= i < n."""
    if shard is not None:
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"--shard: expected I/N with 0 <= I < N, got {i}/{n}")


def _check_only(suite: Suite, only: list[str]) -> None:
    """``only`` must name experiment kinds that the suite has."""
    bad = [k for k in only if k not in EXPERIMENTS]
    if bad:
        raise ValueError(f"--only: unknown experiment kind(s) {bad}; known: {', '.join(EXPERIMENTS)}")
    missing = [k for k in only if k not in suite.experiments]
    if missing:
        raise ValueError(f"--only: suite {suite.name!r} has no experiment(s) {missing}; "
                         f"it has {', '.join(suite.experiments)}")


class _Grid:
    """Trains a suite's selected runs of this shard through :func:`coophash.bench.run_grid`, counting them."""

    def __init__(self, suite: Suite, out: Path, seeds: Optional[Sequence[int]], device: Optional[str],
                 only: Optional[list[str]], shard: Optional[tuple[int, int]],
                 on_start: Optional[Callable[[TrainConfig, int, int], Optional[ProgressFn]]],
                 on_done: Optional[Callable[[TrainConfig, dict, bool, int, int], None]]) -> None:
        self.suite, self.out, self.seeds, self.device, self.only, self.shard = suite, out, seeds, device, only, shard
        self.on_start, self.on_done = on_start, on_done
        self.i = self.trained = self.n = 0

    def plan(self) -> Plan:
        """The suite's plan with the results cached so far (``top`` grids rank on them)."""
        return plan_suite(self.suite, seeds=self.seeds, device=self.device, out=str(self.out),
                          lookup=lambda run: cached_record(self.out, run))

    def mine(self, run: PlannedRun) -> bool:
        """Whether this shard (or, unsharded, this process) trains ``run``."""
        return self.shard is None or shard_of(run.key, self.shard[1]) == self.shard[0]

    def started(self, cfg: TrainConfig) -> Optional[ProgressFn]:
        """A config starts training: count it, and ask ``on_start`` for its progress callback."""
        self.trained += 1
        return self.on_start(cfg, self.i + 1, self.n) if self.on_start else None

    def done(self, cfg: TrainConfig, rec: dict, cached: bool) -> None:
        """A config finished (trained or found cached)."""
        self.i += 1
        if self.on_done:
            self.on_done(cfg, rec, cached, self.i, self.n)

    def train_all(self, on_error: Optional[Callable[[TrainConfig, BaseException], None]]) -> Plan:
        """Train every selected run of this shard; the final plan (grown by ``top`` grids as results arrive)."""
        plan = self.plan()
        for s in plan.skipped:
            log.warning("%s: %s", s["name"], s["reason"])
        self.n = sum(self.mine(r) for r in plan.selected(self.only))
        finished: set[str] = set()
        while True:  # a grid ranking methods by results ("top") grows the plan once those results exist
            todo = [r for r in plan.selected(self.only) if r.key not in finished and self.mine(r)]
            if not todo:
                return plan
            run_grid([r.cfg for r in todo], self.out, on_done=self.done, extra_evals=extra_evals_for(plan),
                     on_start=self.started, on_error=on_error)
            finished.update(r.key for r in todo)
            plan = self.plan()
            self.n = self.i + sum(r.key not in finished and self.mine(r) for r in plan.selected(self.only))


def _search_results(suite: Suite, out: Path, only: Optional[list[str]], shard: Optional[tuple[int, int]]) -> list[dict]:
    """Search timings of the cost experiment: measured (once) by an unsharded run that includes it, else cached."""
    if "cost" not in suite.experiments:
        return []
    settings = suite.experiments["cost"]["search"]
    if (not only or "cost" in only) and shard is None:
        return [_cached_search(out, b, settings) for b in settings["bits"]]
    return [s for b in settings["bits"] if (s := _cached_search(out, b, settings, measure=False))]


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
