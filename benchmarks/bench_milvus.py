"""Benchmark HammingIndex against Milvus (BIN_FLAT, BIN_IVF_FLAT) on the same random codes, in one run.

Starts PyPI's embedded standalone Milvus (``coophash.index.milvus.embedded_server``, data in a temporary
folder), loads the codes into two collections (exact ``BIN_FLAT``; ``BIN_IVF_FLAT`` with ``nlist`` lists,
flushed so that the IVF lists serve the queries), and times top-k search:

* ``ms/query (batch)``: wall time of one request carrying all queries, per query;
* ``ms/query (1 query)``: median wall time of one-query requests (the latency a user sees);
* ``server CPU ms/query``: CPU time the Milvus process spent on the batch, per query (user + system, read
  from /proc): the cost per query on one core, whatever the number of threads;
* ``recall@k``: returned codes no farther than the true k-th neighbour, over ``k`` (ties count as found).

HammingIndex runs the numba kernel on one thread (its CPU time is its wall time).  Queries: half random,
half database codes with 0-2 bits flipped.  Memory: Milvus server RSS before/after loading, from /proc.

    python benchmarks/bench_milvus.py                    # 1M 64-bit codes, 500 queries, k=100
    python benchmarks/bench_milvus.py --n 100000         # quick run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from coophash.index import HammingIndex  # noqa: E402
from coophash.index.milvus import MilvusIndex, embedded_server, import_pymilvus  # noqa: E402


def _make_data(n: int, nq: int, nbits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random packed codes and queries (half near-duplicates of database codes)."""
    rng = np.random.default_rng(seed)
    nb = (nbits + 7) // 8
    db = rng.integers(0, 256, size=(n, nb), dtype=np.uint8)
    q = rng.integers(0, 256, size=(nq, nb), dtype=np.uint8)
    if nbits % 8:
        db[:, -1] &= (1 << (nbits % 8)) - 1
        q[:, -1] &= (1 << (nbits % 8)) - 1
    half = nq // 2
    q[:half] = db[rng.integers(0, n, size=half)]
    for i in range(half):
        for b in rng.choice(nbits, size=int(rng.integers(0, 3)), replace=False):
            q[i, b // 8] ^= np.uint8(1 << (b % 8))
    return db, q


def _server_pid() -> int | None:
    """Pid of the embedded ``milvus run standalone`` child of this process (None if not found)."""
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children", encoding="ascii") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if b"standalone" in c.read():
                        return int(pid)
    return None


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _recall(D: np.ndarray, Dtrue: np.ndarray, k: int) -> float:
    """Returned codes no farther than the true k-th neighbour, over k (tie-aware recall@k)."""
    return float(np.mean(np.minimum((D <= Dtrue[:, -1:]).sum(axis=1), k)) / k)


def _time(fn: Callable[[], Any], repeat: int, pid: int | None) -> tuple[float, float, Any]:
    """Best wall seconds and the server CPU seconds of that run, over ``repeat`` runs; the last result."""
    best, cpu, out = float("inf"), float("nan"), None
    for _ in range(repeat):
        c0, t0 = _cpu_s(pid), time.perf_counter()
        out = fn()
        dt, dc = time.perf_counter() - t0, _cpu_s(pid) - c0
        if dt < best:
            best, cpu = dt, dc
    return best, cpu, out


def _single_ms(search: Callable[[np.ndarray, int], Any], q: np.ndarray, k: int, m: int) -> float:
    """Median wall ms of ``m`` one-query requests."""
    times = []
    for i in range(min(m, q.shape[0])):
        t0 = time.perf_counter()
        search(q[i:i + 1], k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _load(uri: str, name: str, db: np.ndarray, nbits: int, **kw: Any) -> tuple[MilvusIndex, float, float]:
    """A collection holding ``db``, flushed and indexed; (index, insert seconds, flush+index seconds)."""
    index = MilvusIndex(uri, name, nbits, **kw)
    t0 = time.perf_counter()
    index.add(db)
    t1 = time.perf_counter()
    index.flush()
    return index, t1 - t0, time.perf_counter() - t1


def _row(name: str, nq: int, wall: float, cpu: float, single: float, rec: float, note: str) -> str:
    return f"| {name} | {wall / nq * 1e3:.3f} | {single:.2f} | {cpu / nq * 1e3:.3f} | {rec:.4f} | {note} |"


def _bench_width(args: argparse.Namespace, uri: str, pid: int | None, nbits: int) -> list[str]:
    """Table rows for one code width."""
    db, q = _make_data(args.n, args.nq, nbits, args.seed)
    k, nq, rows = args.k, args.nq, []
    ref = HammingIndex(nbits, n_threads=1)
    ref.add(db)
    ref.search(q[:2], k)  # JIT warm-up
    wall, _, (Dt, _) = _time(lambda: ref.search(q, k), args.repeat, None)
    single = _single_ms(ref.search, q, k, args.single)
    rows.append(_row(f"{nbits} | HammingIndex (numba, 1 thread)", nq, wall, wall, single, 1.0,
                     f"{db.nbytes / 2**20:.0f} MiB of codes"))
    rss0 = _rss_mb(pid)
    flat, t_ins, t_idx = _load(uri, f"bench_flat_{nbits}", db, nbits)
    rss1 = _rss_mb(pid)
    wall, cpu, (D, _) = _time(lambda: flat.search(q, k), args.repeat, pid)
    assert np.array_equal(D, Dt), "BIN_FLAT distances differ from HammingIndex"
    single = _single_ms(flat.search, q, k, args.single)
    rows.append(_row(f"{nbits} | Milvus BIN_FLAT", nq, wall, cpu, single, _recall(D, Dt, k),
                     f"insert {t_ins:.0f} s, flush+index {t_idx:.0f} s, server RSS +{rss1 - rss0:.0f} MiB"))
    flat.drop()
    ivf, t_ins, t_idx = _load(uri, f"bench_ivf_{nbits}", db, nbits, index_type="BIN_IVF_FLAT", nlist=args.nlist)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        wall, cpu, (D, _) = _time(lambda: ivf.search(q, k), args.repeat, pid)
        single = _single_ms(ivf.search, q, k, args.single)
        note = f"insert {t_ins:.0f} s, flush+IVF build {t_idx:.0f} s" if nprobe == args.nprobe[0] else ""
        rows.append(_row(f"{nbits} | Milvus BIN_IVF_FLAT nlist={args.nlist} nprobe={nprobe}", nq, wall, cpu,
                         single, _recall(D, Dt, k), note))
    ivf.drop()
    return rows


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database codes")
    ap.add_argument("--nq", type=int, default=500, help="queries")
    ap.add_argument("--k", type=int, default=100, help="neighbours")
    ap.add_argument("--bits", type=int, nargs="+", default=[64], help="code lengths")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    ap.add_argument("--nprobe", type=int, nargs="+", default=None, help="IVF lists probed (default 1 8 32 128 nlist)")
    ap.add_argument("--single", type=int, default=20, help="one-query requests timed for the latency column")
    ap.add_argument("--repeat", type=int, default=2, help="runs per batch; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.nprobe is None:
        args.nprobe = sorted({p for p in (1, 8, 32, 128) if p < args.nlist} | {args.nlist})
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the setup and a Markdown table."""
    args = _parse_args(argv)
    t_start = time.perf_counter()
    pm = import_pymilvus()
    print(f"# coophash Milvus benchmark  ({_dt.datetime.now().isoformat(timespec='seconds')})")
    print(f"python {platform.python_version()}, numpy {np.__version__}, pymilvus {pm.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs")
    print(f"n={args.n:,} codes, nq={args.nq} queries (half near-duplicates), k={args.k}, best of {args.repeat}")
    data = tempfile.mkdtemp(prefix="coophash-milvus-bench-")
    try:
        with embedded_server(data) as uri:
            pid = _server_pid()
            print(f"embedded Milvus at {uri} (pid {pid}, idle RSS {_rss_mb(pid):.0f} MiB)\n")
            print("| bits | method | ms/query (batch) | ms/query (1 query) | server CPU ms/query | recall@"
                  f"{args.k} | notes |")
            print("|---:|---|---:|---:|---:|---:|---|")
            for nbits in args.bits:
                for line in _bench_width(args, uri, pid, nbits):
                    print(line, flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
