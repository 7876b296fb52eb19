"""``coophash eval``: a run's retrieval metrics on its query (or validation) split, as JSON and a PR-curve plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from coophash.cli.common import DEVICE, fail, format_metrics, load_method

__all__ = ["eval_cmd"]


class _Cutoff(click.ParamType):
    """``--R``: ``all`` (None) or a positive integer."""

    name = "all|N"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        """The checked value (a usage error, exit status 2, otherwise)."""
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"expected 'all' or a positive integer, got {value!r}", param, ctx)
        if n < 1:
            self.fail(f"expected 'all' or a positive integer, got {value!r}", param, ctx)
        return n


class _PositiveInts(click.ParamType):
    """A comma-separated list of positive integers (``--topk 100,1000``)."""

    name = "K,K,..."

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        """The checked value (a usage error, exit status 2, otherwise)."""
        if isinstance(value, tuple):
            return value
        try:
            ks = tuple(int(k) for k in str(value).split(",") if k.strip())
        except ValueError:
            self.fail(f"expected comma-separated positive integers, got {value!r}", param, ctx)
        if any(k < 1 for k in ks):
            self.fail(f"expected comma-separated positive integers, got {value!r}", param, ctx)
        return ks


@click.command("eval")
@click.argument("run")
@click.option("--which", type=click.Choice(["best", "last"]), default="best")
@click.option("--split", type=click.Choice(["query", "validation"]), default="query",
              help="Query split of the manifest.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Another manifest (default: the run's).")
@click.option("--R", "R", type=_Cutoff(), default="all", help="mAP cut-off: all or a positive integer.")
@click.option("--topk", type=_PositiveInts(), default="100,1000", help="Comma-separated K for precision/recall@K.")
@click.option("--radius", type=click.IntRange(min=0), default=2, help="Hamming radius of precision@r.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Folder for metrics.json and pr_curve.png.")
@click.option("--device", type=DEVICE, default="cpu")
@click.option("--root", default="runs", help="Folder of run folders.")
def eval_cmd(run: str, which: str, split: str, manifest: Optional[str], R: Optional[int], topk: tuple[int, ...],
             radius: int, out: Optional[str], device: str, root: str) -> None:
    """Evaluate a run or checkpoint: mAP@R, P@K, R@K, P@r<=2 and the PR curve (JSON + PNG)."""
    from coophash.data import Manifest, load_dataset
    from coophash.metrics import evaluate
    from coophash.train import runs
    from coophash.train.encoding import encode_indices

    cfg, method = load_method(run, which, device, root)
    run_dir, _ = runs.resolve_run(run, root, which)
    try:
        mf = Manifest.load(manifest or run_dir / runs.MANIFEST)
        ds = load_dataset(cfg.dataset, image_size=cfg.image_size, channels=cfg.channels, **cfg.dataset_args)
        mf.check(ds)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    q_idx = getattr(mf, split)
    q = encode_indices(method.encode, ds, q_idx, method.device)
    db = encode_indices(method.encode, ds, mf.database, method.device)
    res = evaluate(q, db, ds.labels[q_idx].numpy(), ds.labels[mf.database].numpy(), cfg.bits, R=R,
                   topk=topk, radius=radius)
    click.echo(format_metrics(res))
    _write(res, Path(out) if out else run_dir / "eval", f"{cfg.method}/{cfg.loss} {cfg.bits} bits")


def _write(res: dict, out_dir: Path, label: str) -> None:
    """metrics.json, pr_curve.json and pr_curve.png in ``out_dir``."""
    from coophash.plots import plot_pr_curve
    from coophash.utils.io import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(res, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out_dir / "pr_curve.json", json.dumps(res["pr_curve"], indent=2) + "\n")
    plot_pr_curve({label: res["pr_curve"]}, out_dir / "pr_curve.png")
    click.echo(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'pr_curve.json'}, {out_dir / 'pr_curve.png'}")
