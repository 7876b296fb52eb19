"""Benchmark coophash.index.HammingIndex against FAISS IndexBinaryFlat, side by side in one run.

For each code length it times exhaustive top-k search (ms/query) for every coophash backend and for
FAISS's IndexBinaryFlat on the same codes and queries, and radius search (distance <= r) by multi-index
hashing against the linear scan.  Comparisons are single-threaded: faiss.omp_set_num_threads(1) and
coophash's numba kernels with n_threads=1 (an extra row gives numba with 2 threads).  Every answer is
checked: all coophash backends must return identical (D, I), equal in distances to FAISS, and MIH must
equal the scan.

Queries: half are random codes, half are database codes with 0-2 bits flipped (so radius search finds
something).  JIT compilation is done before any timing (warm-up call); each figure is the best of
--repeat runs, the runs of the different methods interleaved so that machine noise hits them alike.

    python benchmarks/bench_index.py                 # 1M codes, 1,000 queries, k=100, 32/64/128 bits
    python benchmarks/bench_index.py --n 100000      # quick run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss (OpenMP) is imported

import numpy as np  # noqa: E402

from coophash.index import HammingIndex  # noqa: E402


def _make_data(n: int, nq: int, nbits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random packed codes and queries (half near-duplicates of database codes)."""
    rng = np.random.default_rng(seed)
    nb = (nbits + 7) // 8
    db = rng.integers(0, 256, size=(n, nb), dtype=np.uint8)
    if nbits % 8:
        db[:, -1] &= (1 << (nbits % 8)) - 1
    q = rng.integers(0, 256, size=(nq, nb), dtype=np.uint8)
    if nbits % 8:
        q[:, -1] &= (1 << (nbits % 8)) - 1
    half = nq // 2
    src = rng.integers(0, n, size=half)
    q[:half] = db[src]
    for i in range(half):
        for b in rng.choice(nbits, size=int(rng.integers(0, 3)), replace=False):
            q[i, b // 8] ^= np.uint8(1 << (b % 8))
    return db, q


def _best(times: list[float], nq: int) -> float:
    return min(times) / nq * 1e3


def _run_round_robin(methods: dict, repeat: int) -> dict[str, list[float]]:
    """Time every zero-argument callable ``repeat`` times, interleaved; return seconds per run."""
    out: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database codes")
    ap.add_argument("--nq", type=int, default=1000, help="queries")
    ap.add_argument("--k", type=int, default=100, help="neighbours for top-k search")
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128], help="code lengths")
    ap.add_argument("--radius", type=int, default=2, help="radius for range search (inclusive)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per method; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-threads2", action="store_true", help="skip the 2-thread numba row")
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy backend")
    return ap.parse_args(argv)


def _numba_version() -> str:
    try:
        import numba
    except ImportError:
        return "missing"
    return str(numba.__version__)


def _print_setup(args: argparse.Namespace, faiss: Any) -> None:
    print(f"# coophash HammingIndex benchmark  ({_dt.datetime.now().isoformat(timespec='seconds')})")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"numba {_numba_version()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"n={args.n:,} codes, nq={args.nq:,} queries (half near-duplicates), k={args.k}, radius<={args.radius}, "
        f"best of {args.repeat}; FAISS omp threads=1, coophash n_threads=1 unless stated; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}"
    )


def _backends(args: argparse.Namespace, nbits: int, db: np.ndarray, q: np.ndarray) -> dict[str, HammingIndex]:
    """The coophash indexes compared, filled with ``db`` and warmed up (JIT compiled, FAISS index built)."""
    backends: dict[str, HammingIndex] = {"numba": HammingIndex(nbits, "numba", n_threads=1)}
    if not args.no_threads2:
        backends["numba, 2 threads"] = HammingIndex(nbits, "numba", n_threads=2)
    if not args.no_numpy:
        backends["numpy"] = HammingIndex(nbits, "numpy")
    backends["faiss (coophash wrapper)"] = HammingIndex(nbits, "faiss")
    for idx in backends.values():
        idx.add(db)
        idx.search(q[:2], args.k)  # warm-up: JIT compile / cache load, FAISS index build
    return backends


def _topk_rows(args: argparse.Namespace, nbits: int, q: np.ndarray, fidx: Any,
               backends: dict[str, HammingIndex]) -> tuple[list[str], bool]:
    """Exhaustive top-k: table rows (FAISS first) and whether every answer agrees."""
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def runner(name: str, idx: HammingIndex) -> Callable[[], None]:
        def fn() -> None:
            results[name] = idx.search(q, args.k)
        return fn

    fres: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def faiss_fn() -> None:
        fres["faiss"] = fidx.search(q, args.k)

    methods = {"FAISS IndexBinaryFlat": faiss_fn}
    methods.update({name: runner(name, idx) for name, idx in backends.items()})
    times = _run_round_robin(methods, args.repeat)
    t_faiss = _best(times["FAISS IndexBinaryFlat"], args.nq)
    D_ref, I_ref = results["numba"]
    same_d_as_faiss = np.array_equal(D_ref, fres["faiss"][0].astype(np.int32))
    all_ok = bool(same_d_as_faiss)
    rows = [f"| {nbits} | FAISS IndexBinaryFlat | {t_faiss:.3f} | 1.00 | reference |"]
    for name in backends:
        t = _best(times[name], args.nq)
        D, I = results[name]
        ok = np.array_equal(D, D_ref) and np.array_equal(I, I_ref) and same_d_as_faiss
        all_ok &= ok
        rows.append(f"| {nbits} | {name} | {t:.3f} | {t_faiss / t:.2f} | {'identical' if ok else 'MISMATCH'} |")
    return rows, all_ok


def _radius_row(args: argparse.Namespace, nbits: int, q: np.ndarray, fidx: Any, idx: HammingIndex) -> tuple[str, bool]:
    """Radius search, MIH against the scan (numba backend, single thread) and FAISS: one table row, agreement."""
    r = args.radius
    idx.range_search(q[:2], r, method="scan")  # warm-up (JIT)
    t0 = time.perf_counter()
    idx.range_search(q[:1], r, method="mih")  # builds the MIH tables (+ warm-up)
    t_build = time.perf_counter() - t0
    idx.range_search(q[:2], r, method="mih")
    rres: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def rs(method: str) -> Callable[[], None]:
        def fn() -> None:
            rres[method] = idx.range_search(q, r, method=method)
        return fn

    def faiss_range() -> None:
        rres["faiss"] = fidx.range_search(q, r + 1)

    rtimes = _run_round_robin({"scan": rs("scan"), "mih": rs("mih"), "faiss": faiss_range}, args.repeat)
    idx.range_search(q[:1], r, method="auto")
    auto_choice = idx.last_range_method
    t_scan = _best(rtimes["scan"], args.nq)
    t_mih = _best(rtimes["mih"], args.nq)
    t_frange = _best(rtimes["faiss"], args.nq)
    ok = all(np.array_equal(a, b) for a, b in zip(rres["scan"], rres["mih"]))
    ok &= np.array_equal(rres["scan"][0], np.asarray(rres["faiss"][0], dtype=np.int64))
    hits = rres["mih"][0][-1] / args.nq
    row = (f"| {nbits} | {r} | {t_scan:.4f} | {t_mih * 1e3:.2f} | {t_scan / t_mih:,.0f}x | {t_frange:.3f} "
           f"| {t_build:.2f} | {hits:.2f} | {auto_choice} | {'identical' if ok else 'MISMATCH'} |")
    return row, bool(ok)


def _print_tables(args: argparse.Namespace, topk_rows: list[str], radius_rows: list[str], all_ok: bool) -> None:
    print()
    print(f"## Exhaustive top-{args.k} (ms/query; speed-up = FAISS time / ours, >1 means faster than FAISS)")
    print()
    print("| bits | method | ms/query | speed-up vs FAISS | answers |")
    print("|---:|---|---:|---:|---|")
    print("\n".join(topk_rows))
    print()
    print(f"## Radius search, distance <= {args.radius} (numba backend, 1 thread)")
    print()
    print(
        "| bits | r | scan ms/query | MIH us/query | MIH speed-up | FAISS range_search ms/query "
        "| MIH build s | hits/query | auto picks | answers |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    print("\n".join(radius_rows))
    print()
    print("all answers checked:", "OK" if all_ok else "MISMATCH FOUND")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print markdown tables."""
    args = _parse_args(argv)
    try:
        import faiss
    except ImportError:
        print("faiss is not installed; this benchmark compares against faiss.IndexBinaryFlat", file=sys.stderr)
        return 2
    faiss.omp_set_num_threads(1)
    _print_setup(args, faiss)
    topk_rows: list[str] = []
    radius_rows: list[str] = []
    all_ok = True
    for nbits in args.bits:
        db, q = _make_data(args.n, args.nq, nbits, args.seed + nbits)
        fidx = faiss.IndexBinaryFlat(8 * db.shape[1])
        fidx.add(db)
        fidx.search(q[:2], args.k)
        backends = _backends(args, nbits, db, q)
        rows, ok = _topk_rows(args, nbits, q, fidx, backends)
        topk_rows += rows
        all_ok &= ok
        row, ok = _radius_row(args, nbits, q, fidx, backends["numba"])
        radius_rows.append(row)
        all_ok &= ok
        del backends, fidx
    _print_tables(args, topk_rows, radius_rows, all_ok)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
