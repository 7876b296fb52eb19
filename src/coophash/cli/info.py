"""``coophash list`` (what is registered) and ``coophash demo`` (the main job on the bundled data)."""
from __future__ import annotations

from typing import Optional

import click

from coophash.cli.common import training_progress

__all__ = ["demo", "list_cmd"]


@click.command("list")
def list_cmd() -> None:
    """List methods, losses, backbones and datasets."""
    from coophash.data import list_datasets
    from coophash.losses import list_losses
    from coophash.methods import list_methods
    from coophash.nets import list_backbones

    click.echo("methods:   " + ", ".join(list_methods()))
    click.echo("losses:    " + ", ".join(list_losses()))
    click.echo("backbones: " + ", ".join(list_backbones()))
    click.echo("datasets:  " + ", ".join(list_datasets()))


@click.command()
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Training epochs (default: the demo's budget).")
@click.option("--out", default="runs", help="Folder of run folders.")
@click.option("--quick", is_flag=True, help="A tiny budget (seconds), for smoke tests.")
@click.option("--scarce/--no-scarce", default=True, show_default=True,
              help="Then DPSH beside CoopHash with 2% of the labels (each at its defaults).")
def demo(epochs: Optional[int], out: str, quick: bool, scarce: bool) -> None:
    """The main job: LSH floor, train the default method on bundled MNIST, evaluate, index, sample query; then
    the default supervised method beside CoopHash with 2% of the labels."""
    from coophash.config import TrainConfig
    from coophash.demo import run_demo

    progress = training_progress(TrainConfig(), quiet=False)
    try:
        run_demo(epochs=epochs, out=out, quick=quick, echo=click.echo, progress=progress, scarce=scarce)
    finally:
        progress.close()
