"""One training loop for every method: seeded, resumable, phase-driven, selected on the validation split.

Run folder layout (see :mod:`coophash.train.runs`): ``config.yaml`` (resolved), ``manifest.json``,
``metrics.jsonl`` (one JSON record per epoch, plus ``final``), ``last.safetensors`` (written every
``checkpoint_every`` steps and at each epoch end), ``best.safetensors`` (best validation mAP@all),
``results.json`` (the best checkpoint evaluated on the query split), ``curves.png`` (training-sample and
validation mAP per epoch: the over-fitting gap; see :func:`train_map_sample`).

Under ``torchrun`` (several processes) each rank trains on its block of every batch, gradients are averaged
over ranks phase by phase, and rank 0 alone writes the folder and evaluates (:mod:`coophash.train.distributed`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest, load_dataset, make_protocol
from coophash.methods.base import DataInfo, Method, create_method
from coophash.metrics import evaluate
from coophash.plots import plot_map_curves
from coophash.train import determinism, distributed, runs
from coophash.data.augment import augment_batch
from coophash.train.checkpoint import load_checkpoint, save_checkpoint
from coophash.train.encoding import encode_indices
from coophash.methods.phases import TrainingDiverged
from coophash.train.progress import Progress, ProgressFn
from coophash.train.sampler import StepSchedule
from coophash.utils.io import atomic_write_text
from coophash.utils.meter import RunningMeans

__all__ = [
    "CURVES", "TRAIN_MAP_SAMPLE", "Trainer", "prepare_data", "encode_indices", "data_info", "seed_everything",
    "StepInfo", "train_map_sample",
]

log = logging.getLogger(__name__)

CURVES = "curves.png"
TRAIN_MAP_SAMPLE = 500  # labeled training images whose mAP is logged as ``train_map`` each epoch
_TRAIN_MAP_SEED = 0x7A11  # mixed into the run seed: the sample's generator is apart from every training draw


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (explicitly, once per run)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_data(
    cfg: TrainConfig, dataset: Optional[HashDataset] = None, manifest: Optional[Manifest] = None
) -> tuple[HashDataset, Manifest]:
    """The dataset (loaded by name unless given) and the protocol manifest (unless given) of a config.

    The one place a manifest is made for a run: ``cfg.manifest`` (a file, checked against the dataset), else
    ``cfg.protocol`` split with ``cfg.split_seed`` (``cfg.seed`` when unset) and ``cfg.label_fraction``.
    """
    ds = dataset
    if ds is None:
        ds = load_dataset(cfg.dataset, image_size=cfg.image_size, channels=cfg.channels, **cfg.dataset_args)
    if manifest is not None:
        return ds, manifest
    if cfg.manifest:
        manifest = Manifest.load(cfg.manifest)
        manifest.check(ds)
    else:
        split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
        manifest = make_protocol(
            ds, cfg.protocol, seed=split_seed, label_fraction=cfg.label_fraction, **cfg.protocol_args
        )
    return ds, manifest


def data_info(ds: HashDataset, manifest: Manifest) -> DataInfo:
    """Summary of the data a method needs to build its networks."""
    c, h, _w = ds.image_shape
    multi = bool((ds.labels.sum(dim=1) > 1).any())
    return DataInfo(
        n_classes=ds.n_classes, channels=c, image_size=h, n_train=len(manifest.train), multi_label=multi
    )


def train_map_sample(manifest: Manifest, seed: int, size: int = TRAIN_MAP_SAMPLE) -> np.ndarray:
    """The training images whose mAP is logged per epoch: up to ``size`` labeled ones (at most half the
    training set, so that they have a database), sorted, drawn once per run by a NumPy Generator of its own
    seeded from ``seed`` (the global generators, hence training, are untouched)."""
    labeled = np.sort(np.asarray(manifest.labeled, dtype=np.int64))
    n = min(int(size), len(labeled), len(manifest.train) // 2)
    if n >= len(labeled):
        return labeled
    rng = np.random.default_rng([int(seed), _TRAIN_MAP_SEED])
    return np.sort(rng.choice(labeled, size=n, replace=False))


@dataclass
class StepInfo:
    """What a step callback sees (tests use it to kill a run mid-epoch)."""

    epoch: int
    step_in_epoch: int
    global_step: int


class Trainer:
    """Trains a method on a dataset under a protocol, writing a resumable run folder."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        dataset: Optional[HashDataset] = None,
        manifest: Optional[Manifest] = None,
        progress: Optional[ProgressFn] = None,
        stage: str = "train",
    ) -> None:
        """Build the method for ``cfg`` (data from :func:`prepare_data` unless given); ``progress`` sees each step."""
        self.cfg = cfg = determinism.make_reproducible(cfg)  # threads fixed (and recorded), deterministic CPU kernels
        self.run_dir = Path(run_dir)
        if dataset is None or manifest is None:
            dataset, manifest = prepare_data(cfg, dataset, manifest)
        self.ds = dataset
        self.manifest = manifest
        self.dist = distributed.setup(cfg.device)  # one process: no process group, device as configured
        self.device = self.dist.device
        if cfg.batch_size < self.dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {self.dist.world_size} processes")
        self.stage = stage
        self._progress = progress
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        seed_everything(cfg.seed)
        self.info = data_info(dataset, manifest)
        self.method: Method = create_method(cfg, self.info, self.device)
        self.schedule = StepSchedule(
            manifest.train,
            manifest.labeled,
            cfg.batch_size,
            cfg.unlabeled_batch_size if self.method.uses_unlabeled else 0,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.labeled_mask = torch.zeros(len(dataset), dtype=torch.bool)
        self.labeled_mask[torch.from_numpy(np.array(manifest.labeled, dtype=np.int64))] = True
        self.train_sample = train_map_sample(manifest, cfg.seed)
        self._code_cache: Optional[dict[int, np.ndarray]] = None  # see _shared_codes

    # -- folder -------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run_dir / runs.LAST

    @property
    def best_path(self) -> Path:
        return self.run_dir / runs.BEST

    def _init_folder(self) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_config(self.run_dir, self.cfg.to_dict())
        self.manifest.save(self.run_dir / runs.MANIFEST)

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, path: Path, state: dict[str, Any]) -> None:
        if not self.dist.is_main:  # rank 0 writes (atomically); every rank holds the same state
            return
        save_checkpoint(
            path,
            modules=self.method.modules(),
            optimizers=self.method.optimizers(),
            schedulers=self.method.schedulers(),
            state=state,
        )

    def _load(self, path: Path) -> dict[str, Any]:
        ckpt = load_checkpoint(
            path,
            modules=self.method.modules(),
            optimizers=self.method.optimizers(),
            schedulers=self.method.schedulers(),
            map_location=self.device,
        )
        return ckpt.state if hasattr(ckpt, "state") else ckpt

    # -- one step -----------------------------------------------------------------------------
    def _batch(self, lab: np.ndarray, unl: np.ndarray) -> dict[str, Any]:
        idx = np.concatenate([lab, unl]) if len(unl) else lab
        x = self.ds.images(idx)
        x = augment_batch(x, self.cfg.augment).to(self.device)
        y = self.ds.labels[torch.as_tensor(idx)].to(self.device)
        labeled = self.labeled_mask[torch.as_tensor(idx)].to(self.device)
        n_lab = len(lab)
        return {
            "x": x[:n_lab],
            "y": y[:n_lab],
            "labeled": labeled[:n_lab],
            "idx": torch.as_tensor(idx[:n_lab]),
            "x_all": x,
            "y_all": y,
            "labeled_all": labeled,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step(self, ctx: dict[str, Any], global_step: int) -> dict[str, float]:
        values: dict[str, float] = {}
        all_modules = list(self.method.modules().values())
        for phase in self.method.phases():
            if global_step % max(1, phase.interval):
                continue
            own = {id(p) for m in phase.modules for p in m.parameters()}
            for m in all_modules:
                for p in m.parameters():
                    p.requires_grad_(id(p) in own)
            if self.dist.enabled:
                self._phase_across_ranks(phase, ctx, global_step, values)
                continue
            with self._autocast():
                out = phase.fn(ctx)
            if out is None:
                continue
            if phase.optimizer is not None:
                total = out.total.float()
                if not torch.isfinite(total):
                    raise TrainingDiverged(
                        f"phase {phase.name!r}: loss is {total.item()} at step {global_step}; "
                        f"the last good checkpoint {self.last_path} is intact"
                    )
                phase.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if phase.clip_grad:
                    torch.nn.utils.clip_grad_norm_(phase.params(), phase.clip_grad)
                phase.optimizer.step()
                values[f"{phase.name}/total"] = float(total.detach())
            for name, t in out.terms.items():
                values[f"{phase.name}/{name}"] = float(t.detach().float()) if torch.is_tensor(t) else float(t)
        for m in all_modules:
            for p in m.parameters():
                p.requires_grad_(True)
        self.method.on_step(global_step)
        distributed.broadcast_buffers(all_modules, self.dist)
        return values

    def _phase_across_ranks(self, phase: Any, ctx: dict[str, Any], global_step: int, values: dict[str, float]) -> None:
        """One phase on one of several ranks: gradients averaged over ranks; every rank steps, skips or stops alike."""
        error: Optional[TrainingDiverged] = None
        out = total = None
        try:
            with self._autocast():
                out = phase.fn(ctx)
        except TrainingDiverged as exc:  # raised below on every rank, after the phase's one all-reduce
            error = exc
        if phase.optimizer is not None:
            phase.optimizer.zero_grad(set_to_none=True)
            if out is not None and error is None:
                total = out.total.float()
                if torch.isfinite(total):
                    total.backward()
                else:
                    error = TrainingDiverged(
                        f"phase {phase.name!r}: loss is {total.item()} at step {global_step} on rank "
                        f"{self.dist.rank}; the last good checkpoint {self.last_path} is intact"
                    )
        params = phase.params() if phase.optimizer is not None else []
        flags = [float(error is not None), float(total is not None and error is None)]
        n_failed, n_stepped = distributed.average_gradients(params, self.dist, flags)
        if n_failed:
            raise error or TrainingDiverged(
                f"phase {phase.name!r}: training diverged on another rank at step {global_step}; "
                f"the last good checkpoint {self.last_path} is intact"
            )
        if n_stepped and phase.optimizer is not None:
            if phase.clip_grad:
                torch.nn.utils.clip_grad_norm_(phase.params(), phase.clip_grad)
            phase.optimizer.step()
        if total is not None:
            values[f"{phase.name}/total"] = float(total.detach())
        for name, t in (out.terms.items() if out is not None else ()):
            values[f"{phase.name}/{name}"] = float(t.detach().float()) if torch.is_tensor(t) else float(t)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate_split(self, split: str = "validation", **metric_args: Any) -> dict[str, Any]:
        """Encode ``split`` queries and the database, return retrieval metrics."""
        queries = np.array(getattr(self.manifest, split), dtype=np.int64)
        # validation queries retrieve from the database minus themselves (some protocols hold them inside it)
        database = np.array(
            self.manifest.validation_database if split == "validation" else self.manifest.database, dtype=np.int64
        )
        return self._retrieval(queries, database, **metric_args)

    def _retrieval(self, queries: np.ndarray, database: np.ndarray, **metric_args: Any) -> dict[str, Any]:
        """Encode ``queries`` and ``database`` (in eval mode) and return their retrieval metrics."""
        self.method.train(False)
        try:
            q, db = self._codes(queries), self._codes(database)
        finally:
            self.method.train(True)
        ql = self.ds.labels[torch.from_numpy(queries)].numpy()
        dl = self.ds.labels[torch.from_numpy(database)].numpy()
        return evaluate(q, db, ql, dl, self.cfg.bits, **metric_args)

    def _codes(self, indices: np.ndarray) -> np.ndarray:
        """Packed codes of dataset items ``indices``; inside :meth:`_shared_codes` each item is encoded once."""
        cache = self._code_cache
        if cache is None:
            return encode_indices(self.method.encode, self.ds, indices, self.device, self.cfg.eval_batch_size)
        missing = np.array([i for i in np.unique(indices).tolist() if i not in cache], dtype=np.int64)
        if len(missing):
            fresh = encode_indices(self.method.encode, self.ds, missing, self.device, self.cfg.eval_batch_size)
            cache.update(zip(missing.tolist(), fresh))
        return np.stack([cache[i] for i in indices.tolist()]) if len(indices) else np.zeros((0, (int(self.cfg.bits) + 7) // 8), np.uint8)

    @contextlib.contextmanager
    def _shared_codes(self) -> Iterator[None]:
        """Within the block the weights do not change: validation and training-sample mAP share their codes
        (the training images are both the validation database and the training-sample retrieval set)."""
        self._code_cache = {}
        try:
            yield
        finally:
            self._code_cache = None

    def training_map(self) -> float:
        """mAP@all of :attr:`train_sample` retrieving from the training set minus itself (like validation
        queries from the validation database), relevance from every image's true labels (also those withheld)."""
        queries = self.train_sample
        database = np.setdiff1d(np.asarray(self.manifest.train, dtype=np.int64), queries)
        return self._retrieval(queries, database, topk=(), radius=2)["map@all"]

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False, step_callback: Optional[Callable[[StepInfo], None]] = None) -> dict:
        """Train for ``cfg.epochs`` epochs (continuing from ``last`` when ``resume``), return the results.

        The run folder has one writer: rank 0 holds its lock (:func:`runs.writer_lock`) while training.
        """
        with runs.writer_lock(self.run_dir) if self.dist.is_main else contextlib.nullcontext():
            return self._fit(resume, step_callback)

    def _fit(self, resume: bool, step_callback: Optional[Callable[[StepInfo], None]]) -> dict:
        """The training loop of :meth:`fit`."""
        cfg = self.cfg
        metrics_path = self.run_dir / runs.METRICS
        state: dict[str, Any] = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best_map": -1.0,
            "best_epoch": -1,
            "meter": {},
            "meter_count": 0,
            "epoch_seconds": 0.0,
            "data_info": dataclasses.asdict(self.info),
        }
        logger = self._open_run(metrics_path, state, resume)
        spe = self.schedule.steps_per_epoch
        self.method.train(True)
        epoch = int(state["epoch"])
        while epoch < cfg.epochs:
            lab, unl = self.schedule.epoch(epoch)
            meter = RunningMeans(state["meter"], int(state["meter_count"]))
            t0 = time.perf_counter() - float(state["epoch_seconds"])
            for s in range(int(state["step_in_epoch"]), spe):
                self._seed_step(int(state["global_step"]))
                ctx = self._batch(lab[s], unl[s])
                values = self._step(ctx, int(state["global_step"]))
                meter.add(values)
                state["global_step"] += 1
                state["step_in_epoch"] = s + 1
                if self._progress is not None and self.dist.is_main:
                    self._progress(Progress(self.stage, epoch, cfg.epochs, s + 1, spe, values))
                if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0 and s + 1 < spe:
                    sums = distributed.mean_over_ranks(meter.sums, self.dist)
                    state.update(meter=sums, meter_count=meter.count, epoch_seconds=time.perf_counter() - t0)
                    self._save(self.last_path, state)
                if step_callback:
                    step_callback(StepInfo(epoch, s + 1, int(state["global_step"])))
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "step": int(state["global_step"]), "seconds": seconds}
            record.update(distributed.mean_over_ranks({**meter.means(), **self.method.on_epoch_end(epoch)}, self.dist))
            with self._shared_codes():
                if (epoch + 1) % max(1, cfg.eval_every) == 0 or epoch + 1 == cfg.epochs:
                    val_map = self._validation_map()
                    record["val_map"] = val_map
                    if val_map > state["best_map"]:
                        state["best_map"] = float(val_map)
                        state["best_epoch"] = epoch + 1
                        best_state = dict(state, epoch=epoch + 1, step_in_epoch=0, meter={}, meter_count=0)
                        self._save(self.best_path, best_state)
                if self._train_map_due(epoch):
                    record["train_map"] = distributed.on_main(self.dist, self.training_map)
            logger.log(**record)
            epoch += 1
            state.update(epoch=epoch, step_in_epoch=0, meter={}, meter_count=0, epoch_seconds=0.0)
            self._save(self.last_path, state)
        return self.finish(logger, state)

    def _open_run(self, metrics_path: Path, state: dict[str, Any], resume: bool) -> Any:
        """Load the last checkpoint into ``state`` (``resume``) or start the folder; the metrics logger.

        Rank 0 decides whether there is a checkpoint to resume, and alone writes (the others log nowhere).
        """
        if distributed.broadcast_object(resume and self.last_path.exists(), self.dist):
            if self.dist.is_main:  # the folder's config and manifest must be intact and describe this run
                runs.check_resume(self.run_dir, self.cfg, self.manifest, self.ds)
            state.update(self._load(self.last_path))
            if self.dist.is_main:
                runs.resume_metrics(metrics_path, state)
        else:
            if resume:
                log.info("no checkpoint in %s; starting from scratch", self.run_dir)
            self._init_folder()
            if metrics_path.exists() and self.dist.is_main:
                metrics_path.unlink()
        distributed.broadcast_state(self.method.modules().values(), self.dist)
        return runs.MetricsLogger(metrics_path) if self.dist.is_main else distributed.NullLogger()

    def _seed_step(self, global_step: int) -> None:
        """Several processes: seed this rank's draws of this step from (seed, rank, step); one process: nothing."""
        if self.dist.enabled:
            seed_everything(distributed.rank_seed(self.cfg.seed, self.dist.rank, global_step))

    def _validation_map(self) -> float:
        """Validation mAP@all, computed on rank 0 and given to every rank (so all select the same epoch)."""
        return distributed.on_main(self.dist, lambda: self.evaluate_split("validation", topk=(), radius=2)["map@all"])

    def _train_map_due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based, just finished) logs ``train_map`` (``cfg.train_map_every``; 0: never)."""
        every = int(self.cfg.train_map_every)
        return bool(every) and len(self.train_sample) > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs)

    def write_curves(self) -> Optional[Path]:
        """``curves.png`` in the run folder: training-sample vs validation mAP per epoch (None: nothing to plot)."""
        records = [r for r in runs.read_metrics(self.run_dir / runs.METRICS) if not r.get("final")]
        return plot_map_curves(records, self.run_dir / CURVES, title=f"{self.cfg.method} ({self.stage})")

    def finish(self, logger: Any, state: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the best checkpoint (or the last, with no validation) on the query split.

        Rank 0 evaluates and writes ``results.json``; every rank returns its results and ends on the best weights.
        """
        res_out = distributed.on_main(self.dist, lambda: self._final_results(logger, state))
        if not self.dist.is_main and self.best_path.exists():
            self._load_weights_only(self.best_path)
        return res_out

    def _final_results(self, logger: Any, state: dict[str, Any]) -> dict[str, Any]:
        """Load the best checkpoint (if any), evaluate it on the query split, log and write the results."""
        if self.best_path.exists():
            self._load_weights_only(self.best_path)
        res = self.evaluate_split("query")
        res_out = {
            "split": "query",
            "best_epoch": state.get("best_epoch"),
            "best_val_map": state.get("best_map"),
            "epochs": self.cfg.epochs,
            "global_step": state.get("global_step"),
            **res,
        }
        logger.log(final=True, **{k: v for k, v in res_out.items() if not isinstance(v, dict)})
        atomic_write_text(self.run_dir / "results.json", json.dumps(res_out, indent=2, sort_keys=True) + "\n")
        self.write_curves()
        return res_out

    def _load_weights_only(self, path: Path) -> None:
        load_checkpoint(path, modules=self.method.modules(), restore_rng=False, map_location=self.device)
