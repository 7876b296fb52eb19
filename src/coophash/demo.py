"""The main job on the bundled data, end to end: protocol, LSH floor, training, evaluation, index, a query."""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch

import coophash.pipeline as pipeline
from coophash.api import load_run
from coophash.config import TrainConfig
from coophash.index import HammingIndex
from coophash.methods.lsh import RandomProjectionHash
from coophash.metrics import evaluate
from coophash.train import runs
from coophash.train.encoding import encode_images, encode_indices
from coophash.train.progress import ProgressFn
from coophash.train.trainer import prepare_data

__all__ = ["run_demo", "lsh_baseline"]


def lsh_baseline(ds, manifest, bits: int = 32, seed: int = 0) -> dict:
    """Random-projection (LSH) codes of the query and database splits, evaluated."""
    lsh = RandomProjectionHash(bits, seed=seed).fit(ds.images(manifest.train))
    cpu = torch.device("cpu")
    q = encode_images(lsh.encode, ds.images(manifest.query), cpu, batch_size=len(manifest.query))
    db = encode_images(lsh.encode, ds.images(manifest.database), cpu, batch_size=len(manifest.database))
    res = evaluate(q, db, ds.labels[manifest.query].numpy(), ds.labels[manifest.database].numpy(), bits)
    res["chance_map"] = RandomProjectionHash.chance_map(ds.labels[manifest.database].numpy())
    return res


def _fmt(res: dict) -> str:
    keys = ["map@all", "precision@100", "recall@100", "precision@r2"]
    return "  ".join(f"{k}={res[k]:.4f}" for k in keys if k in res)


def run_demo(
    epochs: Optional[int] = None,
    out: str = "runs",
    quick: bool = False,
    echo: Callable[[str], None] = print,
    progress: Optional[ProgressFn] = None,
) -> dict:
    """Run the main job and return its figures (the CLI passes its echo and its progress bars)."""
    cfg = TrainConfig(out=out)
    if quick:
        cfg = cfg.replace(epochs=1)
    if epochs is not None:
        cfg = cfg.replace(epochs=epochs)
    ds, mf = prepare_data(cfg)
    echo(
        f"dataset {ds.name}: {len(ds)} images {tuple(ds.image_shape)}, {ds.n_classes} classes; protocol "
        f"{mf.protocol}: query {len(mf.query)}, validation {len(mf.validation)}, database {len(mf.database)}, "
        f"train {len(mf.train)} (labeled {len(mf.labeled)})"
    )
    lsh = lsh_baseline(ds, mf, cfg.bits, cfg.seed)
    echo(f"[LSH random projection, {cfg.bits} bits]  {_fmt(lsh)}  (chance mAP ~ {lsh['chance_map']:.3f})")

    run_dir = runs.new_run_dir(cfg, tag=f"demo-{cfg.method}-{cfg.loss}-{cfg.bits}b")
    echo(f"training {cfg.method}/{cfg.loss}, {cfg.backbone}, {cfg.bits} bits, {cfg.epochs} epochs -> {run_dir}")
    t0 = time.perf_counter()
    res = pipeline.train(cfg, run_dir, dataset=ds, manifest=mf, progress=progress).results
    echo(f"trained in {time.perf_counter() - t0:.0f} s; best validation mAP {res['best_val_map']:.4f} "
         f"at epoch {res['best_epoch']}")
    echo(f"[{cfg.method}/{cfg.loss}, {cfg.bits} bits, query split]  {_fmt(res)}")

    _, method = load_run(run_dir)
    db_codes = encode_indices(method.encode, ds, mf.database, torch.device("cpu"))
    index = HammingIndex(cfg.bits)
    index.add(db_codes, ids=np.asarray(mf.database))
    index_path = run_dir / "database.chidx"
    index.save(index_path)
    index = HammingIndex.load(index_path, nbits=cfg.bits)
    q_id = int(mf.query[0])
    q_code = encode_indices(method.encode, ds, np.array([q_id]), torch.device("cpu"))
    D, I = index.search(q_code, 10)
    q_label = int(ds.labels[q_id].argmax())
    hits = [int(ds.labels[j].argmax()) for j in I[0]]
    echo(f"index: {index.ntotal} codes -> {index_path}")
    echo(f"sample query #{q_id} (class {q_label}): top-10 classes {hits}, distances {D[0].tolist()}")
    lims, _, _ = index.range_search(q_code, 2)
    echo(f"codes within Hamming radius 2 of the query: {int(lims[1] - lims[0])}")
    return {"lsh": lsh, "trained": res, "run_dir": str(run_dir)}
