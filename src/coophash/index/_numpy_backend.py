"""Pure NumPy Hamming scan: XOR + ``np.bitwise_count`` on uint64 words and a counting threshold.

Top-k never runs ``argpartition`` over the whole database: distances live in the small range
``0..nbits``, so the k-th smallest distance ``t`` is found from a sampled histogram refined by exact
``count_nonzero(d <= t)`` passes; only the few codes with ``d <= t`` are then sorted (stably, so ties keep
insertion order).
"""
from __future__ import annotations

import numpy as np

from ._kernels import SENTINEL

#: Queries computed together while one chunk of the database is in cache.
QUERY_BLOCK = 8
#: Database rows per chunk.
ROW_CHUNK = 1 << 15


def _dist_dtype(nbits: int) -> type:
    return np.uint8 if nbits <= 255 else np.uint16


def distances_block(words: np.ndarray, q: np.ndarray, nbits: int) -> np.ndarray:
    """Hamming distances ``(b, n)`` between row-major query words ``q (b, W)`` and word-major ``words (W, n)``."""
    W, n = words.shape
    b = q.shape[0]
    out = np.empty((b, n), dtype=_dist_dtype(nbits))
    chunk = min(ROW_CHUNK, max(n, 1))
    tmp = np.empty(chunk, dtype=np.uint64)
    cnt = np.empty(chunk, dtype=np.uint8)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        m = c1 - c0
        t, c = tmp[:m], cnt[:m]
        for j in range(b):
            o = out[j, c0:c1]
            for w in range(W):
                np.bitwise_xor(words[w, c0:c1], q[j, w], out=t)
                if w == 0:
                    np.bitwise_count(t, out=c if o.dtype != np.uint8 else o)
                    if o.dtype != np.uint8:
                        o[...] = c
                else:
                    np.bitwise_count(t, out=c)
                    np.add(o, c, out=o)
    return out


def kth_threshold(d: np.ndarray, k: int, nbits: int) -> int:
    """Smallest ``t`` with ``count(d <= t) >= k`` (``k <= d.size``), by sampled histogram + exact counts."""
    n = d.size
    stride = max(1, n // 32768)
    sample = d[::stride]
    cum = np.cumsum(np.bincount(sample, minlength=nbits + 1))
    want = max(1, int(np.ceil(k * sample.size / n)))
    t = int(min(np.searchsorted(cum, want), nbits))
    if np.count_nonzero(d <= t) >= k:
        while t > 0 and np.count_nonzero(d <= t - 1) >= k:
            t -= 1
    else:
        t += 1
        while np.count_nonzero(d <= t) < k:
            t += 1
    return t


def topk(words: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by scan (``words`` word-major ``(W, n)``): ``(D int32 (nq, k), I int64 (nq, k))``, stable ties."""
    n = words.shape[1]
    nq = q.shape[0]
    D = np.full((nq, k), SENTINEL, dtype=np.int32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if n == 0:
        return D, I
    for q0 in range(0, nq, QUERY_BLOCK):
        dist = distances_block(words, q[q0 : q0 + QUERY_BLOCK], nbits)
        for j in range(dist.shape[0]):
            d = dist[j]
            if k >= n:
                cand = np.arange(n)
                dc = d
            else:
                t = kth_threshold(d, k, nbits)
                cand = np.flatnonzero(d <= t)
                dc = d[cand]
            order = np.argsort(dc, kind="stable")[:k]
            c = order.size
            D[q0 + j, :c] = dc[order]
            I[q0 + j, :c] = ids[cand[order]]
    return D, I


def range_scan(
    words: np.ndarray, q: np.ndarray, ids: np.ndarray, r: int, nbits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All codes within ``<= r`` of each query by scan: ``(lims, D, I)`` sorted by (distance, insertion)."""
    nq = q.shape[0]
    lims = np.zeros(nq + 1, dtype=np.int64)
    out_d: list[np.ndarray] = []
    out_i: list[np.ndarray] = []
    if words.shape[1] > 0:
        for q0 in range(0, nq, QUERY_BLOCK):
            dist = distances_block(words, q[q0 : q0 + QUERY_BLOCK], nbits)
            for j in range(dist.shape[0]):
                cand = np.flatnonzero(dist[j] <= r)
                dc = dist[j][cand]
                order = np.argsort(dc, kind="stable")
                out_d.append(dc[order].astype(np.int32))
                out_i.append(ids[cand[order]])
                lims[q0 + j + 1] = cand.size
    np.cumsum(lims, out=lims)
    if out_d:
        return lims, np.concatenate(out_d), np.concatenate(out_i).astype(np.int64, copy=False)
    return lims, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
