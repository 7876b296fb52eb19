"""Stages: each one ``Trainer.fit`` in its own run folder, run in order by :func:`run_stages`.

A stage that makes a product other runs share (a GAN's fakes file, under ``<out>/gans/``) names its
``outputs``: it is skipped when they all exist, otherwise trained under an exclusive lock on its folder
(so that processes sharing an output folder, e.g. benchmark shards, train it once), resumed from its last
checkpoint when there is one, and finished by its ``after`` hook, which writes the outputs.

Each stage's time is its own: a stage's epochs are timed by its trainer (``seconds`` in its ``metrics.jsonl``),
so the first epoch of the final stage never holds an earlier stage's time; a pipeline of several stages also
writes ``stages.json`` beside the final stage's results (:data:`STAGES_FILE`: each stage's folder, its summed
epoch seconds and the wall seconds this process spent on it).

Under ``torchrun`` a stage trains on every rank (data-parallel); rank 0 alone takes the folder lock, decides
whether a shared stage is done, and runs the ``after`` hook, while the other ranks wait for its word.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest
from coophash.train import distributed, runs
from coophash.train.progress import ProgressFn
from coophash.train.trainer import Trainer
from coophash.utils.io import atomic_write_text
from coophash.utils.registry import Registry

__all__ = ["RECIPES", "STAGES_FILE", "Stage", "StageResult", "derived_config", "run_stages", "stage_lock",
           "stage_seconds"]

log = logging.getLogger(__name__)

RESULTS = "results.json"
STAGES_FILE = "stages.json"


@dataclass
class Stage:
    """One ``Trainer.fit`` of a pipeline: its name, its config and its run folder.

    ``outputs``: files a finished shared stage leaves (all present: the stage is skipped); ``after(trainer)``:
    post-processing once the stage has trained (e.g. the GAN stage writes its fakes, grid and curves).
    """

    name: str
    cfg: TrainConfig
    run_dir: Path
    outputs: tuple[Path, ...] = ()
    after: Optional[Callable[[Trainer], None]] = None

    def done(self) -> bool:
        """Whether this is a shared stage whose outputs all exist already."""
        return bool(self.outputs) and all(p.exists() for p in self.outputs)


@dataclass
class StageResult:
    """A finished stage: its trainer (method, data, manifest; None when skipped) and its query-split results.

    ``wall_seconds``: time this process spent on the stage (training and ``after`` hook; ~0 when skipped);
    ``stage_seconds`` (on the last result of :func:`run_stages`): every stage's, see :func:`stage_seconds`.
    """

    stage: Stage
    trainer: Optional[Trainer]
    results: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    wall_seconds: float = 0.0
    stage_seconds: dict[str, dict[str, Any]] = field(default_factory=dict)


# A recipe turns a config (of the method it is registered under) into its stages; methods without one
# train in one stage.
RECIPES: Registry[Callable[[TrainConfig, Path], list[Stage]]] = Registry("pipeline recipe")


@contextlib.contextmanager
def stage_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``<folder>/.lock`` (POSIX ``flock``; no lock where fcntl is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def derived_config(cfg: TrainConfig, source: str, **fields: Any) -> TrainConfig:
    """A config for another stage on the data, split source and devices of ``cfg`` (``fields`` set the rest).

    Copied from ``cfg``: dataset and its arguments, image size, channels, protocol and its arguments,
    manifest, batch size, seed, split seed, device, evaluation and checkpoint intervals, threads and ``out``.
    """
    keep = ("dataset", "dataset_args", "image_size", "channels", "protocol", "protocol_args", "manifest",
            "batch_size", "seed", "split_seed", "device", "eval_every", "checkpoint_every", "eval_batch_size",
            "threads", "out")
    base = cfg.to_dict()
    return TrainConfig.from_dict({**{k: base[k] for k in keep}, **fields}, source)


def run_stages(stages: list[Stage], *, dataset: Optional[HashDataset] = None,
               manifest: Optional[Manifest] = None, resume: bool = False,
               progress: Optional[ProgressFn] = None) -> list[StageResult]:
    """Run stages in order; every stage gets ``dataset``, the last also ``manifest`` and ``resume``.

    Earlier stages make their own manifest from their config (a GAN stage's label fraction differs from the
    run's); shared stages (with ``outputs``) are reused when done and resume their own last checkpoint.
    """
    out: list[StageResult] = []
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        t0 = time.perf_counter()
        if st.outputs:
            out.append(_run_shared(st, dataset, manifest if last else None, progress))
        else:
            out.append(_fit(st, dataset, manifest if last else None, resume and last, progress))
        out[-1].wall_seconds = time.perf_counter() - t0
    if out:
        out[-1].stage_seconds = stage_seconds(out)
        if len(out) > 1 and distributed.setup(out[-1].stage.cfg.device).is_main:
            text = json.dumps(out[-1].stage_seconds, indent=2, sort_keys=True) + "\n"
            atomic_write_text(out[-1].stage.run_dir / STAGES_FILE, text)
    return out


def stage_seconds(results: list[StageResult]) -> dict[str, dict[str, Any]]:
    """Per stage name: its run folder, whether it was reused, the sum of its epochs' ``seconds`` (read from its
    ``metrics.jsonl``: for a reused stage, what training it took) and this process's wall seconds on it."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        path = r.stage.run_dir / runs.METRICS
        records = runs.read_metrics(path) if path.is_file() else []
        epochs = [float(x["seconds"]) for x in records if "seconds" in x and not x.get("final")]
        out[r.stage.name] = {"run_dir": str(r.stage.run_dir), "skipped": r.skipped, "epochs": len(epochs),
                             "train_seconds": sum(epochs), "wall_seconds": r.wall_seconds}
    return out


def _fit(st: Stage, dataset: Optional[HashDataset], manifest: Optional[Manifest], resume: bool,
         progress: Optional[ProgressFn]) -> StageResult:
    """Train one stage (then its ``after`` hook)."""
    trainer = Trainer(st.cfg, st.run_dir, dataset, manifest, progress=progress, stage=st.name)
    results = trainer.fit(resume=resume)
    if st.after is not None:
        after = st.after
        distributed.on_main(trainer.dist, lambda: after(trainer))  # rank 0 writes; the others wait for it
    return StageResult(st, trainer, results)


def _run_shared(st: Stage, dataset: Optional[HashDataset], manifest: Optional[Manifest],
                progress: Optional[ProgressFn]) -> StageResult:
    """Reuse a shared stage's outputs, or make them once under its folder lock (resuming its last checkpoint).

    Several processes: rank 0 holds the lock and answers "done?" for every rank; all ranks train the stage.
    """
    ctx = distributed.setup(st.cfg.device)
    if distributed.broadcast_object(st.done(), ctx):
        log.info("stage %s: reusing %s", st.name, st.run_dir)
        return StageResult(st, None, _read_results(st.run_dir), skipped=True)
    with stage_lock(st.run_dir) if ctx.is_main else contextlib.nullcontext():
        if distributed.broadcast_object(st.done(), ctx):
            log.info("stage %s: reusing %s (made by another process)", st.name, st.run_dir)
            return StageResult(st, None, _read_results(st.run_dir), skipped=True)
        log.info("stage %s: training in %s (%d epochs)", st.name, st.run_dir, st.cfg.epochs)
        return _fit(st, dataset, manifest, (st.run_dir / runs.LAST).exists(), progress)


def _read_results(run_dir: Path) -> dict[str, Any]:
    """The query-split results a finished run left (empty when it left none)."""
    path = run_dir / RESULTS
    return json.loads(path.read_text()) if path.is_file() else {}
