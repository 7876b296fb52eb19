"""CLI commands of fake-image regularised hashing (added to the `coophash` group on import).

``coophash gan`` trains stage 1 (a DCGAN on all training images of a dataset split) and writes the fakes
file, a sample grid and the loss curves beside its checkpoints.  Stage 2 is ``coophash train --method
fakereg --fakes FILE``; without ``--fakes`` the same command runs stage 1 first.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from coophash.cli import _build_config, _fail, _progress_bar, cli

__all__ = ["gan"]


def _echo_gan_progress() -> None:
    """Show the one-command path's GAN-stage log lines on stderr (once)."""
    logger = logging.getLogger("coophash.methods.fakereg")
    if not any(getattr(h, "_coophash_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[fakereg] %(message)s"))
        handler._coophash_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)


_echo_gan_progress()


@cli.command()
@click.option("--dataset", default=None, help="Dataset name (default mnist5k).")
@click.option("--image-size", type=int, default=None, help="Resize images to this side.")
@click.option("--channels", type=int, default=None, help="Convert images to this many channels.")
@click.option("--protocol", default=None, help="Protocol whose train split the GAN learns (default standard).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Use an existing manifest file.")
@click.option("--label-fraction", type=float, default=None,
              help="Labeled fraction of train (only a conditional GAN uses labels; unconditional: all images).")
@click.option("--seed", type=int, default=None, help="Run seed (also seeds the split, as in `train`).")
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--batch-size", type=int, default=None)
@click.option("--bits", type=int, default=None, help="Width of the diagnostic discriminator-feature code.")
@click.option("--latent-dim", type=int, default=None, help="Latent dimension (default 64).")
@click.option("--width", type=int, default=None, help="Channels of the finest hidden layer (default 32).")
@click.option("--conditional", is_flag=True, help="Class-conditional GAN (trains on labeled images only).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 2e-4, betas 0.5, 0.999).")
@click.option("--n-fakes", type=int, default=None, help="Fakes to write (default: as many as training images).")
@click.option("--fakes-dtype", type=click.Choice(["uint8", "float16"]), default=None)
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda (cuda:N for another GPU).")
@click.option("--threads", type=int, default=None, help="torch threads.")
@click.option("--out", default=None, help="Folder holding numbered run folders (default runs).")
@click.option("--resume", "resume", help="Continue a killed GAN run (number, name or folder).")
@click.option("--set", "sets", multiple=True, help="Override any config field: KEY=VALUE or FIELD.KEY=VALUE.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def gan(dataset: str | None, image_size: int | None, channels: int | None, protocol: str | None,
        manifest: str | None, label_fraction: float | None, seed: int | None, epochs: int,
        batch_size: int | None, bits: int | None, latent_dim: int | None, width: int | None,
        conditional: bool, lr: float | None, n_fakes: int | None, fakes_dtype: str | None,
        device: str | None, threads: int | None, out: str | None, resume: str | None,
        sets: tuple[str, ...], quiet: bool) -> None:
    """Stage 1 of fake-image regularised hashing: train a DCGAN, write fakes, a sample grid and loss curves.

    The run folder gets fakes.safetensors (for `coophash train --method fakereg --fakes FILE`),
    samples.png, losses.png and metrics.jsonl (per-epoch discriminator and generator losses).
    """
    from coophash.config import TrainConfig
    from coophash.methods.gan import FAKES_FILE, gan_config, train_gan
    from coophash.train import runs

    if resume:
        try:
            run_dir = runs.find_run(out or "runs", resume)
            gcfg = TrainConfig.from_dict(runs.read_config(run_dir / runs.CONFIG), str(run_dir))
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        if gcfg.method != "gan":
            _fail(f"{run_dir} is a {gcfg.method!r} run, not a GAN run")
    else:
        flags: dict[str, Any] = {
            "dataset": dataset, "image_size": image_size, "channels": channels, "protocol": protocol,
            "manifest": manifest, "label_fraction": label_fraction, "seed": seed, "batch_size": batch_size,
            "bits": bits, "device": device, "threads": threads, "out": out,
        }
        base = _build_config(None, flags, sets)
        gargs = dict(base.method_args)
        for key, value in (("gan_latent_dim", latent_dim), ("gan_width", width), ("gan_lr", lr),
                           ("n_fakes", n_fakes), ("gan_fakes_dtype", fakes_dtype)):
            if value is not None:
                gargs[key] = value
        if conditional:
            gargs["gan_conditional"] = True
        try:
            gcfg = gan_config(base, gargs, epochs)
        except (ValueError, TypeError) as exc:
            _fail(str(exc))
        run_dir = runs.create_run_dir(gcfg.out, f"gan-{gcfg.dataset}-s{gcfg.seed}")
    click.echo(f"run folder: {run_dir}")
    spe = max(1, -(-_n_train_hint(gcfg) // gcfg.batch_size)) if not quiet else 1
    bar = None if quiet else _progress_bar(gcfg.epochs * spe, "train gan")

    def progress(epoch: int, step: int, values: dict[str, float]) -> None:
        if bar is not None:
            bar.n = epoch * spe + step
            bar.set_postfix(D=f"{values.get('discriminator/total', float('nan')):.3f}",
                            G=f"{values.get('generator/total', float('nan')):.3f}", epoch=epoch + 1, refresh=False)
            bar.refresh()

    try:
        result = train_gan(gcfg, run_dir, resume=bool(resume), progress=progress)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"wrote {result.n_fakes} fakes to {result.fakes}")
    click.echo(f"sample grid: {result.samples}   loss curves: {result.losses}")
    click.echo(f"next: coophash train --method fakereg --fakes {Path(run_dir) / FAKES_FILE} "
               f"--dataset {gcfg.dataset} --seed {gcfg.seed} --loss dpsh")


def _n_train_hint(cfg: Any) -> int:
    """Training-set size of a config (for the progress bar only)."""
    from coophash.train.trainer import prepare_data

    _ds, mf = prepare_data(cfg)
    return len(mf.train)
