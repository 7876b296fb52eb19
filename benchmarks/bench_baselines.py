"""Every supervised baseline on the bundled MNIST protocol: bits x label fractions x seeds.

Resumable: each finished (loss, bits, label fraction, seed) result is cached as JSON under --out/results;
rerunning the same command skips them and continues (a run killed mid-training resumes from its last
checkpoint under --out/runs).  Writes a Markdown table (mean ± std over seeds of mAP@all on the query
split, plus seconds per epoch) to --doc after every result.

    python benchmarks/bench_baselines.py                       # the full grid (hours on 2 CPU cores)
    python benchmarks/bench_baselines.py --bits 32 --seeds 0   # a slice

The protocol (shared by the CoopHash and fake-image benchmarks): mnist5k, standard protocol (50 query +
50 validation per class, 4,000 train = database), split and labeled subset seeded by the run seed,
smallconv backbone, Adam lr 1e-3, batch 64, random 2-px shifts, an epoch = 63 steps (one pass over train
whatever the label fraction), best epoch by validation mAP@all, reported on the query split.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (DESIGN.md §6)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from coophash.bench import aggregate, format_table, load_results, run_grid  # noqa: E402
from coophash.config import TrainConfig  # noqa: E402
from coophash.losses import list_losses  # noqa: E402
from coophash.utils.io import atomic_write_text  # noqa: E402

PROTOCOL = dict(dataset="mnist5k", protocol="standard", backbone="smallconv", batch_size=64, lr=1e-3,
                augment="shift", method="supervised")


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def configs(args: argparse.Namespace):
    """The grid, in the order that finishes the most useful slice first (32 bits)."""
    for bits in args.bits:
        for lf in args.fractions:
            for seed in args.seeds:
                for loss in args.losses:
                    yield TrainConfig.from_dict(dict(PROTOCOL, loss=loss, bits=bits, label_fraction=lf, seed=seed,
                                                     epochs=args.epochs, threads=args.threads))


def write_doc(out: Path, doc: Path, command: str) -> None:
    """Render the cached results as Markdown tables."""
    res = load_results(out)
    if not res:
        return
    agg = aggregate(res, ("loss", "bits", "label_fraction"))
    n_runs = len(res)
    parts = ["# Supervised baselines on the bundled MNIST protocol", "",
             "mAP@all on the query split (500 queries vs 4,000 database codes), mean ± sample std over seeds "
             "(n in brackets); best epoch chosen on the validation split. Protocol: see the docstring of "
             "`benchmarks/bench_baselines.py` (10 epochs of 63 steps, batch 64, Adam 1e-3, 2-px shifts, smallconv).",
             "",
             "Full grid: `python benchmarks/bench_baselines.py` (6 losses × 16/32/64 bits × label fractions "
             "1.0/0.1/0.02 × seeds 0–2; resumable: cached results are skipped). "
             f"This table holds the {n_runs} finished runs; they were made by `{command}`.", "",
             "Seconds per epoch were measured on the project's 2-core CPU machine while other trainings shared it "
             "(load average 5–10), so they are inflated and noisy; compare them only with each other.", ""]
    for bits in sorted({k[1] for k in agg}):
        parts += [f"## {bits} bits", "", format_table(agg, 0, 2, {1: bits}, "loss", "labels", fmt=lambda v: f"{v:g}"), ""]
    parts += ["## Seconds per epoch (63 steps of batch 64 + validation), 32 bits, label fraction 1.0", "",
              "| loss | s/epoch |", "|---|---|"]
    for k, v in sorted(agg.items()):
        if k[1] == 32 and k[2] == 1.0:
            parts.append(f"| {k[0]} | {v['seconds_per_epoch']:.2f} |")
    best = ["", "## Strongest baseline per label fraction and width", "", "| bits | labels | best loss | mAP@all |",
            "|---|---|---|---|"]
    for bits in sorted({k[1] for k in agg}):
        for lf in sorted({k[2] for k in agg}, reverse=True):
            cands = [(v["mean"], k[0]) for k, v in agg.items() if k[1] == bits and k[2] == lf]
            if cands:
                m, name = max(cands)
                best.append(f"| {bits} | {lf:g} | {name} | {m:.4f} |")
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(doc, "\n".join(parts + best) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", type=lambda s: s.split(","), default=list_losses())
    ap.add_argument("--bits", type=_ints, default=[32, 16, 64])
    ap.add_argument("--fractions", type=_floats, default=[1.0, 0.1, 0.02])
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/baselines")
    ap.add_argument("--doc", default="docs/baselines.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite --doc from the cached results, train nothing")
    ap.add_argument("--command", default=None, help="command line to quote in the doc (default: this one)")
    args = ap.parse_args()
    command = args.command or "python benchmarks/bench_baselines.py " + " ".join(sys.argv[1:])
    out, doc = Path(args.out), Path(args.doc)
    if args.report_only:
        write_doc(out, doc, command.strip())
        print(doc.read_text())
        return
    t0 = time.time()

    def done(cfg: TrainConfig, rec: dict, cached: bool) -> None:
        if not cached:
            print(f"[{time.time() - t0:7.0f}s] {cfg.loss:10s} {cfg.bits:3d}b lf={cfg.label_fraction:<5g} "
                  f"seed={cfg.seed} mAP@all={rec['map@all']:.4f} ({rec['seconds_per_epoch']:.1f} s/epoch)",
                  flush=True)
            write_doc(out, doc, command.strip())

    run_grid(configs(args), out, on_done=done)
    write_doc(out, doc, command.strip())
    print(doc.read_text())


if __name__ == "__main__":
    main()
