"""Tables of the scarce-label suite (benchmarks/scarce.yaml) from its result cache, as markdown.

    python benchmarks/scarce_tables.py bench/scarce [benchmarks/scarce.yaml] [--plot docs/scarce_curves.png]

Reads every ``<out>/results/*.json``, names each run by the suite entry whose config it matches, and prints:
the main table (mean ± sample std over seeds, n), paired differences against DPSH and against the semi-supervised
yardstick (semi-dpsh-ema) on the same seeds (same split, same labeled subset; 40-epoch entries against their
40-epoch references), the variants with their validation mAP (the selection criterion) beside the query mAP, and
training seconds per epoch (median epoch, optimiser steps only, measured while other runs shared the 2 cores).
With ``--plot PNG``: validation mAP against epochs at 2% labels (mean over the seeds that logged curves).
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


#: What the curves figure shows (the others are in the tables): the baselines, the yardstick, both CoopHash recipes
#: and the recipe without cooperation, at both budgets.
PLOT_ENTRIES = ("dpsh", "dpsh-40ep", "semi-dpsh-ema", "semi-dpsh-40ep", "semi-dpsh-ema-40ep", "semi-dpsh-gn",
                "coop-pseudo-gn", "coop-pseudo-gn-40ep", "coop-recipe", "coop-recipe-40ep", "coop-recipe-no-cooperation")


def plot_curves(runs: dict[str, dict[tuple[float, int], dict]], path: str, lf: float = 0.02) -> None:
    """Mean validation mAP per epoch of the :data:`PLOT_ENTRIES` at label fraction ``lf`` (runs without curves
    skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.6))
    for i, name in enumerate(n for n in PLOT_ENTRIES if n in runs):
        recs = runs[name]
        curves = [r["curves"] for (f, _), r in recs.items() if f == lf and r.get("curves")]
        if not curves:
            continue
        n = min(len(c["val_map"]) for c in curves)
        mean = [statistics.mean(c["val_map"][e] for c in curves) for e in range(n)]
        ax.plot(range(1, n + 1), mean, marker="." if n <= 10 else None, color=plt.cm.tab10(i % 10),
                linestyle="--" if name.endswith("-40ep") else "-", label=f"{name} ({len(curves)} seeds)")
    ax.set_xlabel("epoch (63 optimiser steps each)")
    ax.set_ylabel("validation mAP@all")
    ax.set_title(f"MNIST, 32 bits, {lf:.0%} labels")
    ax.grid(alpha=0.3)
    ax.set_ylim(0.6, 1.0)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--plot"]
    plot = sys.argv[sys.argv.index("--plot") + 1] if "--plot" in sys.argv else ""
    args = [a for a in args if a != plot]
    out = Path(args[0] if args else "bench/scarce")
    suite_path = args[1] if len(args) > 1 else "benchmarks/scarce.yaml"
    runs = _load(out, suite_path)
    if plot:
        plot_curves(runs, plot)
    fractions = [0.02, 0.1, 1.0]
    print("| method | " + " | ".join(f"labels {lf:g}" for lf in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    for name, recs in runs.items():
        cells = [_fmt([r["map@all"] for (lf, _), r in sorted(recs.items()) if lf == f]) for f in fractions]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for base_name in ("dpsh", "semi-dpsh-ema"):
        print(f"\nPaired differences against {base_name} (same seeds; a 40-epoch entry against {base_name}-40ep; "
              "mean ± std of the differences, n):\n")
        print("| method | " + " | ".join(f"labels {lf:g}" for lf in fractions) + " |")
        print("|---|" + "---|" * len(fractions))
        for name, recs in runs.items():
            ref = base_name + "-40ep" if name.endswith("-40ep") else base_name
            base = runs.get(ref, {})
            if name == ref or not base:
                continue
            cells = []
            for f in fractions:
                diffs = [r["map@all"] - base[(lf, s)]["map@all"] for (lf, s), r in sorted(recs.items())
                         if lf == f and (lf, s) in base]
                cells.append(_fmt(diffs) if diffs else "–")
            print(f"| {name} (− {ref}) | " + " | ".join(cells) + " |")
    print("\nEvery run: validation mAP of the selected epoch (the selection criterion), query mAP, epoch, s/epoch:\n")
    print("| method | labels | seed | val mAP | query mAP@all | best epoch | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for name, recs in runs.items():
        for (lf, s), r in sorted(recs.items()):
            print(f"| {name} | {lf:g} | {s} | {r['best_val_map']:.4f} | {r['map@all']:.4f} | {r['best_epoch']} | "
                  f"{statistics.median(r['epoch_seconds']):.1f} |")


if __name__ == "__main__":
    main()
