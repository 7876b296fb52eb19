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
from coophash.methods.base import apply_method_defaults
from coophash.metrics import evaluate
from coophash.train import runs
from coophash.train.encoding import encode_images, encode_indices
from coophash.train.progress import ProgressFn
from coophash.train.trainer import prepare_data

__all__ = ["run_demo", "lsh_baseline", "scarce_configs"]

# the scarce-label part of the main job: the label fraction and the methods side by side (docs/coophash.md: at 2%
# labels CoopHash's default recipe leads the supervised baselines; DPSH is the best of them at 10 epochs there)
SCARCE_FRACTION = 0.02
SCARCE_METHODS = ("supervised", "coophash")


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


def scarce_configs(base: TrainConfig, fraction: float = SCARCE_FRACTION) -> list[TrainConfig]:
    """The configs of the scarce-label comparison: each of :data:`SCARCE_METHODS` at its defaults (its recipe, as
    ``coophash train --method M --label-fraction F`` gives it), with ``base``'s budget, seed and output folder."""
    given = {"label_fraction", "epochs", "seed", "out"}
    out = []
    for method in SCARCE_METHODS:
        data = {**TrainConfig().to_dict(), "method": method, "label_fraction": fraction, "epochs": base.epochs,
                "seed": base.seed, "out": base.out}
        out.append(TrainConfig.from_dict(apply_method_defaults(data, given), "demo"))
    return out


def _train(cfg: TrainConfig, tag: str, echo: Callable[[str], None], progress: Optional[ProgressFn], data=None):
    """Train ``cfg`` in a new run folder (on ``data``, a prepared (dataset, manifest), when given) and report it."""
    ds, mf = data if data is not None else prepare_data(cfg)
    run_dir = runs.new_run_dir(cfg, tag=tag)
    echo(f"training {cfg.method}/{cfg.loss}, {cfg.backbone}, {cfg.bits} bits, {cfg.epochs} epochs, "
         f"{len(mf.labeled)} labeled of {len(mf.train)} training images -> {run_dir}")
    t0 = time.perf_counter()
    res = pipeline.train(cfg, run_dir, dataset=ds, manifest=mf, progress=progress).results
    res["seconds"] = time.perf_counter() - t0
    echo(f"trained in {res['seconds']:.0f} s; best validation mAP {res['best_val_map']:.4f} "
         f"at epoch {res['best_epoch']}")
    return ds, mf, run_dir, res


def run_demo(
    epochs: Optional[int] = None,
    out: str = "runs",
    quick: bool = False,
    echo: Callable[[str], None] = print,
    progress: Optional[ProgressFn] = None,
    scarce: bool = True,
) -> dict:
    """Run the main job and return its figures (the CLI passes its echo and its progress bars).

    The LSH floor; the default method with all labels, its codes indexed and a sample query; then (``scarce``) the
    default supervised method beside CoopHash, each at its defaults, with 2% of the labels."""
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

    ds, mf, run_dir, res = _train(cfg, f"demo-{cfg.method}-{cfg.loss}-{cfg.bits}b", echo, progress, (ds, mf))
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
    figures = {"lsh": lsh, "trained": res, "run_dir": str(run_dir)}
    if not scarce:
        return figures

    echo(f"scarce labels: {SCARCE_FRACTION:.0%} of the training labels; the other training images unlabeled "
         f"(CoopHash uses them, the supervised method cannot)")
    figures["scarce"] = {}
    configs = scarce_configs(cfg)
    for c in configs:
        _, _, sdir, sres = _train(c, f"demo-scarce-{c.method}-{c.loss}-{c.bits}b-lf{c.label_fraction:g}", echo,
                                  progress)
        sres["run_dir"] = str(sdir)
        figures["scarce"][c.method] = sres
    for c in configs:
        echo(f"[{c.method}/{c.loss}, {c.bits} bits, {c.label_fraction:g} labels, query split]  "
             f"{_fmt(figures['scarce'][c.method])}")
    return figures
