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
    parse_sets,
    run_options,
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
@click.option("--epochs", type=int, help="Epochs to train (with --resume: more than before trains longer).")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@run_options("Continue a killed run (number, name or folder) with its own config: other options given "
             "must match it (only --epochs may change, to train longer).")
def train(config: Optional[str], method: Optional[str], loss: Optional[str], backbone: Optional[str],
          bits: Optional[int], dataset: Optional[str], protocol: Optional[str], manifest: Optional[str],
          label_fraction: Optional[float], epochs: Optional[int], batch_size: Optional[int], lr: Optional[float],
          seed: Optional[int], device: Optional[str], threads: Optional[int], out: Optional[str],
          resume: Optional[str], sets: tuple[str, ...], quiet: bool, **method_opts: Any) -> None:
    """Train a hashing method; writes a numbered run folder.

    Method hyperparameters have their own options (below) or go through --set method_args.NAME=VALUE.
    """
    from coophash.train import distributed, runs

    flags = dict(method=method, loss=loss, backbone=backbone, bits=bits, dataset=dataset, protocol=protocol,
                 manifest=manifest, label_fraction=label_fraction, epochs=epochs, batch_size=batch_size,
                 lr=lr, seed=seed, device=device, threads=threads, out=out)
    if resume:
        if config:
            raise click.UsageError("--config cannot be used with --resume: a run resumes with its own config.yaml")
        run_dir = _resume_dir(resume, out)
        cfg = _resumed_config(run_dir, flags, sets, method_args_from(method_opts))
        try:
            if distributed.launched_world()[0] == 0:  # torchrun: rank 0 looks (all ranks at once race for the lock)
                runs.check_not_busy(run_dir)  # at once, before any data is loaded
        except runs.RunFolderBusy as exc:
            fail(str(exc))
        _train(cfg, run_dir, True, quiet)
        return
    cfg = build_config(config, flags, sets, method_args_from(method_opts))
    with runs.fresh_run_dir(cfg) as run_dir:  # removed again if the run fails before writing into it
        _train(cfg, run_dir, False, quiet)


def _train(cfg: Any, run_dir: Any, resume: bool, quiet: bool) -> None:
    """Train ``cfg`` into ``run_dir`` through the pipeline and print the query results."""
    import coophash.pipeline as pipeline
    from coophash.train import distributed
    from coophash.train.runs import RunFolderBusy

    main_rank = distributed.launched_world()[0] == 0  # under torchrun only rank 0 talks
    if main_rank:
        click.echo(f"run folder: {run_dir}")
    progress = training_progress(cfg, quiet or not main_rank)
    try:
        res = pipeline.train(cfg, run_dir, resume=resume, progress=progress).results
    except (ValueError, FileNotFoundError, RunFolderBusy) as exc:
        fail(str(exc))
    finally:
        progress.close()
    if main_rank:
        click.echo(format_metrics(res))


def _resumed_config(run_dir: Any, flags: dict[str, Any], sets: tuple[str, ...],
                   method_args: dict[str, Any]) -> Any:
    """The config a run resumes with: its own ``config.yaml``, read strictly, with ``--epochs`` applied.

    Any other option given (flag, ``--set`` or method option) must leave the config as it is; those that
    would change it are refused, each named with the run's value.
    """
    from coophash.config import TrainConfig
    from coophash.train import runs

    try:
        cfg = runs.read_run_config(run_dir)
        data = cfg.to_dict()
        data.update({k: v for k, v in flags.items() if v is not None and k not in ("epochs", "out")})
        for key, value in parse_sets(sets).items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        data["method_args"] = {**data["method_args"], **method_args}
        wanted = TrainConfig.from_dict(data, "command line")
        changed = runs.config_differences(cfg, wanted, ("epochs", "out"))
        if changed:
            shown = ", ".join(f"{k} ({getattr(cfg, k)!r:.40} -> {getattr(wanted, k)!r:.40})" for k in changed)
            raise click.UsageError(f"--resume: a run resumes with its own config ({run_dir / runs.CONFIG}); "
                                   f"the options given would change {shown}. Only --epochs may change (to train "
                                   "longer); start a new run for other settings")
        return cfg.replace(epochs=flags["epochs"]) if flags["epochs"] is not None else cfg
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def _resume_dir(resume: str, out: Optional[str]) -> Any:
    """The folder of the run to continue (number, name or folder; numbers and names under ``--out``)."""
    from coophash.train import runs

    try:
        return runs.resolve_run(resume, out or "runs")[0]
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
