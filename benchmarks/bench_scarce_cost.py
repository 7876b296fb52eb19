"""Seconds per training step of the scarce-label entries, interleaved in one process (fair under shared load).

    python benchmarks/bench_scarce_cost.py --entries dpsh,semi-dpsh,coop-bn [--suite benchmarks/scarce.yaml]

Each entry of the suite is built at 2% labels, seed 0, and stepped in short alternating bursts (round 0 warms
up), so load from other jobs hits every entry alike; CoopHash's cooperative phases are forced on (past its
warm-up; each burst is a multiple of every entry's ``coop_interval`` steps, so every burst holds the same share of
cooperative steps). Prints a markdown table: median seconds per step, ratio to the first entry, seconds per epoch.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from coophash.suite import load_suite, plan_suite
from coophash.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="benchmarks/scarce.yaml")
    ap.add_argument("--entries", default="dpsh,semi-dpsh,coop-bn")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="steps per burst: a multiple of every entry's coop_interval")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    names = args.entries.split(",")
    plan = plan_suite(load_suite(args.suite), out=tempfile.mkdtemp())
    cfgs = {}
    for run in plan.runs:
        if run.method in names and run.cfg.label_fraction == 0.02 and run.cfg.seed == 0 and run.method not in cfgs:
            cfgs[run.method] = run.cfg.replace(threads=args.threads)
    missing = [n for n in names if n not in cfgs]
    if missing:
        raise SystemExit(f"no run at 2% labels, seed 0 for {missing} in {args.suite}")
    for n, cfg in cfgs.items():  # every burst must hold the same share of the steps that run the cooperative phases
        interval = int(cfg.method_args.get("coop_interval", 1)) if cfg.method == "coophash" else 1
        if args.steps % interval:
            raise SystemExit(f"--steps {args.steps} is not a multiple of {n}'s coop_interval {interval}: bursts "
                             "would alternate between more and fewer cooperative steps")
    tmp = Path(tempfile.mkdtemp())
    trainers, sched, times = {}, {}, {n: [] for n in names}
    for n in names:
        tr = Trainer(cfgs[n], tmp / n)
        if cfgs[n].method == "coophash":
            tr.method.clock.step.fill_(10**6)  # past warm-up and ramp: every phase runs
        trainers[n], sched[n] = tr, tr.schedule.epoch(0)
    step = 0
    for r in range(args.rounds + 1):
        for n in names:
            tr = trainers[n]
            lab, unl = sched[n]
            t = time.perf_counter()
            for s in range(args.steps):
                i = (step + s) % len(lab)  # past one epoch's schedule: its batches again
                tr._step(tr._batch(lab[i], unl[i]), 10**6 + step + s)
            if r > 0:
                times[n].append((time.perf_counter() - t) / args.steps)
        step += args.steps
    base = statistics.median(times[names[0]])
    spe = trainers[names[0]].schedule.steps_per_epoch
    print(f"| entry | s/step | × {names[0]} | s/epoch ({spe} steps) |")
    print("|---|---|---|---|")
    for n in names:
        med = statistics.median(times[n])
        print(f"| {n} | {med:.3f} | {med / base:.1f}× | {med * spe:.1f} |")


if __name__ == "__main__":
    main()
