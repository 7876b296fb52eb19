"""``coophash bench SUITE``: run a named experiment suite resumably and write its report (added to `coophash`)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from coophash.cli import cli

__all__ = ["bench"]


def _int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{what}: expected comma-separated integers, got {text!r}") from None


@cli.command()
@click.argument("suite")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default bench/<suite name>); reruns continue from its cache.")
@click.option("--device", default=None, help="torch device for every run, e.g. cpu or cuda (default: the suite's).")
@click.option("--seeds", default=None, help="Comma-separated seeds instead of the suite's, e.g. 0,1.")
@click.option("--only", default=None, help="Comma-separated experiment kinds to run, e.g. main,pr "
              "(the report still shows everything cached).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's).")
@click.option("--shard", default=None, metavar="I/N",
              help="Train only shard I of N (runs split by key): N processes on one --out folder share the work; "
                   "no report (run once more without --shard to train leftovers and write it).")
@click.option("--note", default="", help="Free text for the report, under the command (e.g. where the runs trained).")
@click.option("--keep-going", is_flag=True, help="A run that fails is reported and skipped; the others go on.")
@click.option("--dry-run", is_flag=True, help="List the planned runs (and which are cached), train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench(suite: str, out: Optional[str], device: Optional[str], seeds: Optional[str], only: Optional[str],
          threads: Optional[int], shard: Optional[str], note: str, keep_going: bool, dry_run: bool, quiet: bool) -> None:
    """Run experiment suite SUITE (a shipped name: smoke, paper; or a suite YAML file) and write its report."""
    import torch  # OMP_WAIT_POLICY=PASSIVE is set by coophash.cli before torch loads

    from coophash.suite import SuiteError, load_suite, run_suite
    from coophash.suite.experiments import plan_suite
    from coophash.suite.runner import cached_record, shard_of

    try:
        s = load_suite(suite)
    except SuiteError as exc:
        raise click.ClickException(str(exc)) from None
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out) if out else Path("bench") / s.name
    seed_list = _int_list(seeds, "--seeds")
    only_list = [x.strip() for x in only.split(",") if x.strip()] if only else None
    shard_pair = _shard(shard)
    command = "coophash bench " + " ".join(_without_note(sys.argv[2:]) if len(sys.argv) > 2 and sys.argv[1] == "bench"
                                           else [suite])

    if dry_run:
        plan = plan_suite(s, seeds=seed_list, device=device, out=str(out_dir),
                          lookup=lambda r: cached_record(out_dir, r))
        for sk in plan.skipped:
            click.echo(f"SKIPPED {sk['name']}: {sk['reason']}", err=True)
        for p in plan.pending:
            click.echo(f"PENDING {p}", err=True)
        sel = plan.selected(only_list)
        if shard_pair is not None:
            sel = [r for r in sel if shard_of(r.key, shard_pair[1]) == shard_pair[0]]
        n_cached = 0
        for r in sel:
            cached = cached_record(out_dir, r) is not None
            n_cached += cached
            c = r.cfg
            click.echo(f"{'cached ' if cached else 'to run '} {r.method:14s} {c.bits:3d}b lf={c.label_fraction:<5g} "
                       f"seed={c.seed} protocol={c.protocol:8s} [{', '.join(sorted(r.experiments))}]")
        click.echo(f"{len(sel)} runs, {n_cached} cached, {len(sel) - n_cached} to train; output {out_dir}")
        return

    bars: dict[str, Any] = {}
    t0 = time.time()

    def on_start(cfg: Any, trainer: Any, i: int, n: int) -> None:
        if quiet:
            return
        from tqdm.auto import tqdm

        spe = trainer.schedule.steps_per_epoch
        bar = tqdm(total=cfg.epochs * spe, desc=f"[{i}/{n}] {_label(cfg)}", unit="step", dynamic_ncols=True,
                   file=sys.stderr, leave=False)
        bars["run"] = bar

        def progress(epoch: int, step: int, values: dict[str, float]) -> None:
            bar.n = epoch * spe + step
            if step == spe:
                bar.set_postfix_str("evaluating", refresh=False)
            bar.refresh()

        trainer.progress = progress

    def on_done(cfg: Any, rec: dict, cached: bool, i: int, n: int) -> None:
        bar = bars.pop("run", None)
        if bar is not None:
            bar.close()
        if not cached:
            click.echo(f"[{time.time() - t0:6.0f}s] {i}/{n} {_label(cfg)} mAP@all={rec['map@all']:.4f} "
                       f"({rec['seconds_per_epoch']:.1f} s/epoch)", err=True)

    failed: list[str] = []

    def on_error(cfg: Any, exc: BaseException) -> None:
        bar = bars.pop("run", None)
        if bar is not None:
            bar.close()
        failed.append(_label(cfg))
        click.echo(f"FAILED {_label(cfg)}: {type(exc).__name__}: {exc}", err=True)

    try:
        result = run_suite(s, out=out_dir, seeds=seed_list, only=only_list, device=device, on_start=on_start,
                           on_done=on_done, command=command, note=note, report=shard_pair is None, shard=shard_pair,
                           on_error=on_error if keep_going else None)
    except (SuiteError, ValueError) as exc:
        if isinstance(exc, SuiteError) or str(exc).startswith("--only"):
            raise click.ClickException(str(exc)) from None
        raise
    for sk in result.plan.skipped:
        click.echo(f"WARNING: {sk['name']} skipped: {sk['reason']}", err=True)
    click.echo(f"{result.trained} runs trained, {len(result.records)} of {len(result.plan.runs)} results cached; "
               f"{time.time() - t0:.0f} s")
    if failed:
        click.echo(f"{len(failed)} run(s) failed: {'; '.join(failed)}", err=True)
    if shard_pair is not None:
        click.echo(f"shard {shard_pair[0]}/{shard_pair[1]} done; run without --shard for the leftovers and the report")
        if failed:
            sys.exit(1)
        return
    click.echo(f"report: {result.files['report']}")
    click.echo(f"results: {result.files['results']}")
    if "retrievals" in result.files:
        click.echo(f"sample retrievals: {result.files['retrievals']}")
    if failed:
        sys.exit(1)


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
    name = cfg.method if cfg.method != "supervised" else cfg.loss
    if cfg.method == "fakereg":
        name = f"fakereg-{cfg.loss}"
    return f"{name} {cfg.bits}b lf={cfg.label_fraction:g} s{cfg.seed} {cfg.protocol}"
