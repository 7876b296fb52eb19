"""One-factor sweep of the CoopHash recipe at 2% labels, 32 bits: which knob moves mAP@all?

Each variant changes one thing of ``bench_coophash.RECIPE`` (same protocol and 10-epoch budget as the
benchmark); seeds 0 and 1.  Meant for a machine with many cores or a GPU: run ``--shard i/n`` in n
processes (each trains its variants, all seeds), then ``--report`` for the Markdown table.  Cached and
resumable like every grid (``coophash.bench.run_grid``).

    for i in $(seq 0 12); do python benchmarks/sweep_coophash.py --device cuda --shard $i/13 & done; wait
    python benchmarks/sweep_coophash.py --device cuda --report
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_coophash import coop_cfg  # noqa: E402
from coophash.bench import find_cached, run_grid  # noqa: E402

LABEL_FRACTION = 0.02
SEEDS = (0, 1)
OFF = {"coop_warmup_epochs": 1000.0}
# name -> (method_args changes, TrainConfig changes)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "recipe": ({}, {}),
    "cooperation off": (OFF, {}),
    "GroupNorm trunk": ({"coop_trunk_norm": "group"}, {}),
    "GroupNorm trunk, cooperation off": ({"coop_trunk_norm": "group", **OFF}, {}),
    "descriptor lr 3e-4": ({"coop_desc_lr": 3e-4}, {}),
    "lr 2e-3 (all nets)": ({}, {"lr": 2e-3}),
    "EBM weight 0.3": ({"coop_ebm_weight": 0.3}, {}),
    "no category loss": ({"coop_cls_weight": 0.0}, {}),
    "triplet weight 3": ({"coop_triplet_weight": 3.0}, {}),
    "revised-sample hash weight 0.3": ({"coop_gen_hash_weight": 0.3}, {}),
    "32 generated pairs per step": ({"coop_pairs": 32}, {}),
    "K = 3": ({"langevin_steps": 3}, {}),
    "quantisation weight 0.1": ({"coop_quant_weight": 0.1}, {}),
}


def configs(device: str, names: list[str]):
    for name in names:
        margs, fields = VARIANTS[name]
        for seed in SEEDS:
            cfg = coop_cfg(LABEL_FRACTION, seed, 1, **margs)
            yield name, cfg.replace(device=device, amp=False, **fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "coophash_sweep"))
    ap.add_argument("--shard", default="0/1", help="i/n: this process trains every n-th variant from i")
    ap.add_argument("--report", action="store_true", help="print the table of cached results, train nothing")
    args = ap.parse_args()
    names = list(VARIANTS)
    if args.report:
        print(f"CoopHash one-factor sweep, 32 bits, labels {LABEL_FRACTION:.0%}, device {args.device}; "
              f"mAP@all on the query split per seed {list(SEEDS)}\n")
        print("| variant | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean |")
        print("|---|" + "---|" * (len(SEEDS) + 1))
        for name in names:
            vals = []
            for _, cfg in configs(args.device, [name]):
                p = find_cached(args.out, cfg)
                vals.append(json.loads(p.read_text())["map@all"] if p is not None else math.nan)
            done = [v for v in vals if not math.isnan(v)]
            mean = sum(done) / len(done) if done else math.nan
            print(f"| {name} | " + " | ".join("–" if math.isnan(v) else f"{v:.4f}" for v in vals)
                  + f" | {mean:.4f} |")
        return
    i, n = (int(v) for v in args.shard.split("/"))
    mine = [nm for k, nm in enumerate(names) if k % n == i]
    run_grid([cfg for _, cfg in configs(args.device, mine)], args.out,
             on_done=lambda cfg, rec, cached: print(f"{cfg.method_args} lr={cfg.lr} s{cfg.seed}: "
                                                    f"{rec['map@all']:.4f}", flush=True))


if __name__ == "__main__":
    main()
