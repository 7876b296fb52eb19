"""The friendly front: ``Hasher(method=..., bits=...).fit(dataset).encode(images)`` (scikit-learn style).

Hyperparameters go to ``__init__`` only; what ``fit`` learns ends in ``_``.  ``encode`` returns packed
uint8 codes (LSB-first, the FAISS layout).  ``load_run`` rebuilds a trained method from a run folder.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

import coophash.pipeline as pipeline
from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest
from coophash.methods import DataInfo, Method, create_method
from coophash.methods.base import apply_method_defaults
from coophash.train import runs
from coophash.train.checkpoint import load_checkpoint, read_checkpoint_state
from coophash.train.encoding import encode_images
from coophash.train.trainer import prepare_data

__all__ = ["Hasher", "load_run"]


def load_run(
    run: Union[str, Path], which: str = "best", device: str = "cpu", root: Union[str, Path] = "runs"
) -> tuple[TrainConfig, Method]:
    """Rebuild the method of a run (folder, checkpoint file, or number/name under ``root``) with its weights."""
    run_dir, ckpt = runs.resolve_run(run, root, which)
    if not ckpt.exists():
        raise FileNotFoundError(f"{run_dir}: no checkpoint ({runs.BEST} or {runs.LAST})")
    cfg = runs.read_run_config(run_dir).replace(device=device)
    state = read_checkpoint_state(ckpt)
    if "data_info" not in state:
        raise ValueError(f"{ckpt}: checkpoint lacks data_info; was it written by coophash train?")
    info = DataInfo(**state["data_info"])
    dev = torch.device(device)
    method = create_method(cfg, info, dev)
    load_checkpoint(ckpt, modules=method.modules(), restore_rng=False, map_location=dev)
    method.train(False)
    return cfg, method


class Hasher:
    """Train a hashing method and encode images to packed binary codes."""

    def __init__(
        self,
        method: str = "supervised",
        bits: int = 32,
        loss: str = "dpsh",
        backbone: Optional[str] = None,
        epochs: int = 15,
        label_fraction: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
        run_dir: Optional[Union[str, Path]] = None,
        **config: Any,
    ) -> None:
        self.method = method
        self.bits = bits
        self.loss = loss
        self.backbone = backbone
        self.epochs = epochs
        self.label_fraction = label_fraction
        self.seed = seed
        self.device = device
        self.run_dir = run_dir
        self.config = config

    def _config(self, dataset_name: str) -> TrainConfig:
        data = dict(method=self.method, bits=self.bits, loss=self.loss, epochs=self.epochs,
                    label_fraction=self.label_fraction, seed=self.seed, device=self.device, dataset=dataset_name,
                    **({} if self.backbone is None else {"backbone": self.backbone}), **self.config)
        data = apply_method_defaults({**TrainConfig().to_dict(), **data}, set(data) - {"method"})
        return TrainConfig.from_dict(data, "Hasher")

    def fit(self, dataset: HashDataset, manifest: Optional[Manifest] = None) -> "Hasher":
        """Train on ``dataset`` under ``manifest``.

        Without a manifest, the config's (``Hasher(manifest="file.json")``) or else its protocol split with
        ``split_seed`` (default: ``seed``) is used, exactly as ``coophash train`` does (same function).
        """
        cfg = self._config(getattr(dataset, "name", "custom"))
        dataset, manifest = prepare_data(cfg, dataset, manifest)
        run_dir = Path(self.run_dir) if self.run_dir else Path(tempfile.mkdtemp(prefix="coophash-"))
        result = pipeline.train(cfg, run_dir, dataset=dataset, manifest=manifest)
        self.results_ = result.results
        self.method_ = result.trainer.method
        self.method_.train(False)
        self.run_dir_ = run_dir
        self.config_ = cfg
        return self

    def encode(self, images: Union[torch.Tensor, np.ndarray], batch_size: int = 512) -> np.ndarray:
        """Packed codes (n, ceil(bits/8)) of images (N, C, H, W) in [-1, 1]."""
        if not hasattr(self, "method_"):
            raise RuntimeError("call fit() before encode()")
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.shape[0] == 0:
            return np.zeros((0, (self.bits + 7) // 8), np.uint8)
        return encode_images(self.method_.encode, x, self.method_.device, batch_size)

    @classmethod
    def load(cls, run: Union[str, Path], which: str = "best", device: str = "cpu") -> "Hasher":
        """A fitted Hasher from a run folder."""
        cfg, method = load_run(run, which=which, device=device)
        h = cls(method=cfg.method, bits=cfg.bits, loss=cfg.loss, backbone=cfg.backbone, epochs=cfg.epochs,
                label_fraction=cfg.label_fraction, seed=cfg.seed, device=device, run_dir=run)
        h.method_ = method
        h.config_ = cfg
        h.run_dir_ = Path(run)
        return h
