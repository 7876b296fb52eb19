"""``coophash train``: a config from file + flags + ``--set`` + method options, trained through the pipeline."""
from __future__ import annotations

from typing import Any, Optional

import click

from coophash.cli.common import (
    build_config,
    fail,
    format_metrics,
    method_args_from,
    method_options,
    read_run_config,
    training_progress,
)

__all__ = ["train"]


@click.command()
@method_options
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--method", help="Hashing method (see `coophash list`).")
@click.option("--loss", help="Supervised hashing loss.")
@click.option("--backbone", help="Backbone network.")
@click.option("--bits", type=int, help="Code length K.")
@click.option("--dataset", help="Dataset name.")
@click.option("--protocol", help="Protocol name (standard, unseen, cifar10, cifar10-1, cifar10-2).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Use an existing manifest file.")
@click.option("--label-fraction", type=float, help="Fraction of train items that keep their labels.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@click.option("--device", help="torch device, e.g. cpu or cuda (cuda:N for another GPU).")
@click.option("--threads", type=int, help="torch threads.")
@click.option("--out", help="Folder holding numbered run folders (default runs).")
@click.option("--resume", "resume", help="Continue a killed run (number, name or folder).")
@click.option("--set", "sets", multiple=True, help="Override any config field: KEY=VALUE or FIELD.KEY=VALUE.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config: Optional[str], method: Optional[str], loss: Optional[str], backbone: Optional[str],
          bits: Optional[int], dataset: Optional[str], protocol: Optional[str], manifest: Optional[str],
          label_fraction: Optional[float], epochs: Optional[int], batch_size: Optional[int], lr: Optional[float],
          seed: Optional[int], device: Optional[str], threads: Optional[int], out: Optional[str],
          resume: Optional[str], sets: tuple[str, ...], quiet: bool, **method_opts: Any) -> None:
    """Train a hashing method; writes a numbered run folder.

    Method hyperparameters have their own options (below) or go through --set method_args.NAME=VALUE.
    """
    import coophash.pipeline as pipeline
    from coophash.train import runs

    if resume:
        run_dir = _resume_dir(resume, out)
        cfg = read_run_config(run_dir)
        if epochs is not None:
            try:
                cfg = cfg.replace(epochs=epochs)
            except ValueError as exc:
                fail(str(exc))
    else:
        flags = dict(method=method, loss=loss, backbone=backbone, bits=bits, dataset=dataset, protocol=protocol,
                     manifest=manifest, label_fraction=label_fraction, epochs=epochs, batch_size=batch_size,
                     lr=lr, seed=seed, device=device, threads=threads, out=out)
        cfg = build_config(config, flags, sets, method_args_from(method_opts))
        run_dir = runs.new_run_dir(cfg)
    click.echo(f"run folder: {run_dir}")
    progress = training_progress(cfg, quiet)
    try:
        res = pipeline.train(cfg, run_dir, resume=bool(resume), progress=progress).results
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    finally:
        progress.close()
    click.echo(format_metrics(res))


def _resume_dir(resume: str, out: Optional[str]) -> Any:
    """The folder of the run to continue (number, name or folder; numbers and names under ``--out``)."""
    from coophash.train import runs

    try:
        return runs.resolve_run(resume, out or "runs")[0]
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
