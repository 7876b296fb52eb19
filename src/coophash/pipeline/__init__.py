"""Pipelines: a run is a list of stages above the trainer, each stage one ``Trainer.fit``.

This is the one path from a config to trained weights, shared by ``coophash train``, ``Hasher.fit`` and
the experiment suite.  (Skeleton: the stage planner for multi-stage recipes such as [gan → fakereg] is
being filled in.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from coophash.config import TrainConfig
from coophash.train.progress import ProgressFn
from coophash.train.trainer import Trainer

__all__ = ["Stage", "StageResult", "plan", "run_stages", "train"]


@dataclass
class Stage:
    """One ``Trainer.fit`` of a pipeline: its name, its config and its run folder."""

    name: str
    cfg: TrainConfig
    run_dir: Path


@dataclass
class StageResult:
    """A finished stage: its trainer (method, data, manifest) and its query-split results."""

    stage: Stage
    trainer: Trainer
    results: dict[str, Any] = field(default_factory=dict)


def plan(cfg: TrainConfig, run_dir: Path) -> list[Stage]:
    """The stages that train ``cfg`` into ``run_dir`` (the last stage writes ``run_dir``)."""
    return [Stage("train", cfg, Path(run_dir))]


def run_stages(stages: list[Stage], *, dataset: Any = None, manifest: Any = None, resume: bool = False,
               progress: Optional[ProgressFn] = None) -> list[StageResult]:
    """Run stages in order; ``dataset``/``manifest`` go to the last stage (the one the caller asked for)."""
    out: list[StageResult] = []
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        trainer = Trainer(st.cfg, st.run_dir, dataset if last else None, manifest if last else None,
                          progress=progress)
        results = trainer.fit(resume=resume)
        out.append(StageResult(st, trainer, results))
    return out


def train(cfg: TrainConfig, run_dir: Path, *, dataset: Any = None, manifest: Any = None, resume: bool = False,
          progress: Optional[ProgressFn] = None) -> StageResult:
    """Train ``cfg`` into ``run_dir`` through every stage it needs; the final stage's result."""
    return run_stages(plan(cfg, Path(run_dir)), dataset=dataset, manifest=manifest, resume=resume,
                      progress=progress)[-1]
