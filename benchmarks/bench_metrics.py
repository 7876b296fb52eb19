"""Benchmark coophash.metrics: timings on 1,000 x 100,000 codes and peak memory of a 10k x 1M chunked run.

Usage::

    python benchmarks/bench_metrics.py                      # 1k x 100k timings + 1k x 1M memory run,
                                                            # time extrapolated to 10k x 1M
    python benchmarks/bench_metrics.py --full               # really run 10k queries x 1M database
    python benchmarks/bench_metrics.py --large-queries 2000 # choose the measured query count instead

Memory does not grow with the number of queries (only the (n_q, nbits + 1) histograms do), so peak memory
of a 1k x 1M run is that of a 10k x 1M run up to ~10 MB of per-query statistics; time scales linearly in
the number of queries.  Peak memory is the process's peak resident set size (VmHWM, reset before the run
where Linux allows it) minus the resident size before the run.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from coophash.codes import pack_bits
from coophash.metrics import (
    DEFAULT_MEMORY_BUDGET,
    compute_retrieval_stats,
    evaluate,
    mean_average_precision,
    precision_recall_at_ks,
    precision_recall_curve,
)


def make_data(n_q: int, n_db: int, nbits: int, n_classes: int, seed: int = 0):
    """Random single-label data (one-hot labels) whose codes correlate with the class."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, size=(n_classes, nbits), dtype=np.uint8)

    def codes(labels: np.ndarray) -> np.ndarray:
        out = np.empty((labels.shape[0], (nbits + 7) // 8), dtype=np.uint8)
        step = 200_000
        for s in range(0, labels.shape[0], step):
            lab = labels[s : s + step]
            # Per-item noise level from 2% to 40% of the bits: a mix of easy and hard items.
            rate = rng.uniform(0.02, 0.4, size=(lab.shape[0], 1))
            flip = (rng.random((lab.shape[0], nbits)) < rate).astype(np.uint8)
            out[s : s + step] = pack_bits(centres[lab] ^ flip)
        return out

    q_cls = rng.integers(0, n_classes, n_q)
    d_cls = rng.integers(0, n_classes, n_db)
    q_lab = np.eye(n_classes, dtype=np.uint8)[q_cls]
    d_lab = np.eye(n_classes, dtype=np.uint8)[d_cls]
    return codes(q_cls), codes(d_cls), q_lab, d_lab


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--ndb", type=int, default=100_000)
    ap.add_argument("--nbits", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--large-db", type=int, default=1_000_000)
    ap.add_argument("--large-queries", type=int, default=1000, help="queries actually run in the memory test")
    ap.add_argument("--target-queries", type=int, default=10_000, help="query count the time is extrapolated to")
    ap.add_argument("--full", action="store_true", help="run all --target-queries queries (no extrapolation)")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--memory-budget", type=int, default=DEFAULT_MEMORY_BUDGET)
    args = ap.parse_args()

    print(f"cpus={os.cpu_count()}  memory_budget={args.memory_budget / 2**20:.0f} MiB")
    # JIT warm-up (compilation is cached on disk after the first run).
    q, d, ql, dl = make_data(8, 64, args.nbits, args.classes, seed=1)
    t_jit, _ = timed(evaluate, q, d, ql, dl, args.nbits)
    print(f"warm-up (numba compile or cache load): {t_jit:.2f} s")

    q, d, ql, dl = make_data(args.nq, args.ndb, args.nbits, args.classes)
    tag = f"{args.nq} x {args.ndb}, {args.nbits} bits, {args.classes} classes"
    kw = {"memory_budget": args.memory_budget}
    t, m = timed(mean_average_precision, q, d, ql, dl, args.nbits, None, **kw)
    print(f"[{tag}] mAP@all              {t:7.2f} s   (map={m:.4f})")
    t, m = timed(mean_average_precision, q, d, ql, dl, args.nbits, 1000, **kw)
    print(f"[{tag}] mAP@1000             {t:7.2f} s   (map={m:.4f})")
    t, (p, r) = timed(precision_recall_at_ks, q, d, ql, dl, args.nbits, (100, 1000), **kw)
    print(f"[{tag}] P@K,R@K K=100,1000   {t:7.2f} s   (P={p.round(4).tolist()}, R={r.round(4).tolist()})")
    t, (_, p, r) = timed(precision_recall_curve, q, d, ql, dl, args.nbits, **kw)
    print(f"[{tag}] PR curve (radii)     {t:7.2f} s   (P@r2={p[2]:.4f})")
    t, res = timed(evaluate, q, d, ql, dl, args.nbits, R=(None, 1000, 5000), **kw)
    print(f"[{tag}] evaluate (all, one pass) {t:5.2f} s")

    if args.skip_large:
        return
    n_run = args.target_queries if args.full else args.large_queries
    q, d, ql, dl = make_data(n_run, args.large_db, args.nbits, args.classes, seed=2)
    base = _rss_bytes("VmRSS")
    reset = _reset_peak()
    t, _ = timed(
        compute_retrieval_stats, q, d, ql, dl, args.nbits, (None, 100, 1000, 5000), **kw
    )
    peak = _rss_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tag = f"{n_run} x {args.large_db}"
    print(f"[{tag}] all stats (mAP@all/1000/5000, P@K, PR) {t:.2f} s; "
          f"peak RSS above baseline {(peak - base) / 2**20:.0f} MiB (peak reset: {reset})")
    if n_run != args.target_queries:
        est = t * args.target_queries / n_run
        print(f"[extrapolated {args.target_queries} x {args.large_db}] ~{est:.0f} s; memory is independent of n_q "
              f"(+{args.target_queries * (args.nbits + 1) * 16 / 2**20:.0f} MiB of per-query histograms)")


if __name__ == "__main__":
    main()
