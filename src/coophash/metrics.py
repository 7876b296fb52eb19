"""Retrieval metrics in Hamming space: mAP@R, precision@K / recall@K, PR curve over radii.

Inputs
------
* ``query_codes`` ``(n_q, ceil(nbits / 8))`` and ``db_codes`` ``(n_db, ceil(nbits / 8))``: packed uint8 codes,
  least-significant bit first, as produced by :func:`coophash.codes.pack_bits`, plus ``nbits``.  NumPy arrays
  or torch tensors.  Padding bits of the last byte must be zero.
* ``query_labels`` ``(n_q, C)`` and ``db_labels`` ``(n_db, C)``: multi-hot 0/1 arrays (single-label data is
  one-hot).  1-D non-negative integer class labels are also accepted and treated as one-hot.
* Relevance: database item ``j`` is relevant to query ``i`` iff they share at least one label
  (``<l_i, l_j> > 0``).  A query whose label row is all zero has no relevant item.

Ranking
-------
For each query the database is sorted by Hamming distance, ascending; ties are broken by database index
(a stable sort: the smaller index ranks first).  It is computed as a counting sort over the ``nbits + 1``
distance levels, never a comparison sort.

mAP@R
-----
With ``rel(k) = 1`` if the item at rank ``k`` is relevant and ``P(k)`` = (relevant items in the top ``k``) / ``k``::

    AP@R(q) = (1 / n_q) * sum_{k = 1..R} P(k) * rel(k)

* ``normalizer="field"`` (default; the deep-hashing convention of the DPSH/HashNet evaluation code):
  ``n_q`` = number of relevant items in the top ``R``.
* ``normalizer="strict"`` (the TREC definition): ``n_q`` = number of relevant items in the whole database.

A query with ``n_q = 0`` has AP 0 and still counts in the mean; mAP@R is the mean of AP@R over all queries.
Both normalisers coincide for ``R`` = all.  ``R=None`` or ``"all"`` means the whole database; an integer
``R`` larger than the database is clipped to ``n_db`` (so ``map@5000`` over a 2,000-item database equals
``map@all``); ``R`` must be >= 1.  The usual reporting cutoffs are ``R`` = all / 1000 / 5000
(:data:`STANDARD_R`, :func:`map_at_r`).  ``torchmetrics.retrieval.RetrievalMAP(top_k=R)`` uses the "field"
normaliser; without ``top_k`` it equals our mAP@all (given the same tie-break).

precision@K, recall@K
---------------------
On the same ranked list (same tie-break) cut after the top ``K`` items (``K`` clipped to ``n_db``):
``precision@K`` = relevant in the top ``K`` / ``K``; ``recall@K`` = relevant in the top ``K`` / relevant in the
whole database, defined as 0 for a query with no relevant item.  Both are means over all queries.

Precision-recall curve over Hamming radii
-----------------------------------------
For ``r = 0..nbits`` the retrieved set is ``{j : d(q, j) <= r}`` (no tie-break is involved).  Per query,
``precision_r`` = relevant retrieved / retrieved and ``recall_r`` = relevant retrieved / relevant in the
database (0 for a query with no relevant item).  The curve is the mean over queries.  A query that retrieves
nothing at radius ``r`` contributes precision 0 (the DPSH/DSH convention); with ``skip_empty=True`` it is
left out of that radius's precision mean instead (NaN when no query retrieves anything).  Recall always
averages over all queries.  *Precision within Hamming radius r* (default 2) is point ``r`` of this curve
(``r`` clipped to ``nbits``), with the same convention.

Computation
-----------
Queries are processed in chunks: per chunk, distances come from :func:`coophash.codes.hamming_distance`
and a numba kernel (parallel over queries) computes relevance on the fly from labels bit-packed into
uint64 words (``any(a & b)``, or class-id equality when both label sets are 1-D), the per-level histograms
and the counting-sort ranking.  The chunk size is chosen so that the chunk's working set stays within
``memory_budget`` bytes (default 256 MiB); the ``n_q x n_db`` distance or relevance matrix is never built.
Results do not depend on the chunk size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import numba
import numpy as np
import torch

from coophash.codes import check_packed, hamming_distance

ArrayLike = Union[np.ndarray, torch.Tensor]
Cutoff = Union[int, str, None]

__all__ = [
    "STANDARD_R",
    "DEFAULT_MEMORY_BUDGET",
    "RetrievalStats",
    "compute_retrieval_stats",
    "mean_average_precision",
    "map_at_r",
    "precision_at_k",
    "recall_at_k",
    "precision_recall_at_ks",
    "precision_recall_curve",
    "precision_within_radius",
    "evaluate",
    "frechet_distance",
]

#: The cutoffs the hashing literature reports mAP at: all, 1000 and 5000.
STANDARD_R: tuple[Cutoff, ...] = (None, 1000, 5000)
#: Default working-set budget per query chunk, in bytes.
DEFAULT_MEMORY_BUDGET = 256 * 2**20

_NORMALIZERS = ("field", "strict")


# ----------------------------------------------------------------------------------------------- kernel


@numba.njit(parallel=True, cache=True, nogil=True)
def _chunk_kernel(dist, qlab, dlab, class_mode, nbits, cutoffs, level_counts, level_relevant, hits, ap_sum):
    """Per-query level histograms and ranked cutoff statistics for one chunk of queries (numba)."""
    cq, nd = dist.shape
    n_words = qlab.shape[1]
    n_cut = cutoffs.shape[0]
    depth = cutoffs[n_cut - 1] if n_cut > 0 else 0
    for i in numba.prange(cq):
        tot = np.zeros(nbits + 1, dtype=np.int64)
        rel = np.zeros(nbits + 1, dtype=np.int64)
        for j in range(nd):
            d = dist[i, j]
            tot[d] += 1
            r = False
            if class_mode:
                r = qlab[i, 0] == dlab[j, 0]
            else:
                for w in range(n_words):
                    if (qlab[i, w] & dlab[j, w]) != 0:
                        r = True
                        break
            if r:
                rel[d] += 1
        for lv in range(nbits + 1):
            level_counts[i, lv] = tot[lv]
            level_relevant[i, lv] = rel[lv]
        if depth == 0:
            continue
        # Counting sort: items of level d occupy ranks start[d] .. start[d] + tot[d] - 1, in index order.
        cursor = np.empty(nbits + 1, dtype=np.int64)
        acc = 0
        for lv in range(nbits + 1):
            cursor[lv] = acc
            acc += tot[lv]
        ranked = np.zeros(depth, dtype=np.uint8)
        for j in range(nd):
            d = dist[i, j]
            p = cursor[d]
            if p < depth:
                cursor[d] = p + 1
                r = False
                if class_mode:
                    r = qlab[i, 0] == dlab[j, 0]
                else:
                    for w in range(n_words):
                        if (qlab[i, w] & dlab[j, w]) != 0:
                            r = True
                            break
                if r:
                    ranked[p] = 1
        n_hit = 0
        s = 0.0
        c = 0
        for k in range(depth):
            if ranked[k]:
                n_hit += 1
                s += n_hit / (k + 1.0)
            while c < n_cut and cutoffs[c] == k + 1:
                hits[i, c] = n_hit
                ap_sum[i, c] = s
                c += 1


# ----------------------------------------------------------------------------------------- validation


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_codes(codes: ArrayLike, nbits: int, name: str) -> np.ndarray:
    arr = check_packed(codes, nbits, name=name)
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    tail = int(nbits) % 8
    if tail and np.any(arr[:, -1] >> tail):
        raise ValueError(
            f"{name} has non-zero padding bits above bit {nbits} in its last byte; "
            f"pack {nbits}-bit codes with coophash.codes.pack_bits"
        )
    return arr


def _check_label_array(labels: Any, name: str) -> np.ndarray:
    arr = _to_numpy(labels)
    if arr.ndim == 1:
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name}: 1-D labels must be integer class ids, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name}: class ids must be non-negative")
        return arr.astype(np.int64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (n, C) multi-hot or (n,) class ids, got shape {tuple(arr.shape)}")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be numeric 0/1 multi-hot labels, got dtype {arr.dtype}")
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must be multi-hot with entries 0 or 1")
    return arr != 0


def _one_hot(ids: np.ndarray, width: int, name: str) -> np.ndarray:
    if ids.size and ids.max() >= width:
        raise ValueError(f"{name} has class id {int(ids.max())} but the other label set has only {width} columns")
    out = np.zeros((ids.shape[0], width), dtype=bool)
    out[np.arange(ids.shape[0]), ids] = True
    return out


def _label_words(mh: np.ndarray) -> np.ndarray:
    """Multi-hot bool (n, C) to (n, ceil(C / 64)) uint64 bit words."""
    packed = np.packbits(mh, axis=1, bitorder="little")
    n_words = max(1, (packed.shape[1] + 7) // 8)
    buf = np.zeros((mh.shape[0], n_words * 8), dtype=np.uint8)
    buf[:, : packed.shape[1]] = packed
    return buf.view(np.uint64)


def _prepare_labels(query_labels: Any, db_labels: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    ql = _check_label_array(query_labels, "query_labels")
    dl = _check_label_array(db_labels, "db_labels")
    if ql.ndim == 1 and dl.ndim == 1:
        return ql.astype(np.uint64)[:, None], dl.astype(np.uint64)[:, None], True
    if ql.ndim == 1:
        ql = _one_hot(ql, dl.shape[1], "query_labels")
    if dl.ndim == 1:
        dl = _one_hot(dl, ql.shape[1], "db_labels")
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"query_labels has {ql.shape[1]} label columns but db_labels has {dl.shape[1]}; they must match"
        )
    return _label_words(ql), _label_words(dl), False


def _cutoff_value(R: Cutoff, n_db: int, name: str = "R") -> int:
    if R is None or (isinstance(R, str) and R.lower() == "all"):
        return n_db
    if isinstance(R, (bool, np.bool_)) or not isinstance(R, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, None or 'all', got {R!r}")
    if int(R) < 1:
        raise ValueError(f"{name} must be >= 1, got {R}")
    return min(int(R), n_db)


def _validate_cutoffs(values: Iterable[Cutoff], name: str, allow_all: bool = True) -> None:
    for v in values:
        if not allow_all and (v is None or isinstance(v, str)):
            raise TypeError(f"{name} must be positive ints, got {v!r}")
        _cutoff_value(v, 1, name)


def _cutoff_key(R: Cutoff) -> str:
    if R is None or (isinstance(R, str) and R.lower() == "all"):
        return "all"
    return str(int(R))


def _check_normalizer(normalizer: str) -> None:
    if normalizer not in _NORMALIZERS:
        raise ValueError(f"normalizer must be one of {_NORMALIZERS}, got {normalizer!r}")


def _as_cutoff_list(values: Union[Cutoff, Iterable[Cutoff]]) -> list[Cutoff]:
    if values is None or isinstance(values, (str, int, np.integer)):
        return [values]
    return list(values)


def _chunk_rows(n_q: int, n_db: int, n_bytes: int, depth: int, memory_budget: int) -> int:
    # Per (query, db) pair: hamming_distance's int32 output plus its temporaries (uint64 xor word, uint8
    # popcount, int32 cast; or 2 bytes per code byte when the width is not a multiple of 8 bytes).
    per_pair = 4 + max(13, 2 * n_bytes + 4)
    per_query = n_db * per_pair + depth + 64
    return int(max(1, min(n_q, memory_budget // per_query)))


# ----------------------------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class RetrievalStats:
    """Per-query sufficient statistics from which every metric of this module is derived."""

    nbits: int
    n_db: int
    cutoffs: np.ndarray  # (m,) int64, sorted, unique, each in [1, n_db]
    level_counts: np.ndarray  # (n_q, nbits + 1) int64: database items at each Hamming distance
    level_relevant: np.ndarray  # (n_q, nbits + 1) int64: relevant items at each Hamming distance
    hits: np.ndarray  # (n_q, m) int64: relevant items in the top cutoffs[c]
    ap_sum: np.ndarray  # (n_q, m) float64: sum_{k <= cutoffs[c]} P(k) rel(k)

    @property
    def n_queries(self) -> int:
        """Number of queries."""
        return int(self.level_counts.shape[0])

    @property
    def n_relevant(self) -> np.ndarray:
        """Relevant items in the whole database, per query."""
        return self.level_relevant.sum(axis=1)

    def _column(self, R: Cutoff, name: str) -> int:
        value = _cutoff_value(R, self.n_db, name)
        idx = int(np.searchsorted(self.cutoffs, value))
        if idx >= self.cutoffs.shape[0] or self.cutoffs[idx] != value:
            raise ValueError(f"{name}={R!r} was not among the cutoffs these statistics were computed for")
        return idx

    def average_precision(self, R: Cutoff = None, normalizer: str = "field") -> np.ndarray:
        """Per-query AP@R with the given normaliser (see the module docstring)."""
        _check_normalizer(normalizer)
        c = self._column(R, "R")
        denom = self.hits[:, c] if normalizer == "field" else self.n_relevant
        out = np.zeros(self.n_queries, dtype=np.float64)
        ok = denom > 0
        out[ok] = self.ap_sum[ok, c] / denom[ok]
        return out

    def precision_at(self, k: Cutoff) -> np.ndarray:
        """Per-query precision@K (K clipped to the database size)."""
        c = self._column(k, "k")
        return self.hits[:, c] / float(self.cutoffs[c])

    def recall_at(self, k: Cutoff) -> np.ndarray:
        """Per-query recall@K; 0 for queries without relevant items."""
        c = self._column(k, "k")
        nrel = self.n_relevant
        out = np.zeros(self.n_queries, dtype=np.float64)
        ok = nrel > 0
        out[ok] = self.hits[ok, c] / nrel[ok]
        return out

    def pr_curve(self, skip_empty: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(radii, precision, recall) for Hamming radii 0..nbits, averaged over queries."""
        retrieved = np.cumsum(self.level_counts, axis=1)
        rel_retrieved = np.cumsum(self.level_relevant, axis=1)
        nrel = self.n_relevant
        nonempty = retrieved > 0
        prec_q = np.zeros(retrieved.shape, dtype=np.float64)
        np.divide(rel_retrieved, retrieved, out=prec_q, where=nonempty)
        rec_q = np.zeros(retrieved.shape, dtype=np.float64)
        np.divide(rel_retrieved, nrel[:, None], out=rec_q, where=nrel[:, None] > 0)
        if skip_empty:
            counts = nonempty.sum(axis=0)
            precision = np.full(retrieved.shape[1], np.nan)
            np.divide(prec_q.sum(axis=0), counts, out=precision, where=counts > 0)
        else:
            precision = prec_q.mean(axis=0)
        radii = np.arange(self.nbits + 1, dtype=np.int64)
        return radii, precision, rec_q.mean(axis=0)

    def precision_within_radius(self, radius: int = 2, skip_empty: bool = False) -> float:
        """Mean precision of the Hamming ball of the given radius (point ``radius`` of the PR curve)."""
        r = _check_radius(radius, self.nbits)
        return float(self.pr_curve(skip_empty)[1][r])


def _check_radius(radius: int, nbits: int) -> int:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)):
        raise TypeError(f"radius must be a non-negative int, got {radius!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return min(int(radius), int(nbits))


def compute_retrieval_stats(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    cutoffs: Iterable[Cutoff] = (),
    *,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> RetrievalStats:
    """Rank the database for every query (chunked) and collect the statistics all metrics need."""
    nbits = int(nbits)
    q = _check_codes(query_codes, nbits, "query_codes")
    db = _check_codes(db_codes, nbits, "db_codes")
    qwords, dwords, class_mode = _prepare_labels(query_labels, db_labels)
    if qwords.shape[0] != q.shape[0]:
        raise ValueError(f"query_labels has {qwords.shape[0]} rows but query_codes has {q.shape[0]}")
    if dwords.shape[0] != db.shape[0]:
        raise ValueError(f"db_labels has {dwords.shape[0]} rows but db_codes has {db.shape[0]}")
    n_q, n_db = q.shape[0], db.shape[0]
    cuts = np.unique(np.array([_cutoff_value(c, n_db, "cutoff") for c in cutoffs], dtype=np.int64))
    depth = int(cuts[-1]) if cuts.size else 0
    if chunk_size is None:
        chunk_size = _chunk_rows(n_q, n_db, q.shape[1], depth, int(memory_budget))
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)

    level_counts = np.zeros((n_q, nbits + 1), dtype=np.int64)
    level_relevant = np.zeros((n_q, nbits + 1), dtype=np.int64)
    hits = np.zeros((n_q, cuts.size), dtype=np.int64)
    ap_sum = np.zeros((n_q, cuts.size), dtype=np.float64)
    for s in range(0, n_q, chunk_size):
        e = min(n_q, s + chunk_size)
        dist = hamming_distance(q[s:e], db)
        _chunk_kernel(
            dist, qwords[s:e], dwords, class_mode, nbits, cuts,
            level_counts[s:e], level_relevant[s:e], hits[s:e], ap_sum[s:e],
        )
        del dist
    return RetrievalStats(nbits, n_db, cuts, level_counts, level_relevant, hits, ap_sum)


# ---------------------------------------------------------------------------------------- public API


def mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    R: Cutoff = None,
    normalizer: str = "field",
    *,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> float:
    """mAP@R (R=None/"all": whole database) with the "field" or "strict" normaliser."""
    _check_normalizer(normalizer)
    _validate_cutoffs([R], "R")
    stats = compute_retrieval_stats(
        query_codes, db_codes, query_labels, db_labels, nbits, [R],
        chunk_size=chunk_size, memory_budget=memory_budget,
    )
    return float(stats.average_precision(R, normalizer).mean())


def map_at_r(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    rs: Sequence[Cutoff] = STANDARD_R,
    normalizer: str = "field",
    *,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, float]:
    """mAP at several cutoffs in one pass, keyed "map@all", "map@1000", ... (default all/1000/5000)."""
    _check_normalizer(normalizer)
    rs = _as_cutoff_list(rs)
    _validate_cutoffs(rs, "rs")
    stats = compute_retrieval_stats(
        query_codes, db_codes, query_labels, db_labels, nbits, rs,
        chunk_size=chunk_size, memory_budget=memory_budget,
    )
    return {f"map@{_cutoff_key(r)}": float(stats.average_precision(r, normalizer).mean()) for r in rs}


def precision_recall_at_ks(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    ks: Sequence[int] = (100, 1000),
    *,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision@K and recall@K for each K in ``ks`` (two float64 arrays of length len(ks))."""
    ks = _as_cutoff_list(ks)
    _validate_cutoffs(ks, "ks", allow_all=False)
    stats = compute_retrieval_stats(
        query_codes, db_codes, query_labels, db_labels, nbits, ks,
        chunk_size=chunk_size, memory_budget=memory_budget,
    )
    precision = np.array([stats.precision_at(k).mean() for k in ks], dtype=np.float64)
    recall = np.array([stats.recall_at(k).mean() for k in ks], dtype=np.float64)
    return precision, recall


def precision_at_k(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    k: int = 100,
    **kwargs: Any,
) -> float:
    """Mean precision@K over queries (K clipped to the database size)."""
    return float(precision_recall_at_ks(query_codes, db_codes, query_labels, db_labels, nbits, [k], **kwargs)[0][0])


def recall_at_k(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    k: int = 100,
    **kwargs: Any,
) -> float:
    """Mean recall@K over queries (queries with no relevant item contribute 0)."""
    return float(precision_recall_at_ks(query_codes, db_codes, query_labels, db_labels, nbits, [k], **kwargs)[1][0])


def precision_recall_curve(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    skip_empty: bool = False,
    *,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radii, precision, recall) over Hamming radii 0..nbits; empty retrievals count 0 unless skip_empty."""
    stats = compute_retrieval_stats(
        query_codes, db_codes, query_labels, db_labels, nbits, (),
        chunk_size=chunk_size, memory_budget=memory_budget,
    )
    return stats.pr_curve(skip_empty)


def precision_within_radius(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    radius: int = 2,
    skip_empty: bool = False,
    *,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> float:
    """Mean precision of the Hamming ball of radius ``radius`` (default 2; empty balls count 0)."""
    _check_radius(radius, int(nbits))
    stats = compute_retrieval_stats(
        query_codes, db_codes, query_labels, db_labels, nbits, (),
        chunk_size=chunk_size, memory_budget=memory_budget,
    )
    return stats.precision_within_radius(radius, skip_empty)


def evaluate(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    nbits: int,
    R: Union[Cutoff, Sequence[Cutoff]] = None,
    topk: Sequence[int] = (100, 1000),
    radius: int = 2,
    normalizer: str = "field",
    *,
    skip_empty: bool = False,
    chunk_size: Optional[int] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, Any]:
    """All metrics in one pass as a JSON-serialisable dict ("map@all", "precision@100", "pr_curve", ...)."""
    _check_normalizer(normalizer)
    rs = _as_cutoff_list(R)
    ks = _as_cutoff_list(topk) if topk is not None else []
    _validate_cutoffs(rs, "R")
    _validate_cutoffs(ks, "topk", allow_all=False)
    r = _check_radius(radius, int(nbits))
    stats = compute_retrieval_stats(
        query_codes, db_codes, query_labels, db_labels, nbits, list(rs) + list(ks),
        chunk_size=chunk_size, memory_budget=memory_budget,
    )
    out: dict[str, Any] = {}
    for cut in rs:
        out[f"map@{_cutoff_key(cut)}"] = float(stats.average_precision(cut, normalizer).mean())
    for k in ks:
        out[f"precision@{int(k)}"] = float(stats.precision_at(k).mean())
        out[f"recall@{int(k)}"] = float(stats.recall_at(k).mean())
    radii, precision, recall = stats.pr_curve(skip_empty)
    out[f"precision@r{int(radius)}"] = float(precision[r])
    out["pr_curve"] = {
        "radius": [int(x) for x in radii],
        "precision": [float(x) for x in precision],
        "recall": [float(x) for x in recall],
    }
    return out


# ----------------------------------------------------------------------------------------------- features


def _feature_moments(feats: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with denominator n − 1) of a feature matrix (n, d), in float64."""
    x = np.asarray(_to_numpy(feats), dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a (n >= 2, d) feature matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n_a, d) and (n_b, d) (FID's formula).

    ``||μa − μb||² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2})``, with sample means and covariances (denominator
    n − 1).
    ``Tr((Σa Σb)^{1/2})`` is computed as ``Tr((Σa^{1/2} Σb Σa^{1/2})^{1/2})`` (same eigenvalues, but a
    symmetric matrix: real, stable eigendecompositions, no complex round-off); the result is clipped at 0.
    """
    mu_a, cov_a = _feature_moments(feats_a, "feats_a")
    mu_b, cov_b = _feature_moments(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature widths differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    w = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_cross = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff) + float(np.trace(cov_a)) + float(np.trace(cov_b)) - 2.0 * tr_cross
    return max(value, 0.0)
