"""``coophash sample RUN``: a grid of CoopHash's generated and revised contrastive pairs per class."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from coophash.cli.common import DEVICE, fail, load_method

__all__ = ["sample"]


@click.command("sample")
@click.argument("run")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write (default: RUN/samples.png); a .json sidecar describes the tiles.")
@click.option("--per-class", type=click.IntRange(min=1), default=4, show_default=True,
              help="Contrastive pairs per class.")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Langevin steps (default: the run's langevin_steps).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of z, y- and the Langevin noise.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best")
@click.option("--device", type=DEVICE, default="cpu")
@click.option("--root", default="runs", help="Folder of run folders.")
def sample(run: str, out: Optional[str], per_class: int, steps: Optional[int], seed: int, which: str,
           device: str, root: str) -> None:
    """Write a PNG grid of generated and revised contrastive pairs per class of a CoopHash run.

    One row per class c; per latent z four tiles: G(z, c), its revision, G(z, y-), its revision (y- != c).
    """
    from coophash.methods.coophash import CoopHash
    from coophash.methods.coophash_sample import write_sample
    from coophash.train import runs

    cfg, method = load_method(run, which, device, root)
    if not isinstance(method, CoopHash):
        fail(f"run {run} was trained with method {cfg.method!r}; `sample` needs coophash")
    run_dir, _ = runs.resolve_run(run, root, which)
    target = Path(out) if out else run_dir / "samples.png"
    png, side = write_sample(method, target, per_class=per_class, seed=seed, steps=steps)
    click.echo(f"wrote {png} ({method.info.n_classes} classes x {per_class} pairs: generated+, revised+, "
               f"generated-, revised-) and {side}")
