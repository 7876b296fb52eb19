"""The experiments of a suite: which runs each needs, and what is measured on a trained model.

Each experiment kind maps to training configs (``plan_suite``); configs shared by several experiments are
trained once (the cache key is :func:`coophash.bench.config_key`, every config field).  Evaluations that
need the trained model (another dataset, out-of-distribution scores, encoding speed, sample retrievals)
run right after training and are stored in the cached result under ``extra`` (see
:func:`coophash.bench.run_grid`), so no checkpoint has to be kept.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from coophash.bench import config_key
from coophash.config import TrainConfig
from coophash.data import HashDataset, load_dataset, make_protocol
from coophash.metrics import evaluate
from coophash.suite.config import Suite
from coophash.train.trainer import Trainer, encode_indices

__all__ = [
    "PlannedRun",
    "Plan",
    "plan_suite",
    "extra_evals_for",
    "auroc",
    "auroc_reference",
    "search_cost",
    "sample_queries",
]

log = logging.getLogger(__name__)

# experiments that train nothing of their own but read the runs of others
DERIVED = {"scarcity": "main", "ood_detection": "unseen/cross_dataset"}


@dataclass
class PlannedRun:
    """One training config of a suite, the method row it belongs to and what is evaluated on it."""

    cfg: TrainConfig
    method: str
    experiments: set[str] = field(default_factory=set)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The cache key (every config field)."""
        return config_key(self.cfg)


@dataclass
class Plan:
    """Every run of a suite (unique configs, in training order) and the methods left out."""

    suite: Suite
    runs: list[PlannedRun]
    skipped: list[dict[str, str]]
    seeds: list[int]
    retrieval_seed: Optional[int] = None
    pending: list[str] = field(default_factory=list)

    def runs_for(self, experiment: str) -> list[PlannedRun]:
        """The runs an experiment reads."""
        return [r for r in self.runs if experiment in r.experiments]

    def selected(self, only: Optional[Iterable[str]]) -> list[PlannedRun]:
        """The runs needed by the experiments in ``only`` (all when None)."""
        if not only:
            return list(self.runs)
        wanted = set(only)
        return [r for r in self.runs if r.experiments & wanted]


def registered_methods() -> set[str]:
    """Names in the method registry of this install."""
    from coophash.methods import METHODS

    return set(METHODS)


def plan_suite(suite: Suite, seeds: Optional[Sequence[int]] = None, device: Optional[str] = None,
               out: Optional[str] = None, lookup: Optional[Callable[[PlannedRun], Optional[dict]]] = None) -> Plan:
    """Expand a suite into its unique training configs; methods not registered are skipped (with a reason).

    ``device`` overrides every run's device; ``out`` sets ``TrainConfig.out`` (where a method keeps shared
    artefacts such as fakereg's GAN stage; not part of the cache key).  Runs are ordered seed by seed, so a
    partial suite already has every table for its first seeds.  A main grid with ``top`` adds the best
    entries of a method family once the results it ranks by are all available through ``lookup(run)``
    (the cached result or None); until then it is listed in ``Plan.pending``.
    """
    seeds = list(seeds) if seeds else list(suite.seeds)
    registered = registered_methods()
    skipped, methods = [], []
    for m in suite.methods:
        if m.method in registered:
            methods.append(m)
        else:
            skipped.append({"name": m.name, "method": m.method,
                            "reason": f"method {m.method!r} is not registered in this install "
                                      f"(registered: {', '.join(sorted(registered))}); its runs were skipped"})
    exps = suite.experiments
    base: dict[str, Any] = {"device": device} if device else {}
    if out:
        base["out"] = str(out)
    by_key: dict[str, PlannedRun] = {}
    order: list[str] = []

    def add(mname: str, seed: int, role: str, extras: Mapping[str, dict[str, Any]] = (), **fields: Any) -> PlannedRun:
        cfg = suite.config(suite.method(mname), seed, **base, **fields)
        key = config_key(cfg)
        if key not in by_key:
            by_key[key] = PlannedRun(cfg, mname)
            order.append(key)
        run = by_key[key]
        if run.method != mname:
            log.warning("methods %r and %r have identical configs; %r's run is shared", run.method, mname, mname)
        run.experiments.add(role)
        run.extras.update(dict(extras))
        return run

    names = [m.name for m in methods]
    family = {m.name: m.method for m in methods}
    rseed = None
    if "retrievals" in exps:
        rseed = exps["retrievals"]["seed"] if exps["retrievals"]["seed"] is not None else seeds[0]
    sections = set(exps["retrievals"]["sections"]) if "retrievals" in exps else set()
    ood_against = set(exps["ood_detection"]["against"]) if "ood_detection" in exps else set()
    samples_args = ({"n_queries": exps["retrievals"]["n_queries"], "k": exps["retrievals"]["k"]}
                    if "retrievals" in exps else {})
    rmethods = set(exps["retrievals"].get("methods") or names) if "retrievals" in exps else set()
    ranked: dict[tuple[int, float], dict[str, PlannedRun]] = {}  # (bits, label fraction) -> main runs, for ``top``
    pending: list[str] = []

    def main_runs(seed: int, grids_with_top: bool) -> None:
        for gi, grid in enumerate(exps["main"]["grids"]):
            if bool(grid.get("top")) != grids_with_top:
                continue
            for bits in grid["bits"]:
                for lf in grid["label_fractions"]:
                    chosen = [m for m in grid.get("methods", names if not grid.get("top") else []) if m in names]
                    if grid.get("top"):
                        best = _top_methods(grid["top"], float(lf), ranked, family, lookup, seeds)
                        if best is None:
                            msg = (f"main grid {gi}: {bits} bits, labels {lf:g}: the top {grid['top']['n']} "
                                   f"{grid['top'].get('family') or ''} entries wait for the "
                                   f"{grid['top']['bits']}-bit results")
                            if msg not in pending:
                                pending.append(msg)
                            best = []
                        chosen += [m for m in best if m not in chosen]
                    for mname in chosen:
                        run = add(mname, seed, "main", bits=bits, label_fraction=float(lf))
                        ranked.setdefault((bits, float(lf)), {})[run.key] = run
                        if "scarcity" in exps and bits == exps["scarcity"]["bits"]:
                            add(mname, seed, "scarcity", bits=bits, label_fraction=float(lf))

    for seed in seeds:
        if "main" in exps:
            main_runs(seed, grids_with_top=False)
        for kind in ("pr", "cost"):
            if kind in exps:
                s = exps[kind]
                extras = {"encode_speed": {}} if kind == "cost" else {}
                for mname in names:
                    add(mname, seed, kind, extras, bits=s["bits"], label_fraction=float(s["label_fraction"]))
        if "cross_dataset" in exps:
            s = exps["cross_dataset"]
            target = {k: s[k] for k in ("dataset", "dataset_args", "protocol", "protocol_args")}
            for mname in names:
                extras: dict[str, dict[str, Any]] = {"cross_dataset": target}
                if "cross_dataset" in ood_against:
                    extras["ood_cross"] = target
                if "cross_dataset" in sections and seed == rseed and mname in rmethods:
                    extras["samples_cross"] = {**target, **samples_args}
                add(mname, seed, "cross_dataset", extras, bits=s["bits"], label_fraction=float(s["label_fraction"]))
                if "cross_dataset" in ood_against:
                    add(mname, seed, "ood_detection", bits=s["bits"], label_fraction=float(s["label_fraction"]))
        if "unseen" in exps:
            s = exps["unseen"]
            for mname in names:
                extras = {}
                if "unseen" in ood_against:
                    extras["ood_unseen"] = {}
                if "unseen" in sections and seed == rseed and mname in rmethods:
                    extras["samples_unseen"] = dict(samples_args)
                fields = _unseen_fields(suite, mname, s)
                add(mname, seed, "unseen", extras, **fields)
                if "unseen" in ood_against:
                    add(mname, seed, "ood_detection", **fields)
        if "retrievals" in exps and "main" in sections and seed == rseed:
            s = exps["retrievals"]
            for mname in [m for m in names if m in rmethods]:
                add(mname, seed, "retrievals", {"samples": dict(samples_args)}, bits=s["bits"],
                    label_fraction=float(s["label_fraction"]))
    if "main" in exps:
        for seed in seeds:
            main_runs(seed, grids_with_top=True)
    plan = Plan(suite, [by_key[k] for k in order], skipped, seeds, rseed)
    plan.pending = pending
    return plan


def _top_methods(top: Mapping[str, Any], lf: float, ranked: Mapping[tuple[int, float], Mapping[str, PlannedRun]],
                 family: Mapping[str, str], lookup: Optional[Callable[[PlannedRun], Optional[dict]]],
                 seeds: Sequence[int]) -> Optional[list[str]]:
    """The ``top['n']`` best methods (of ``top['family']``) by mean mAP@all at ``top['bits']`` bits and ``lf``.

    None while any of the runs ranked is not finished (or no ``lookup`` is given).
    """
    runs = [r for r in ranked.get((int(top["bits"]), float(lf)), {}).values()
            if not top.get("family") or family.get(r.method) == top["family"]]
    if lookup is None or not runs:
        return None
    scores: dict[str, list[float]] = {}
    for r in runs:
        rec = lookup(r)
        if rec is None:
            return None
        scores.setdefault(r.method, []).append(float(rec["map@all"]))
    means = sorted(((-sum(v) / len(v), m) for m, v in scores.items()), key=lambda t: (t[0], t[1]))
    return [m for _, m in means[: int(top["n"])]]


def _unseen_fields(suite: Suite, mname: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields of an unseen-class run (model selection: seen-class validation queries retrieving
    among the seen-class train items, see ``Manifest.validation_database``)."""
    over = dict(s.get("overrides") or {})
    fields = {"bits": s["bits"], "label_fraction": float(s["label_fraction"]), "protocol": "unseen",
              "protocol_args": {"seen_classes": [int(c) for c in s["seen_classes"]]}}
    fields.update({k: v for k, v in over.items() if k != "protocol_args"})
    if "protocol_args" in over:
        fields["protocol_args"] = {**over["protocol_args"], **fields["protocol_args"]}
    return fields


# ------------------------------------------------------------------------------------------ extras
def extra_evals_for(plan: Plan) -> Callable[[TrainConfig], dict[str, Callable[[Trainer], dict]]]:
    """The ``extra_evals`` callback of :func:`coophash.bench.run_grid` for the runs of ``plan``."""
    by_key = {r.key: r for r in plan.runs}

    def extras(cfg: TrainConfig) -> dict[str, Callable[[Trainer], dict]]:
        run = by_key.get(config_key(cfg))
        if run is None:
            return {}
        return {name: functools.partial(EVALS[name], **args) for name, args in run.extras.items()}

    return extras


@functools.lru_cache(maxsize=4)
def _other_dataset(name: str, image_size: int, channels: int, args_json: str) -> HashDataset:
    return load_dataset(name, image_size=image_size, channels=channels, **json.loads(args_json))


def _target(trainer: Trainer, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
            protocol_args: Mapping[str, Any]) -> tuple[HashDataset, Any]:
    """The cross-dataset data at the trained model's image size, split by a protocol seeded by the run."""
    ds = _other_dataset(dataset, trainer.info.image_size, trainer.info.channels,
                        json.dumps(dict(dataset_args), sort_keys=True))
    manifest = make_protocol(ds, protocol, seed=trainer.cfg.seed, **dict(protocol_args))
    return ds, manifest


def _encode(trainer: Trainer, ds: HashDataset, idx: np.ndarray) -> np.ndarray:
    """Packed codes of dataset items, remembered on the trainer for the other evaluations of the same run."""
    idx = np.asarray(idx, dtype=np.int64)
    cache = trainer.__dict__.setdefault("_suite_codes", {})
    key = (ds.name, tuple(ds.image_shape), int(idx.size), idx.tobytes())
    if key not in cache:
        cache[key] = encode_indices(trainer.method.encode, ds, idx, trainer.device, trainer.cfg.eval_batch_size)
    return cache[key]


def _retrieval_metrics(trainer: Trainer, ds: HashDataset, queries: np.ndarray, database: np.ndarray) -> dict:
    q = _encode(trainer, ds, queries)
    db = _encode(trainer, ds, database)
    ql = ds.labels[torch.from_numpy(np.asarray(queries, dtype=np.int64))].numpy()
    dl = ds.labels[torch.from_numpy(np.asarray(database, dtype=np.int64))].numpy()
    res = evaluate(q, db, ql, dl, trainer.cfg.bits, topk=(100,), radius=2)
    out = {k: v for k, v in res.items() if not isinstance(v, dict)}
    out.update(n_query=int(len(queries)), n_database=int(len(database)))
    return out


def eval_cross_dataset(trainer: Trainer, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
                       protocol_args: Mapping[str, Any]) -> dict:
    """mAP etc. of the trained model querying and retrieving on another dataset."""
    ds, m = _target(trainer, dataset, dataset_args, protocol, protocol_args)
    out = _retrieval_metrics(trainer, ds, m.query, m.database)
    out["dataset"] = dataset
    return out


@torch.no_grad()
def _ood_scores(trainer: Trainer, ds: HashDataset, idx: np.ndarray) -> Optional[np.ndarray]:
    """The method's ood_score on dataset items (None when the method has no score)."""
    chunks = []
    bs = trainer.cfg.eval_batch_size
    for s in range(0, len(idx), bs):
        x = ds.images(np.asarray(idx[s: s + bs], dtype=np.int64)).to(trainer.device)
        score = trainer.method.ood_score(x)
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


def eval_ood_cross(trainer: Trainer, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
                   protocol_args: Mapping[str, Any]) -> dict:
    """AUROC of ood_score: in-distribution query split against the other dataset's query split."""
    ds, m = _target(trainer, dataset, dataset_args, protocol, protocol_args)
    s_in = _ood_scores(trainer, trainer.ds, trainer.manifest.query)
    s_out = None if s_in is None else _ood_scores(trainer, ds, m.query)
    return _ood_result(s_in, s_out, f"{trainer.cfg.dataset} query", f"{dataset} query")


def eval_ood_unseen(trainer: Trainer) -> dict:
    """AUROC of ood_score: held-out seen-class images (validation) against the unseen-class queries."""
    m = trainer.manifest
    s_in = _ood_scores(trainer, trainer.ds, m.validation)
    s_out = None if s_in is None else _ood_scores(trainer, trainer.ds, m.query)
    return _ood_result(s_in, s_out, "held-out seen-class images (validation split)", "unseen-class queries")


@torch.no_grad()
def eval_encode_speed(trainer: Trainer) -> dict:
    """Images per second of the test-time encoder on (up to 2,048 of) the database images, already in memory."""
    idx = np.asarray(trainer.manifest.database, dtype=np.int64)[:2048]
    x = trainer.ds.images(idx)
    bs = trainer.cfg.eval_batch_size
    trainer.method.encode(x[:bs].to(trainer.device))  # warm-up
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    t0 = time.perf_counter()
    for s in range(0, len(idx), bs):
        u = trainer.method.encode(x[s: s + bs].to(trainer.device))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    del u
    secs = time.perf_counter() - t0
    return {"images_per_s": float(len(idx) / secs) if secs > 0 else float("inf"), "n_images": int(len(idx)),
            "seconds": float(secs), "batch_size": int(bs), "threads": int(torch.get_num_threads())}


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


def _samples(trainer: Trainer, ds: HashDataset, queries: np.ndarray, database: np.ndarray, n_queries: int,
             k: int, dataset: str, dataset_args: Mapping[str, Any] | None = None) -> dict:
    from coophash.index import HammingIndex

    qidx = sample_queries(ds, queries, n_queries)
    database = np.asarray(database, dtype=np.int64)
    q = _encode(trainer, ds, qidx)
    db = _encode(trainer, ds, database)
    index = HammingIndex(trainer.cfg.bits)
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
        "image_size": int(trainer.info.image_size),
        "channels": int(trainer.info.channels),
        "class_names": [str(c) for c in ds.class_names] if ds.class_names else None,
        "query": [int(i) for i in qidx],
        "query_labels": [_label_ids(labels[i]) for i in qidx],
        "results": results,
        "result_labels": rlab,
        "distances": [[int(d) for d in dist[i][: len(results[i])]] for i in range(len(qidx))],
        "relevant": rel,
        "n_database": int(len(database)),
    }


def eval_samples(trainer: Trainer, n_queries: int, k: int) -> dict:
    """Top-k retrievals of a few query-split images (for the HTML page)."""
    m = trainer.manifest
    return _samples(trainer, trainer.ds, m.query, m.database, n_queries, k, trainer.cfg.dataset,
                    trainer.cfg.dataset_args)


def eval_samples_unseen(trainer: Trainer, n_queries: int, k: int) -> dict:
    """Top-k retrievals of unseen-class queries among the unseen-class database."""
    return eval_samples(trainer, n_queries, k)


def eval_samples_cross(trainer: Trainer, dataset: str, dataset_args: Mapping[str, Any], protocol: str,
                       protocol_args: Mapping[str, Any], n_queries: int, k: int) -> dict:
    """Top-k retrievals on the cross dataset."""
    ds, m = _target(trainer, dataset, dataset_args, protocol, protocol_args)
    return _samples(trainer, ds, m.query, m.database, n_queries, k, dataset, dataset_args)


EVALS: dict[str, Callable[..., dict]] = {
    "cross_dataset": eval_cross_dataset,
    "ood_cross": eval_ood_cross,
    "ood_unseen": eval_ood_unseen,
    "encode_speed": eval_encode_speed,
    "samples": eval_samples,
    "samples_unseen": eval_samples_unseen,
    "samples_cross": eval_samples_cross,
}


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


# ------------------------------------------------------------------------------------------ search cost
def search_cost(bits: int, n_database: int, n_queries: int, k: int, repeats: int = 3, seed: int = 0) -> dict:
    """ms/query of a top-k search: our HammingIndex against FAISS IndexBinaryFlat, one thread each, same codes."""
    from coophash.index import HammingIndex
    from coophash.index.hamming_index import available_backends

    rng = np.random.default_rng(seed)
    nb = (bits + 7) // 8
    db = rng.integers(0, 256, size=(n_database, nb), dtype=np.uint8)
    q = rng.integers(0, 256, size=(n_queries, nb), dtype=np.uint8)
    if bits % 8:
        mask = np.uint8((1 << (bits % 8)) - 1)
        db[:, -1] &= mask
        q[:, -1] &= mask
    ours = HammingIndex(bits, n_threads=1)
    ours.add(db)
    ours.search(q[: min(10, n_queries)], k)  # warm-up (JIT)

    def best(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000.0 / n_queries

    out: dict[str, Any] = {"bits": int(bits), "n_database": int(n_database), "n_queries": int(n_queries),
                           "k": int(k), "repeats": int(repeats), "backend": ours.backend, "threads": 1}
    out["coophash_ms_per_query"] = best(lambda: ours.search(q, k))
    if "faiss" in available_backends():
        import faiss

        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            if bits % 8 == 0:
                fx = faiss.IndexBinaryFlat(bits)
                fx.add(db)
                fx.search(q[: min(10, n_queries)], k)
                out["faiss_ms_per_query"] = best(lambda: fx.search(q, k))
                d_ours, _ = ours.search(q, k)
                d_faiss, _ = fx.search(q, k)
                out["same_distances"] = bool(np.array_equal(d_ours, d_faiss))
                out["ratio_faiss_over_ours"] = out["faiss_ms_per_query"] / out["coophash_ms_per_query"]
            else:
                out["faiss_note"] = "FAISS binary indexes need a multiple of 8 bits"
        finally:
            faiss.omp_set_num_threads(prev)
    else:
        out["faiss_note"] = "faiss is not installed (pip install faiss-cpu)"
    return out
