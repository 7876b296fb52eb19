"""``coophash bench SUITE``: run a named experiment suite resumably and write its report."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from coophash.cli.common import DEVICE, StageBars, usage_fail

__all__ = ["bench"]


@click.command()
@click.argument("suite")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default bench/<suite name>); reruns continue from its cache.")
@click.option("--device", type=DEVICE, default=None,
              help="torch device for every run, e.g. cpu or cuda (default: the suite's).")
@click.option("--seeds", default=None, help="Comma-separated seeds instead of the suite's, e.g. 0,1.")
@click.option("--only", default=None, help="Comma-separated experiment kinds to run, e.g. main,pr "
              "(the report still shows everything cached).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
@click.option("--shard", default=None, metavar="I/N",
              help="Train only shard I of N (runs split by key): N processes on one --out folder share the work; "
                   "no report (run once more without --shard to train leftovers and write it).")
@click.option("--note", default="", help="Free text for the report, under the command (e.g. where the runs trained).")
@click.option("--keep-going", is_flag=True, help="A run that fails is reported and skipped; the others go on.")
@click.option("--dry-run", is_flag=True, help="List the planned runs (and which are cached), train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench(suite: str, out: Optional[str], device: Optional[str], seeds: Optional[str], only: Optional[str],
          threads: Optional[int], shard: Optional[str], note: str, keep_going: bool, dry_run: bool,
          quiet: bool) -> None:
    """Run experiment suite SUITE (a shipped name: smoke, paper; or a suite YAML file) and write its report."""
    import torch  # coophash.cli.main sets OMP_WAIT_POLICY=PASSIVE before this import

    from coophash.suite import SuiteError, load_suite, run_suite

    try:
        s = load_suite(suite)
    except SuiteError as exc:  # a damaged suite file is a runtime error, an unknown suite name a usage error
        if Path(suite).is_file():
            raise click.ClickException(str(exc)) from None
        usage_fail(str(exc), "SUITE")
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out) if out else Path("bench") / s.name
    seed_list = _int_list(seeds, "--seeds")
    only_list = [x.strip() for x in only.split(",") if x.strip()] if only else None
    shard_pair = _shard(shard)
    if dry_run:
        _dry_run(s, out_dir, seed_list, device, only_list, shard_pair)
        return
    command = "coophash bench " + " ".join(_without_note(sys.argv[2:]) if len(sys.argv) > 2 and sys.argv[1] == "bench"
                                           else [suite])
    report = _BenchReport(quiet)
    try:
        result = run_suite(s, out=out_dir, seeds=seed_list, only=only_list, device=device, on_start=report.start,
                           on_done=report.done, command=command, note=note, report=shard_pair is None,
                           shard=shard_pair, on_error=report.error if keep_going else None)
    except (SuiteError, ValueError) as exc:
        if isinstance(exc, SuiteError) or str(exc).startswith("--only"):
            raise click.ClickException(str(exc)) from None
        raise
    finally:
        report.close()
    _summary(result, report, shard_pair)


def _dry_run(s: Any, out_dir: Path, seeds: Optional[list[int]], device: Optional[str],
             only: Optional[list[str]], shard: Optional[tuple[int, int]]) -> None:
    """List the planned runs (cached or to run) on stdout, skipped and pending experiments on stderr."""
    from coophash.suite.experiments import plan_suite
    from coophash.suite.runner import cached_record, shard_of

    plan = plan_suite(s, seeds=seeds, device=device, out=str(out_dir), lookup=lambda r: cached_record(out_dir, r))
    for sk in plan.skipped:
        click.echo(f"SKIPPED {sk['name']}: {sk['reason']}", err=True)
    for p in plan.pending:
        click.echo(f"PENDING {p}", err=True)
    sel = plan.selected(only)
    if shard is not None:
        sel = [r for r in sel if shard_of(r.key, shard[1]) == shard[0]]
    n_cached = 0
    for r in sel:
        cached = cached_record(out_dir, r) is not None
        n_cached += cached
        c = r.cfg
        click.echo(f"{'cached ' if cached else 'to run '} {r.method:14s} {c.bits:3d}b lf={c.label_fraction:<5g} "
                   f"seed={c.seed} protocol={c.protocol:8s} [{', '.join(sorted(r.experiments))}]")
    click.echo(f"{len(sel)} runs, {n_cached} cached, {len(sel) - n_cached} to train; output {out_dir}")


class _BenchReport:
    """The suite's callbacks: a progress bar per training run, a line per finished or failed run (stderr)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.time()
        self.failed: list[str] = []
        self.bars: Optional[StageBars] = None

    def start(self, cfg: Any, i: int, n: int) -> Optional[StageBars]:
        """A run starts training: the progress callback of its training (None when quiet)."""
        self.close()
        if self.quiet:
            return None

        def describe(p: Any) -> str:
            return f"[{i}/{n}] {_label(cfg)}" + ("" if p.stage == cfg.method else f" ({p.stage})")

        def postfix(p: Any) -> Optional[str]:
            return "evaluating" if p.step == p.steps_per_epoch else None

        self.bars = StageBars(describe, postfix, leave=False)
        return self.bars

    def done(self, cfg: Any, rec: dict, cached: bool, i: int, n: int) -> None:
        """A run finished (or was found in the cache)."""
        self.close()
        if not cached:
            click.echo(f"[{time.time() - self.t0:6.0f}s] {i}/{n} {_label(cfg)} mAP@all={rec['map@all']:.4f} "
                       f"({rec['seconds_per_epoch']:.1f} s/epoch)", err=True)

    def error(self, cfg: Any, exc: BaseException) -> None:
        """A run failed (with --keep-going): report it, the suite goes on."""
        self.close()
        self.failed.append(_label(cfg))
        click.echo(f"FAILED {_label(cfg)}: {type(exc).__name__}: {exc}", err=True)

    def close(self) -> None:
        """Close the current run's bar."""
        if self.bars is not None:
            self.bars.close()
            self.bars = None


def _summary(result: Any, report: _BenchReport, shard: Optional[tuple[int, int]]) -> None:
    """What was trained and where the report is; exit status 1 when a run failed."""
    for sk in result.plan.skipped:
        click.echo(f"WARNING: {sk['name']} skipped: {sk['reason']}", err=True)
    click.echo(f"{result.trained} runs trained, {len(result.records)} of {len(result.plan.runs)} results cached; "
               f"{time.time() - report.t0:.0f} s")
    failed = report.failed
    if failed:
        click.echo(f"{len(failed)} run(s) failed: {'; '.join(failed)}", err=True)
    if shard is not None:
        click.echo(f"shard {shard[0]}/{shard[1]} done; run without --shard for the leftovers and the report")
    else:
        click.echo(f"report: {result.files['report']}")
        click.echo(f"results: {result.files['results']}")
        if "retrievals" in result.files:
            click.echo(f"sample retrievals: {result.files['retrievals']}")
    if failed:
        sys.exit(1)


def _int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    """Comma-separated integers (None when empty)."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=what) from None


def _without_note(argv: list[str]) -> list[str]:
    """The command line without ``--note TEXT`` (the note is printed on its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def _shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``I/N`` → (I, N), checked."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 0/4, got {text!r}", param_hint="--shard") from None
    if n < 1 or not 0 <= i < n:
        raise click.BadParameter(f"expected 0 <= I < N, got {text!r}", param_hint="--shard")
    return i, n


def _label(cfg: Any) -> str:
    """Short name of a suite run for progress lines."""
    name = cfg.method if cfg.method != "supervised" else cfg.loss
    if cfg.method == "fakereg":
        name = f"fakereg-{cfg.loss}"
    return f"{name} {cfg.bits}b lf={cfg.label_fraction:g} s{cfg.seed} {cfg.protocol}"
