"""Training throughput with 1 and 2 (or more) data-parallel processes, side by side in one run.

Each row is one ``torchrun --nproc-per-node N -m coophash train`` run of the same config (global batch
``--batch-size``, split over the N processes, so every row takes the same optimiser steps on the same images).
Throughput is read from the run's ``metrics.jsonl``: images per second = steps × global batch / seconds of an
epoch's training loop (rank 0's clock; validation and checkpoints are outside it), the first epoch left out
when there are several (warm-up).  On the CPU the cores are shared out: ``--threads-total`` torch threads in all,
``threads-total / N`` per process (gloo); with ``--device cuda`` each process drives one GPU (NCCL).

    python benchmarks/bench_distributed.py                      # mnist5k, DPSH, 1 and 2 processes, 2 epochs
    python benchmarks/bench_distributed.py --procs 1,2,4 --device cuda --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(nproc: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One torchrun training run; its throughput figures."""
    threads = max(1, args.threads_total // nproc) if args.device == "cpu" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), "-m", "coophash", "train", "--method", args.method,
           "--loss", args.loss, "--dataset", args.dataset, "--bits", str(args.bits), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--device", args.device,
           "--threads", str(threads), "--out", str(out), "--quiet", "--set", "checkpoint_every=0",
           "--set", f"eval_every={args.epochs}", *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {nproc} process(es) failed:\n{proc.stdout[-3000:]}")
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name[:1].isdigit()]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if "epoch" in r and "seconds" in r]
    per_epoch = [(r["step"] - (epochs[i - 1]["step"] if i else 0), r["seconds"]) for i, r in enumerate(epochs)]
    timed = per_epoch[1:] if len(per_epoch) > 1 else per_epoch  # the first epoch warms up
    steps, seconds = sum(s for s, _ in timed), sum(t for _, t in timed)
    final = [r for r in records if r.get("final")]
    return {"procs": nproc, "threads": threads, "steps": steps, "seconds": seconds,
            "images_per_s": steps * args.batch_size / seconds, "wall_s": wall,
            "map": final[-1].get("map@all") if final else None}


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The rows as a Markdown table, speed-up against the first row."""
    base = rows[0]["images_per_s"]
    backend = "nccl" if args.device == "cuda" else "gloo"
    lines = ["| processes | threads/process | backend | batch/process | s/epoch | images/s | speed-up | "
             "mAP@all | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = args.batch_size / r["procs"]
        n_ep = max(1, args.epochs - 1)
        mp = "—" if r["map"] is None else f"{r['map']:.3f}"
        lines.append(f"| {r['procs']} | {r['threads'] if args.device == 'cpu' else '—'} | "
                     f"{backend if r['procs'] > 1 else '(none)'} | {per:g} | {r['seconds'] / n_ep:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}× | {mp} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2", help="comma-separated process counts")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads-total", type=int, default=os.cpu_count() or 1,
                    help="CPU: torch threads shared out over the processes of a row")
    ap.add_argument("--method", default="supervised")
    ap.add_argument("--loss", default="dpsh")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("extra", nargs="*", help="more `coophash train` arguments (after --)")
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in procs:
            rows.append(_run(n, args, Path(tmp) / f"p{n}"))
            print(f"  {n} process(es): {rows[-1]['images_per_s']:.0f} images/s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"# Data-parallel training throughput: {args.method}/{args.loss} on {args.dataset}, {args.bits} bits, "
          f"global batch {args.batch_size}, {args.epochs} epoch(s) ({'first left out' if args.epochs > 1 else 'all'})")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(_table(rows, args))


if __name__ == "__main__":
    main()
