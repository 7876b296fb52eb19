"""Tables of the scarce-label suite (benchmarks/scarce.yaml) from its result cache, as markdown.

    python benchmarks/scarce_tables.py bench/scarce      # after: coophash bench benchmarks/scarce.yaml --out bench/scarce

Reads every ``<out>/results/*.json``, names each run by the suite entry whose config it matches, and prints:
the main table (mean ± sample std over seeds, n), paired differences against DPSH on the same seeds (same split,
same labeled subset), the variants with their validation mAP (the selection criterion) beside the query mAP, and
training seconds per epoch (median epoch, optimiser steps only, measured while other runs shared the 2 cores).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


from coophash.suite import load_suite, plan_suite


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.4f} (1)"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f} ({len(vals)})"


def _load(out: Path, suite_path: str) -> dict[str, dict[tuple[float, int], dict]]:
    """entry name -> (label fraction, seed) -> cached result."""
    plan = plan_suite(load_suite(suite_path), out=str(out))
    by_key = {json.loads(p.read_text())["key"]: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    runs: dict[str, dict[tuple[float, int], dict]] = {}
    for run in plan.runs:
        rec = by_key.get(run.key)
        if rec is not None:
            runs.setdefault(run.method, {})[(float(run.cfg.label_fraction), int(run.cfg.seed))] = rec
    return runs


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scarce")
    suite_path = sys.argv[2] if len(sys.argv) > 2 else "benchmarks/scarce.yaml"
    runs = _load(out, suite_path)
    fractions = [0.02, 0.1, 1.0]
    print("| method | " + " | ".join(f"labels {lf:g}" for lf in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    for name, recs in runs.items():
        cells = [_fmt([r["map@all"] for (lf, _), r in sorted(recs.items()) if lf == f]) for f in fractions]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nPaired differences against dpsh (same seeds; mean ± std of the differences, n):\n")
    print("| method | " + " | ".join(f"labels {lf:g}" for lf in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    base = runs.get("dpsh", {})
    for name, recs in runs.items():
        if name == "dpsh":
            continue
        cells = []
        for f in fractions:
            diffs = [r["map@all"] - base[(lf, s)]["map@all"] for (lf, s), r in sorted(recs.items())
                     if lf == f and (lf, s) in base]
            cells.append(_fmt(diffs) if diffs else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nEvery run: validation mAP of the selected epoch (the selection criterion), query mAP, epoch, s/epoch:\n")
    print("| method | labels | seed | val mAP | query mAP@all | best epoch | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for name, recs in runs.items():
        for (lf, s), r in sorted(recs.items()):
            print(f"| {name} | {lf:g} | {s} | {r['best_val_map']:.4f} | {r['map@all']:.4f} | {r['best_epoch']} | "
                  f"{statistics.median(r['epoch_seconds']):.1f} |")


if __name__ == "__main__":
    main()
