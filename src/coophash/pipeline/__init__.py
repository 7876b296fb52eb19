"""Pipelines: a run is a list of stages above the trainer, each stage one ``Trainer.fit``.

This is the one path from a config to trained weights, shared by ``coophash train``, ``Hasher.fit`` and
the experiment suite.  :func:`plan` turns a config into its stages: one, except for methods with a recipe
in :data:`RECIPES` (``fakereg`` without a fakes file: [gan → fakereg], :mod:`coophash.pipeline.gan`);
:func:`run_stages` runs them in order (shared stages such as the GAN are reused once their outputs exist,
and trained once under a folder lock); :func:`train` does both and returns the last stage's result.
The judge of generated samples is an ordinary run too (:mod:`coophash.pipeline.judge`).

Under ``torchrun`` every stage trains data-parallel on all processes (:mod:`coophash.train.distributed`);
:func:`train` joins the process group, makes every rank use rank 0's run folder, and leaves the group at the end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest
from coophash.pipeline import gan as _gan  # noqa: F401  (registers the "fakereg" recipe)
from coophash.pipeline.stages import RECIPES, Stage, StageResult, run_stages, stage_lock
from coophash.train import distributed, runs
from coophash.train.progress import ProgressFn

__all__ = ["RECIPES", "Stage", "StageResult", "agree_on_run_dir", "plan", "run_stages", "stage_lock", "train"]


def plan(cfg: TrainConfig, run_dir: str | Path) -> list[Stage]:
    """The stages that train ``cfg`` into ``run_dir`` (the last stage writes ``run_dir``; ``cfg`` is not changed)."""
    run_dir = Path(run_dir)
    if cfg.method in RECIPES:
        return RECIPES.get(cfg.method)(cfg, run_dir)
    return [Stage(cfg.method, cfg, run_dir)]


def train(cfg: TrainConfig, run_dir: str | Path, *, dataset: Optional[HashDataset] = None,
          manifest: Optional[Manifest] = None, resume: bool = False,
          progress: Optional[ProgressFn] = None) -> StageResult:
    """Train ``cfg`` into ``run_dir`` through every stage it needs; the final stage's result.

    ``dataset`` goes to every stage, ``manifest`` and ``resume`` to the final one; ``progress`` sees every
    step of every stage (``Progress.stage`` names the stage).  Under ``torchrun`` every rank calls it; rank 0's
    ``run_dir`` is the run's folder (see :func:`agree_on_run_dir`).
    """
    with distributed.session(cfg.device) as ctx:
        run_dir = agree_on_run_dir(Path(run_dir), ctx)
        return run_stages(plan(cfg, run_dir), dataset=dataset, manifest=manifest, resume=resume,
                          progress=progress)[-1]


def agree_on_run_dir(run_dir: Path, ctx: distributed.DistContext) -> Path:
    """Rank 0's ``run_dir`` on every rank (one process: ``run_dir``).

    Each rank of ``torchrun -m coophash train`` numbers a new run folder of its own; rank 0's is the run's, and
    another rank's, when it differs and is still empty, is removed (:func:`coophash.train.runs.discard_if_empty`).
    """
    main_dir = Path(distributed.broadcast_object(str(run_dir), ctx))
    if main_dir != run_dir:
        runs.discard_if_empty(run_dir)
    return main_dir
