"""The GAN stage and the fake-image recipe [gan → fakereg] (DESIGN.md §2).

The GAN stage trains the method ``gan`` (:mod:`coophash.methods.gan`) for the data and split of a run, then
writes beside its checkpoints ``fakes.safetensors`` (M fakes from the *last* generator, default M = number
of training images), ``samples.png`` (a grid of 64 fakes) and ``losses.png`` (per-epoch D and G losses,
which ``metrics.jsonl`` holds as ``discriminator/total`` and ``generator/total``).  The fakes file is
written last, so that its presence means the stage is complete.  Then (unless ``quality=False``) a judge
trained on the real labeled images in ``<run_dir>/judge/`` rates the fakes (:mod:`coophash.pipeline.gan_quality`):
the figures go into the fakes file's metadata (rewritten with a new checksum, same tensors) and ``quality.json``.

``fakereg`` without a ``fakes`` file (and ``fake_weight > 0``) is planned as two stages: the GAN stage in
``gan_dir`` (default ``<cfg.out>/gans/<gan_key>``, a name derived from every setting that shapes the GAN,
so later runs with the same data and seed reuse it), then ``fakereg`` with ``fakes`` set to its file.
Since every stage's trainer seeds itself, the result equals ``--fakes <that file>``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest
from coophash.fakes import plot_loss_curves, read_fakes_meta, save_image_grid
from coophash.methods.base import parse_method_args
from coophash.methods.fakereg import FakeRegHashing
from coophash.methods.gan import GAN_ARG_NAMES, GanArgs, GanMethod, generate_fakes, write_fakes
from coophash.pipeline.gan_quality import measure_fakes_quality, read_quality
from coophash.pipeline.stages import RECIPES, Stage, derived_config, run_stages, stage_lock
from coophash.train import runs
from coophash.train.checkpoint import load_checkpoint
from coophash.train.progress import ProgressFn
from coophash.train.trainer import Trainer

__all__ = [
    "FAKES_FILE",
    "FAKES_SEED_OFFSET",
    "LOSSES_FILE",
    "SAMPLES_FILE",
    "GanRun",
    "fakereg_stages",
    "gan_config",
    "gan_key",
    "gan_stage",
    "one_command_gan_dir",
    "train_gan",
    "write_gan_outputs",
]

log = logging.getLogger(__name__)

FAKES_FILE = "fakes.safetensors"
SAMPLES_FILE = "samples.png"
LOSSES_FILE = "losses.png"
# Offset added to the run seed for the generator of the fakes' latents (kept apart from training draws).
FAKES_SEED_OFFSET = 7919


@dataclass
class GanRun:
    """Where a finished GAN stage left its outputs."""

    run_dir: Path
    fakes: Path
    samples: Path
    losses: Path
    n_fakes: int
    results: dict = field(default_factory=dict)
    quality: Optional[dict] = None  # the judge's figures (:mod:`coophash.pipeline.gan_quality`), when measured


def gan_config(cfg: TrainConfig, gan_args: dict[str, Any], epochs: int) -> TrainConfig:
    """The GAN stage's config for the data and split of ``cfg`` (same dataset, protocol, manifest and seed).

    Unconditional GANs get label fraction 1.0 (labels unused; batches drawn uniformly from all training
    images, which do not depend on the label fraction); conditional ones keep ``cfg``'s label fraction.
    Real images are not augmented.  ``gan_args`` may hold other keys (a fakereg config's); only the
    GAN's are kept.
    """
    args = {k: v for k, v in gan_args.items() if k in GAN_ARG_NAMES}
    conditional = bool(GanArgs(**args).gan_conditional)
    return derived_config(
        cfg, "GAN stage", method="gan", bits=cfg.bits, label_fraction=cfg.label_fraction if conditional else 1.0,
        epochs=int(epochs), unlabeled_batch_size=0, augment="none", method_args=args,
    )


def gan_key(cfg: TrainConfig) -> str:
    """A stable folder name for a GAN config: dataset, seed and a hash of every field that shapes it."""
    d = cfg.to_dict()
    # fields that do not change the generator (bits: width of the diagnostic code only)
    for k in ("out", "threads", "device", "eval_batch_size", "checkpoint_every", "eval_every", "bits"):
        d.pop(k, None)
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"gan-{cfg.dataset}-s{cfg.seed}-{digest}"


def _train_split_sha1(train: Any) -> str:
    """Hash of the sorted training indices (which images the GAN saw)."""
    idx = np.sort(np.asarray(train, dtype=np.int64))
    return hashlib.sha1(idx.tobytes()).hexdigest()


def write_gan_outputs(trainer: Trainer, *, quality: bool = True, judge_epochs: int = 3) -> None:
    """The GAN stage's ``after`` hook: sample grid and loss curves, then the fakes of the last generator, then
    (``quality``) the judge's figures on them (a judge of ``judge_epochs`` epochs in ``<run_dir>/judge``)."""
    cfg, run_dir, method = trainer.cfg, trainer.run_dir, trainer.method
    if not isinstance(method, GanMethod):
        raise ValueError(f"the GAN stage needs a config with method 'gan', got {cfg.method!r}")
    # the trainer leaves the "best" (diagnostic) weights loaded; fakes come from the last generator
    load_checkpoint(run_dir / runs.LAST, modules=method.modules(), restore_rng=False, map_location=method.device)
    method.train(False)
    n = int(method.args.n_fakes) or int(method.info.n_train)
    pool = None
    if method.args.gan_conditional:
        pool = trainer.ds.labels[torch.as_tensor(np.asarray(trainer.manifest.labeled, dtype=np.int64))]
    seed = cfg.seed + FAKES_SEED_OFFSET
    grid_images, _ = generate_fakes(method, 64, seed, pool)
    save_image_grid(grid_images, run_dir / SAMPLES_FILE, nrow=8)
    records = runs.read_metrics(run_dir / runs.METRICS)
    plot_loss_curves(records, ["discriminator/total", "generator/total"], run_dir / LOSSES_FILE,
                     title=f"DCGAN on {cfg.dataset} (seed {cfg.seed})")
    path = write_fakes(
        method, run_dir / FAKES_FILE, n, seed, source=str(run_dir), label_pool=pool,
        extra_meta={"dataset": cfg.dataset, "seed": cfg.seed, "gan_epochs": cfg.epochs,
                    "train_split_sha1": _train_split_sha1(trainer.manifest.train)},
    )
    log.info("GAN stage done: %d fakes in %s", n, path)
    if quality and not trainer.dist.enabled:  # the judge trains in one process (this hook runs on rank 0 only)
        measure_fakes_quality(cfg, run_dir, path, dataset=trainer.ds, judge_epochs=judge_epochs)


def gan_stage(gcfg: TrainConfig, run_dir: str | Path, *, quality: bool = True, judge_epochs: int = 3) -> Stage:
    """The shared stage that trains the GAN of ``gcfg`` in ``run_dir`` (skipped once its fakes file exists);
    ``quality``: its hook also measures the fakes with a judge of ``judge_epochs`` epochs."""
    if gcfg.method != "gan":
        raise ValueError(f"the GAN stage needs a config with method 'gan', got {gcfg.method!r}")
    run_dir = Path(run_dir)
    after = functools.partial(write_gan_outputs, quality=quality, judge_epochs=judge_epochs)
    return Stage("gan", gcfg, run_dir, outputs=(run_dir / FAKES_FILE,), after=after)


def train_gan(cfg: TrainConfig, run_dir: str | Path, *, dataset: Optional[HashDataset] = None,
              manifest: Optional[Manifest] = None, progress: Optional[ProgressFn] = None,
              quality: bool = True, judge_epochs: int = 3) -> GanRun:
    """Run the GAN stage of ``cfg`` in ``run_dir`` (reused when done, resumed when killed); where its outputs are.

    ``quality``: the judge's figures on the fakes (:mod:`coophash.pipeline.gan_quality`), measured once, also
    for a reused GAN folder that has none yet (the GAN is never retrained for them).
    """
    st = gan_stage(cfg, run_dir, quality=quality, judge_epochs=judge_epochs)
    res = run_stages([st], dataset=dataset, manifest=manifest, progress=progress)[-1]
    fakes = st.run_dir / FAKES_FILE
    figures = read_quality(st.run_dir) if quality else None
    if quality and figures is None:
        with stage_lock(st.run_dir):  # one process measures a shared folder
            figures = measure_fakes_quality(cfg, st.run_dir, fakes, dataset=dataset, judge_epochs=judge_epochs,
                                            progress=progress)
    return GanRun(run_dir=st.run_dir, fakes=fakes, samples=st.run_dir / SAMPLES_FILE,
                  losses=st.run_dir / LOSSES_FILE, n_fakes=int(read_fakes_meta(fakes)["count"]),
                  results=res.results, quality=figures)


def one_command_gan_dir(cfg: TrainConfig) -> tuple[Path, TrainConfig]:
    """(folder, config) of the GAN stage that a fakereg config without a fakes file trains first."""
    args = parse_method_args(FakeRegHashing, cfg.method_args)
    gan_args = {k: getattr(args, k) for k in GAN_ARG_NAMES}
    gcfg = gan_config(cfg, gan_args, args.gan_epochs)
    folder = Path(args.gan_dir) if args.gan_dir else Path(cfg.out) / "gans" / gan_key(gcfg)
    return folder, gcfg


@RECIPES.register("fakereg")
def fakereg_stages(cfg: TrainConfig, run_dir: Path) -> list[Stage]:
    """[gan → fakereg] when ``cfg`` has no fakes file and ``fake_weight > 0``; else the one fakereg stage.

    The fakereg stage's config is a copy of ``cfg`` with ``fakes`` set (``cfg`` itself is left as is: it is
    what callers such as the experiment suite key their caches on).
    """
    args = parse_method_args(FakeRegHashing, cfg.method_args)
    if args.fakes or args.fake_weight <= 0:
        return [Stage("fakereg", cfg, Path(run_dir))]
    folder, gcfg = one_command_gan_dir(cfg)
    method_args = {**cfg.method_args, "fakes": str(folder / FAKES_FILE)}
    fcfg = TrainConfig.from_dict({**cfg.to_dict(), "method_args": method_args}, "fakereg stage")
    return [gan_stage(gcfg, folder), Stage("fakereg", fcfg, Path(run_dir))]
