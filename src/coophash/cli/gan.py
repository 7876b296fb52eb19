"""``coophash gan``: stage 1 of fake-image regularised hashing on its own.

It trains a DCGAN on all training images of a dataset split and writes the fakes file, a sample grid and
the loss curves beside its checkpoints.  Stage 2 is ``coophash train --method fakereg --fakes FILE``;
without ``--fakes`` that command runs stage 1 first (the pipeline's [gan → fakereg] recipe).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from coophash.cli.common import StageBars, build_config, fail, gan_postfix, parse_sets, run_options

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
@click.option("--epochs", type=int, default=None, help="Epochs to train [default: 15].")
@click.option("--batch-size", type=int, default=None)
@click.option("--bits", type=int, default=None, help="Width of the diagnostic discriminator-feature code.")
@click.option("--latent-dim", type=int, default=None, help="Latent dimension (default 64).")
@click.option("--width", type=int, default=None, help="Channels of the finest hidden layer (default 32).")
@click.option("--conditional", is_flag=True, help="Class-conditional GAN (trains on labeled images only).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 2e-4, betas 0.5, 0.999).")
@click.option("--n-fakes", type=int, default=None, help="Fakes to write (default: as many as training images).")
@click.option("--fakes-dtype", type=click.Choice(["uint8", "float16"]), default=None)
@click.option("--no-quality", is_flag=True,
              help="Skip the judge (a classifier trained on the real labeled images) that measures the fakes.")
@click.option("--judge-epochs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Epochs of the judge (trained once per GAN folder, in its judge/ subfolder).")
@run_options("Continue a killed GAN run (number, name or folder) with its own config: other options "
             "given must match it.")
def gan(dataset: Optional[str], image_size: Optional[int], channels: Optional[int], protocol: Optional[str],
        manifest: Optional[str], label_fraction: Optional[float], seed: Optional[int], epochs: Optional[int],
        batch_size: Optional[int], bits: Optional[int], latent_dim: Optional[int], width: Optional[int],
        conditional: bool, lr: Optional[float], n_fakes: Optional[int], fakes_dtype: Optional[str],
        no_quality: bool, judge_epochs: int, device: Optional[str], threads: Optional[int], out: Optional[str],
        resume: Optional[str],
        sets: tuple[str, ...], quiet: bool) -> None:
    """Stage 1 of fake-image regularised hashing: train a DCGAN, write fakes, a sample grid and loss curves.

    The run folder gets fakes.safetensors (for `coophash train --method fakereg --fakes FILE`),
    samples.png, losses.png and metrics.jsonl (per-epoch discriminator and generator losses); then (unless
    --no-quality) a judge trained on the real labeled images rates the fakes: class coverage, mean
    confidence and Fréchet distance of its features, kept in the fakes file and in quality.json.
    """
    from coophash.pipeline.gan import FAKES_FILE
    from coophash.pipeline.gan_quality import format_quality
    from coophash.train import runs

    flags: dict[str, Any] = {
        "dataset": dataset, "image_size": image_size, "channels": channels, "protocol": protocol,
        "manifest": manifest, "label_fraction": label_fraction, "seed": seed, "batch_size": batch_size,
        "bits": bits, "device": device, "threads": threads, "out": out,
    }
    gan_flags: dict[str, Any] = {"gan_latent_dim": latent_dim, "gan_width": width, "gan_lr": lr, "n_fakes": n_fakes,
                                 "gan_fakes_dtype": fakes_dtype, "gan_conditional": True if conditional else None}
    if resume:
        gcfg, run_dir = _resumed(resume, flags, gan_flags, sets, epochs)
        try:
            runs.check_not_busy(run_dir)  # at once, before any data is loaded
        except runs.RunFolderBusy as exc:
            fail(str(exc))
        result = _train(gcfg, run_dir, quiet, not no_quality, judge_epochs)
    else:
        gcfg = _gan_config(build_config(None, flags, sets), gan_flags, 15 if epochs is None else epochs)
        with runs.fresh_run_dir(gcfg) as run_dir:  # removed again if the run fails before writing into it
            result = _train(gcfg, run_dir, quiet, not no_quality, judge_epochs)
    click.echo(f"wrote {result.n_fakes} fakes to {result.fakes}")
    click.echo(f"sample grid: {result.samples}   loss curves: {result.losses}")
    if result.quality is not None:
        click.echo(f"quality (judge): {format_quality(result.quality)}")
    click.echo(f"next: coophash train --method fakereg --fakes {Path(run_dir) / FAKES_FILE} "
               f"--dataset {gcfg.dataset} --seed {gcfg.seed} --loss dpsh")


def _gan_config(base: Any, gan_flags: dict[str, Any], epochs: int) -> Any:
    """The GAN stage's config: ``base`` (data, split, devices) with the GAN options given."""
    from coophash.pipeline.gan import gan_config

    gargs = dict(base.method_args)
    gargs.update({k: v for k, v in gan_flags.items() if v is not None})
    try:
        return gan_config(base, gargs, epochs)
    except (ValueError, TypeError) as exc:
        fail(str(exc))


def _train(gcfg: Any, run_dir: Path, quiet: bool, quality: bool, judge_epochs: int) -> Any:
    """Run the GAN stage of ``gcfg`` in ``run_dir`` (reused when done, resumed when killed), then its judge."""
    from coophash.pipeline.gan import train_gan
    from coophash.train.runs import RunFolderBusy

    click.echo(f"run folder: {run_dir}")
    bars = None if quiet else StageBars(lambda p: "train judge" if p.stage == "judge" else "train gan",
                                        lambda p: None if p.stage == "judge" else gan_postfix(p))
    try:
        return train_gan(gcfg, run_dir, progress=bars, quality=quality, judge_epochs=judge_epochs)
    except (ValueError, FileNotFoundError, RunFolderBusy) as exc:
        fail(str(exc))
    finally:
        if bars is not None:
            bars.close()


def _resumed(resume: str, flags: dict[str, Any], gan_flags: dict[str, Any], sets: tuple[str, ...],
             epochs: Optional[int]) -> tuple[Any, Path]:
    """(config, folder) of the GAN run to continue: its own config, read strictly.

    Options given must leave that config as it is (a GAN run resumes to its own epochs too); those that
    would change it are refused, each named with the run's value.
    """
    from coophash.config import TrainConfig
    from coophash.train import runs

    try:
        run_dir = runs.resolve_run(resume, flags["out"] or "runs")[0]
        gcfg = runs.read_run_config(run_dir)
        if gcfg.method != "gan":
            fail(f"{run_dir} is a {gcfg.method!r} run, not a GAN run")
        data = gcfg.to_dict()
        data.update({k: v for k, v in flags.items() if v is not None and k != "out"})
        for key, value in parse_sets(sets).items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        wanted = _gan_config(TrainConfig.from_dict(data, "command line"), gan_flags,
                             gcfg.epochs if epochs is None else epochs)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    changed = runs.config_differences(gcfg, wanted, ("out",))
    if changed:
        shown = ", ".join(f"{k} ({getattr(gcfg, k)!r:.40} -> {getattr(wanted, k)!r:.40})" for k in changed)
        raise click.UsageError(f"--resume: a GAN run resumes with its own config ({run_dir / runs.CONFIG}); "
                               f"the options given would change {shown}; start a new run for other settings")
    return gcfg, run_dir
