"""``coophash gan``: stage 1 of fake-image regularised hashing on its own.

It trains a DCGAN on all training images of a dataset split and writes the fakes file, a sample grid and
the loss curves beside its checkpoints.  Stage 2 is ``coophash train --method fakereg --fakes FILE``;
without ``--fakes`` that command runs stage 1 first (the pipeline's [gan → fakereg] recipe).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from coophash.cli.common import StageBars, build_config, fail, gan_postfix, read_run_config

__all__ = ["gan"]


@click.command()
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
def gan(dataset: Optional[str], image_size: Optional[int], channels: Optional[int], protocol: Optional[str],
        manifest: Optional[str], label_fraction: Optional[float], seed: Optional[int], epochs: int,
        batch_size: Optional[int], bits: Optional[int], latent_dim: Optional[int], width: Optional[int],
        conditional: bool, lr: Optional[float], n_fakes: Optional[int], fakes_dtype: Optional[str],
        device: Optional[str], threads: Optional[int], out: Optional[str], resume: Optional[str],
        sets: tuple[str, ...], quiet: bool) -> None:
    """Stage 1 of fake-image regularised hashing: train a DCGAN, write fakes, a sample grid and loss curves.

    The run folder gets fakes.safetensors (for `coophash train --method fakereg --fakes FILE`),
    samples.png, losses.png and metrics.jsonl (per-epoch discriminator and generator losses).
    """
    from coophash.pipeline.gan import FAKES_FILE, gan_config, train_gan
    from coophash.train import runs

    if resume:
        gcfg, run_dir = _resumed(resume, out)
    else:
        flags: dict[str, Any] = {
            "dataset": dataset, "image_size": image_size, "channels": channels, "protocol": protocol,
            "manifest": manifest, "label_fraction": label_fraction, "seed": seed, "batch_size": batch_size,
            "bits": bits, "device": device, "threads": threads, "out": out,
        }
        base = build_config(None, flags, sets)
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
            fail(str(exc))
        run_dir = runs.new_run_dir(gcfg)
    click.echo(f"run folder: {run_dir}")
    bars = None if quiet else StageBars(lambda p: "train gan", gan_postfix)
    try:
        result = train_gan(gcfg, run_dir, progress=bars)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    finally:
        if bars is not None:
            bars.close()
    click.echo(f"wrote {result.n_fakes} fakes to {result.fakes}")
    click.echo(f"sample grid: {result.samples}   loss curves: {result.losses}")
    click.echo(f"next: coophash train --method fakereg --fakes {Path(run_dir) / FAKES_FILE} "
               f"--dataset {gcfg.dataset} --seed {gcfg.seed} --loss dpsh")


def _resumed(resume: str, out: Optional[str]) -> tuple[Any, Path]:
    """(config, folder) of the GAN run to continue (its last checkpoint is picked up by the GAN stage)."""
    from coophash.train import runs

    try:
        run_dir = runs.resolve_run(resume, out or "runs")[0]
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    gcfg = read_run_config(run_dir)
    if gcfg.method != "gan":
        fail(f"{run_dir} is a {gcfg.method!r} run, not a GAN run")
    return gcfg, run_dir
