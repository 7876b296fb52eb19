"""Optional FAISS backend: ``faiss.IndexBinaryFlat`` scans, post-processed to coophash's exact contract.

* FAISS needs ``d % 8 == 0`` and is slow on widths it has no specialised kernel for (under 4 bytes, odd
  widths), so the codes given to FAISS are zero-padded to whole 64-bit words; zero padding on both sides
  leaves every distance unchanged.
* FAISS does not promise an order among equal distances, so top-k asks FAISS for more than ``k`` results
  until the k-th distance is strictly below the last returned one (then every code tied at the k-th
  distance is in hand) and re-sorts by (distance, insertion order).
* FAISS binary ``range_search`` keeps ``distance < radius`` (strict); we pass ``r + 1``.

``faiss`` is imported lazily, on first use.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._kernels import SENTINEL


def import_faiss() -> Any:
    """Import faiss or raise an ImportError that says how to get it."""
    try:
        import faiss  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'faiss' backend needs faiss-cpu: pip install 'coophash[faiss]' (or faiss-cpu)"
        ) from exc
    return faiss


def have_faiss() -> bool:
    """Whether faiss can be imported."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def build_flat(padded_bytes: np.ndarray) -> Any:
    """An IndexBinaryFlat over zero-padded codes ``(n, 8W)`` uint8."""
    faiss = import_faiss()
    index = faiss.IndexBinaryFlat(padded_bytes.shape[1] * 8)
    if padded_bytes.shape[0]:
        index.add(np.ascontiguousarray(padded_bytes))
    return index


def _stable_rerank(D: np.ndarray, P: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, position), -1 positions last, and keep k columns."""
    Dk = np.where(P < 0, np.int64(SENTINEL), D.astype(np.int64))
    Pk = np.where(P < 0, np.iinfo(np.int64).max, P)
    order = np.lexsort((Pk, Dk), axis=1)[:, :k] if D.shape[0] else np.zeros((0, k), dtype=np.int64)
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(P, order, axis=1)


def topk(index: Any, q_padded: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k through FAISS with ties broken by insertion order: ``(D int32, I int64)``."""
    n = int(index.ntotal)
    nq = q_padded.shape[0]
    D = np.full((nq, k), SENTINEL, dtype=np.int32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return D, I
    todo = np.arange(nq)
    kk = min(n, 2 * k + 16)
    while todo.size:
        Df, Pf = index.search(np.ascontiguousarray(q_padded[todo]), kk)
        Df = Df.astype(np.int32, copy=False)
        if kk >= n:
            done = np.ones(todo.size, dtype=bool)
        else:
            kth = np.sort(Df, axis=1)[:, min(k, kk) - 1]
            done = Df.max(axis=1) > kth
        Ds, Ps = _stable_rerank(Df[done], Pf[done], k)
        rows = todo[done]
        c = Ds.shape[1]
        D[rows, :c] = Ds
        I[rows, :c] = np.where(Ps >= 0, ids[np.maximum(Ps, 0)], -1)
        todo = todo[~done]
        kk = min(n, kk * 4)
    return D, I


def range_search(
    index: Any, q_padded: np.ndarray, ids: np.ndarray, r: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All codes with distance ``<= r`` through FAISS (radius ``r + 1``), sorted by (distance, insertion)."""
    nq = q_padded.shape[0]
    if int(index.ntotal) == 0 or nq == 0:
        return np.zeros(nq + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    lims, Df, Pf = index.range_search(np.ascontiguousarray(q_padded), int(r) + 1)
    lims = np.asarray(lims, dtype=np.int64)
    Df = np.asarray(Df).astype(np.int64)
    Pf = np.asarray(Pf, dtype=np.int64)
    qidx = np.repeat(np.arange(nq), np.diff(lims))
    order = np.lexsort((Pf, Df, qidx))
    return lims, Df[order].astype(np.int32), ids[Pf[order]].astype(np.int64, copy=False)
