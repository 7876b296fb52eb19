"""Evaluations made on a trained model right after training, stored in its cached result under ``extra``.

Each evaluation is registered by name in :data:`EVALS` and called as ``fn(ctx, **settings)`` with the run's
:class:`coophash.bench.EvalContext` (method, data, split, device; codes encoded once per run and shared by
the evaluations of the run): retrieval on another dataset, OOD scores, encoding speed, sample retrievals.
"""
from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from coophash.bench import EvalContext
from coophash.data import HashDataset, Manifest, load_dataset, make_protocol
from coophash.index import HammingIndex
from coophash.metrics import evaluate
from coophash.utils.registry import Registry

__all__ = [
    "EVALS",
    "EvalContext",
    "eval_cross_dataset",
    "eval_ood_cross",
    "eval_ood_unseen",
    "eval_encode_speed",
    "eval_samples",
    "eval_samples_unseen",
    "eval_samples_cross",
    "sample_queries",
    "auroc",
    "auroc_reference",
]

#: Extra evaluations by name: ``fn(ctx: EvalContext, **settings) -> dict`` (JSON-ready).
EVALS: Registry[Callable[..., dict]] = Registry("extra evaluation")


@functools.lru_cache(maxsize=4)
def _other_dataset(name: str, image_size: int, channels: int, args_json: str) -> HashDataset:
    return load_dataset(name, image_size=image_size, channels=channels, **json.loads(args_json))


def _target(ctx: EvalContext, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
            protocol_args: Mapping[str, Any]) -> tuple[HashDataset, Manifest]:
    """The cross-dataset data at the trained model's image size, split by a protocol seeded by the run."""
    ds = _other_dataset(dataset, ctx.info.image_size, ctx.info.channels,
                        json.dumps(dict(dataset_args), sort_keys=True))
    manifest = make_protocol(ds, protocol, seed=ctx.cfg.seed, **dict(protocol_args))
    return ds, manifest


def _retrieval_metrics(ctx: EvalContext, ds: HashDataset, queries: np.ndarray, database: np.ndarray) -> dict:
    q = ctx.codes(ds, queries)
    db = ctx.codes(ds, database)
    ql = ds.labels[torch.from_numpy(np.asarray(queries, dtype=np.int64))].numpy()
    dl = ds.labels[torch.from_numpy(np.asarray(database, dtype=np.int64))].numpy()
    res = evaluate(q, db, ql, dl, ctx.cfg.bits, topk=(100,), radius=2)
    out = {k: v for k, v in res.items() if not isinstance(v, dict)}
    out.update(n_query=int(len(queries)), n_database=int(len(database)))
    return out


@EVALS.register("cross_dataset")
def eval_cross_dataset(ctx: EvalContext, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
                       protocol_args: Mapping[str, Any]) -> dict:
    """mAP etc. of the trained model querying and retrieving on another dataset."""
    ds, m = _target(ctx, dataset, dataset_args, protocol, protocol_args)
    out = _retrieval_metrics(ctx, ds, m.query, m.database)
    out["dataset"] = dataset
    return out


# ------------------------------------------------------------------------------------------ OOD scores
@torch.no_grad()
def _ood_scores(ctx: EvalContext, ds: HashDataset, idx: np.ndarray) -> Optional[np.ndarray]:
    """The method's ood_score on dataset items (None when the method has no score)."""
    chunks = []
    bs = ctx.cfg.eval_batch_size
    for s in range(0, len(idx), bs):
        x = ds.images(np.asarray(idx[s: s + bs], dtype=np.int64)).to(ctx.device)
        score = ctx.method.ood_score(x)
        if score is None:
            return None
        chunks.append(score.detach().float().reshape(-1).cpu().numpy())
    return np.concatenate(chunks)


def _ood_result(scores_in: Optional[np.ndarray], scores_out: Optional[np.ndarray], what_in: str,
                what_out: str) -> dict:
    if scores_in is None or scores_out is None:
        return {"available": False}
    return {"available": True, "auroc": auroc(scores_in, scores_out), "n_in": int(scores_in.size),
            "n_out": int(scores_out.size), "mean_in": float(scores_in.mean()), "mean_out": float(scores_out.mean()),
            "in": what_in, "out": what_out}


@EVALS.register("ood_cross")
def eval_ood_cross(ctx: EvalContext, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
                   protocol_args: Mapping[str, Any]) -> dict:
    """AUROC of ood_score: in-distribution query split against the other dataset's query split."""
    ds, m = _target(ctx, dataset, dataset_args, protocol, protocol_args)
    s_in = _ood_scores(ctx, ctx.ds, ctx.manifest.query)
    s_out = None if s_in is None else _ood_scores(ctx, ds, m.query)
    return _ood_result(s_in, s_out, f"{ctx.cfg.dataset} query", f"{dataset} query")


@EVALS.register("ood_unseen")
def eval_ood_unseen(ctx: EvalContext) -> dict:
    """AUROC of ood_score: held-out seen-class images (validation) against the unseen-class queries."""
    m = ctx.manifest
    s_in = _ood_scores(ctx, ctx.ds, m.validation)
    s_out = None if s_in is None else _ood_scores(ctx, ctx.ds, m.query)
    return _ood_result(s_in, s_out, "held-out seen-class images (validation split)", "unseen-class queries")


# ------------------------------------------------------------------------------------------ speed
@EVALS.register("encode_speed")
@torch.no_grad()
def eval_encode_speed(ctx: EvalContext) -> dict:
    """Images per second of the test-time encoder on (up to 2,048 of) the database images, already in memory."""
    idx = np.asarray(ctx.manifest.database, dtype=np.int64)[:2048]
    x = ctx.ds.images(idx)
    bs = ctx.cfg.eval_batch_size
    ctx.method.encode(x[:bs].to(ctx.device))  # warm-up
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    t0 = time.perf_counter()
    for s in range(0, len(idx), bs):
        u = ctx.method.encode(x[s: s + bs].to(ctx.device))
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    del u
    secs = time.perf_counter() - t0
    return {"images_per_s": float(len(idx) / secs) if secs > 0 else float("inf"), "n_images": int(len(idx)),
            "seconds": float(secs), "batch_size": int(bs), "threads": int(torch.get_num_threads())}


# ------------------------------------------------------------------------------------------ samples
def sample_queries(ds: HashDataset, queries: np.ndarray, n: int) -> np.ndarray:
    """``n`` query indices spread over classes: the first query of each class, then the second, ..."""
    queries = np.asarray(queries, dtype=np.int64)
    primary = ds.labels[torch.from_numpy(queries)].numpy().argmax(axis=1)
    rank = np.zeros(len(queries), dtype=np.int64)
    for c in np.unique(primary):
        members = np.flatnonzero(primary == c)
        rank[members] = np.arange(members.size)
    order = np.lexsort((primary, rank))
    return queries[order[:n]]


def _label_ids(row: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(row > 0)]


def _samples(ctx: EvalContext, ds: HashDataset, queries: np.ndarray, database: np.ndarray, n_queries: int,
             k: int, dataset: str, dataset_args: Mapping[str, Any] | None = None) -> dict:
    """Top-k retrievals of ``n_queries`` queries spread over classes, with labels and relevance."""
    qidx = sample_queries(ds, queries, n_queries)
    database = np.asarray(database, dtype=np.int64)
    q = ctx.codes(ds, qidx)
    db = ctx.codes(ds, database)
    index = HammingIndex(ctx.cfg.bits)
    index.add(db, ids=database)  # database indices are sorted: ties keep dataset order, as the metrics do
    dist, ids = index.search(q, k)
    labels = ds.labels.numpy()
    results, rel, rlab = [], [], []
    for i, qi in enumerate(qidx):
        row = [int(j) for j in ids[i] if j >= 0]
        results.append(row)
        rlab.append([_label_ids(labels[j]) for j in row])
        rel.append([bool((labels[j] * labels[qi]).sum() > 0) for j in row])
    return {
        "dataset": dataset,
        "dataset_args": dict(dataset_args or {}),
        "image_size": int(ctx.info.image_size),
        "channels": int(ctx.info.channels),
        "class_names": [str(c) for c in ds.class_names] if ds.class_names else None,
        "query": [int(i) for i in qidx],
        "query_labels": [_label_ids(labels[i]) for i in qidx],
        "results": results,
        "result_labels": rlab,
        "distances": [[int(d) for d in dist[i][: len(results[i])]] for i in range(len(qidx))],
        "relevant": rel,
        "n_database": int(len(database)),
    }


@EVALS.register("samples")
def eval_samples(ctx: EvalContext, n_queries: int, k: int) -> dict:
    """Top-k retrievals of a few query-split images (for the HTML page)."""
    m = ctx.manifest
    return _samples(ctx, ctx.ds, m.query, m.database, n_queries, k, ctx.cfg.dataset, ctx.cfg.dataset_args)


@EVALS.register("samples_unseen")
def eval_samples_unseen(ctx: EvalContext, n_queries: int, k: int) -> dict:
    """Top-k retrievals of unseen-class queries among the unseen-class database."""
    return eval_samples(ctx, n_queries, k)


@EVALS.register("samples_cross")
def eval_samples_cross(ctx: EvalContext, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
                       protocol_args: Mapping[str, Any], n_queries: int, k: int) -> dict:
    """Top-k retrievals on the cross dataset."""
    ds, m = _target(ctx, dataset, dataset_args, protocol, protocol_args)
    return _samples(ctx, ds, m.query, m.database, n_queries, k, dataset, dataset_args)


# ------------------------------------------------------------------------------------------ AUROC
def auroc(scores_in: Sequence[float] | np.ndarray, scores_out: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``score`` detecting out-of-distribution items (higher = more unusual).

    Rank formula (Mann-Whitney U) with mid-ranks for ties: the probability that a random OOD item scores
    above a random in-distribution one, ties counting one half.
    """
    a = np.asarray(scores_in, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_out, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"auroc needs both groups non-empty (got {a.size} in, {b.size} out)")
    both = np.concatenate([a, b])
    if not np.all(np.isfinite(both)):
        raise ValueError("auroc: scores must be finite")
    order = np.argsort(both, kind="mergesort")
    s = both[order]
    ranks = np.empty(both.size, dtype=np.float64)
    # tie groups: [start, end) runs of equal values share the mean of ranks start+1 .. end
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    ends = np.concatenate([starts[1:], [s.size]])
    mid = (starts + 1 + ends) / 2.0
    ranks[order] = np.repeat(mid, ends - starts)
    n_out = b.size
    u = ranks[a.size:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (a.size * n_out))


def auroc_reference(scores_in: Sequence[float], scores_out: Sequence[float]) -> float:
    """Slow pairwise AUROC: mean over (in, out) pairs of 1[out > in] + 0.5·1[out == in] (tests only)."""
    total = 0.0
    for x in scores_in:
        for y in scores_out:
            total += 1.0 if y > x else 0.5 if y == x else 0.0
    return total / (len(scores_in) * len(scores_out))
