"""The judge of generated samples: a classifier (method ``classifier``) trained as an ordinary run.

It learns the classes from real images only (every training image of the run's split, labeled: label
fraction 1.0), never from generated ones, so that its accuracy on a generator's samples measures how
class-faithful they are (:func:`coophash.methods.coophash_sample.judge_accuracy`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from coophash.config import TrainConfig
from coophash.data import HashDataset
from coophash.methods.classifier import Classifier
from coophash.pipeline.stages import Stage, derived_config, run_stages
from coophash.train import runs
from coophash.train.progress import ProgressFn
from coophash.train.trainer import Trainer

__all__ = ["judge_config", "judge_config_in", "fit_judge", "train_judge"]


def judge_config(cfg: TrainConfig, epochs: int = 3, seed: int = 0, backbone: str = "smallconv",
                 batch_size: int = 128, lr: float = 1e-3) -> TrainConfig:
    """The judge's config for the data and split of ``cfg``: every training image labeled, no augmentation.

    ``seed`` seeds the judge's weights and batches; the split stays ``cfg``'s (its ``split_seed``, else its
    ``seed``), so the judge never sees ``cfg``'s query or validation images.
    """
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return derived_config(
        cfg, "judge", method="classifier", backbone=backbone, bits=cfg.bits, label_fraction=1.0,
        epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), weight_decay=0.0, augment="none",
        seed=int(seed), split_seed=int(split_seed),
    )


def judge_config_in(run_dir: str | Path, cfg: TrainConfig, epochs: int = 3) -> TrainConfig:
    """The config of the judge run in ``run_dir``: its own when the folder has one (a judge is reused or
    resumed as it was started), else :func:`judge_config` of ``cfg`` with ``epochs``."""
    path = Path(run_dir) / runs.CONFIG
    return runs.read_run_config(run_dir) if path.is_file() else judge_config(cfg, epochs=epochs)


def fit_judge(jcfg: TrainConfig, run_dir: str | Path, *, dataset: Optional[HashDataset] = None,
              progress: Optional[ProgressFn] = None) -> Trainer:
    """Train (or resume, or reload a finished) judge run in ``run_dir``; its trainer (classifier in eval mode,
    dataset and manifest of the split it learnt)."""
    if jcfg.method != "classifier":
        raise ValueError(f"the judge needs a config with method 'classifier', got {jcfg.method!r}")
    run_dir = Path(run_dir)
    stage = Stage("judge", jcfg, run_dir)
    res = run_stages([stage], dataset=dataset, resume=(run_dir / runs.LAST).exists(), progress=progress)[-1]
    assert res.trainer is not None and isinstance(res.trainer.method, Classifier)
    res.trainer.method.train(False)
    return res.trainer


def train_judge(jcfg: TrainConfig, run_dir: str | Path, *, dataset: Optional[HashDataset] = None,
                progress: Optional[ProgressFn] = None) -> Classifier:
    """Train (or resume, or reload a finished) judge run in ``run_dir``; its classifier, in eval mode."""
    judge = fit_judge(jcfg, run_dir, dataset=dataset, progress=progress).method
    assert isinstance(judge, Classifier)
    return judge
