"""Search cost of the suite's ``cost`` experiment: ms/query of our HammingIndex against FAISS, same codes."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from coophash.index import HammingIndex, available_backends

__all__ = ["search_cost"]


def search_cost(bits: int, n_database: int, n_queries: int, k: int, repeats: int = 3, seed: int = 0) -> dict:
    """ms/query of a top-k search: our HammingIndex against FAISS IndexBinaryFlat, one thread each, same codes."""
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
