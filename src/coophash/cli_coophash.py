"""CLI commands of CoopHash (added to the `coophash` group on import): ``coophash sample RUN``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from coophash.cli import cli

__all__ = ["sample"]


@cli.command("sample")
@click.argument("run")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write (default: RUN/samples.png); a .json sidecar describes the tiles.")
@click.option("--per-class", type=int, default=4, show_default=True, help="Contrastive pairs per class.")
@click.option("--steps", type=int, default=None, help="Langevin steps (default: the run's langevin_steps).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of z, y- and the Langevin noise.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best")
@click.option("--device", default="cpu")
@click.option("--root", default="runs", help="Folder of run folders.")
def sample(run: str, out: Optional[str], per_class: int, steps: Optional[int], seed: int, which: str,
           device: str, root: str) -> None:
    """Write a PNG grid of generated and revised contrastive pairs per class of a CoopHash run.

    One row per class c; per latent z four tiles: G(z, c), its revision, G(z, y-), its revision (y- != c).
    """
    from coophash.api import load_run
    from coophash.methods.coophash import CoopHash
    from coophash.methods.coophash_sample import write_sample
    from coophash.train import runs

    try:
        cfg, method = load_run(run, which=which, device=device, root=root)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc))
    if not isinstance(method, CoopHash):
        raise click.ClickException(f"run {run} was trained with method {cfg.method!r}; `sample` needs coophash")
    if per_class < 1:
        raise click.ClickException("--per-class must be >= 1")
    p = Path(run)
    run_dir = p.parent if p.is_file() else (p if p.is_dir() else runs.find_run(root, run))
    target = Path(out) if out else run_dir / "samples.png"
    png, side = write_sample(method, target, per_class=per_class, seed=seed, steps=steps)
    click.echo(f"wrote {png} ({method.info.n_classes} classes x {per_class} pairs: generated+, revised+, "
               f"generated-, revised-) and {side}")
