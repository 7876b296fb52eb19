"""Which of a trained CoopHash descriptor's scores detects unseen classes? AUROC of four OOD scores per run.

    python benchmarks/ood_scores.py RUN_DIR [RUN_DIR ...] [--which last] [--out ood.json]

Each RUN_DIR is a ``coophash train`` run of CoopHash under the ``unseen`` protocol (e.g. seen classes 0-6, the
configs of ``benchmarks/scarce_ood.yaml``). In distribution: its held-out seen-class images (validation split);
out of distribution: the unseen-class queries (the suite's ``ood_unseen``), and 500 scikit-learn digits resized
to the run's image size (foreign digits, against the same held-out seen-class images). Scores, higher = more
unusual, all from the descriptor itself (no EMA):

* ``density``  ``-f(x)``, the method's ``ood_score`` (what the suite reports);
* ``lse``      ``-log sum_y exp l_y(x)``, the category logits read as JEM's density (multi-label: sum softplus);
* ``msp``      ``-max_y p(y|x)`` of the category head (Hendrycks & Gimpel's maximum softmax probability;
  multi-label: the largest sigmoid);
* ``mass``     ``||d f(x) / dx||``, JEM's "approximate mass": a steep density means x sits off the data.

Prints a markdown table (mean +- std over the runs, and each run) and writes the numbers to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coophash.api import load_run
from coophash.data import load_dataset
from coophash.data.protocols import Manifest
from coophash.suite.evals import auroc

SCORES = ("density", "lse", "msp", "mass")


def score_batch(desc: torch.nn.Module, x: torch.Tensor, multi_label: bool) -> dict[str, torch.Tensor]:
    """The four scores of a batch (higher = more out-of-distribution)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        feats = desc.trunk(x)
        f = desc.density_of_features(feats, desc.category_head(feats))
        (grad,) = torch.autograd.grad(f.sum(), x)
    with torch.no_grad():
        logits = desc.category_head(feats.detach())
        if multi_label:
            lse = F.softplus(logits).sum(1)
            msp = torch.sigmoid(logits).max(1).values
        else:
            lse = torch.logsumexp(logits, 1)
            msp = torch.softmax(logits, 1).max(1).values
    return {"density": -f.detach(), "lse": -lse, "msp": -msp, "mass": grad.flatten(1).norm(dim=1)}


def scores(method, images: torch.Tensor, batch: int = 256) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}
    for i in range(0, len(images), batch):
        for k, v in score_batch(method.desc, images[i:i + batch], method.info.multi_label).items():
            parts[k].append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def run_aurocs(run: Path, which: str) -> dict[str, dict[str, float]]:
    cfg, method = load_run(run, which=which)
    if cfg.method != "coophash":
        raise SystemExit(f"{run}: a {cfg.method} run; this script scores CoopHash descriptors")
    ds = load_dataset(cfg.dataset)
    m = Manifest.load(run / "manifest.json")
    s_in = scores(method, ds.images(np.asarray(m.validation, dtype=np.int64)))
    s_unseen = scores(method, ds.images(np.asarray(m.query, dtype=np.int64)))
    channels, size = ds.image_shape[0], ds.image_shape[-1]
    digits = load_dataset("digits", image_size=size, channels=channels)
    pick = np.sort(np.random.default_rng(0).choice(len(digits.labels), size=500, replace=False))
    s_foreign = scores(method, digits.images(pick))
    return {k: {"unseen": auroc(s_in[k], s_unseen[k]), "foreign": auroc(s_in[k], s_foreign[k])} for k in SCORES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--which", default="last", choices=["last", "best"],
                    help="checkpoint (default last: unseen-class runs are selected at their last epoch)")
    ap.add_argument("--out", default="")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    per_run = {str(r): run_aurocs(Path(r), args.which) for r in args.runs}
    print("| score | AUROC unseen classes | AUROC foreign digits | each run (unseen) |")
    print("|---|---|---|---|")
    for k in SCORES:
        cells = []
        for what in ("unseen", "foreign"):
            v = [per_run[r][k][what] for r in per_run]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} ± {sd:.3f} ({len(v)})")
        each = ", ".join(f"{per_run[r][k]['unseen']:.3f}" for r in per_run)
        print(f"| {k} | {cells[0]} | {cells[1]} | {each} |")
    if args.out:
        Path(args.out).write_text(json.dumps(per_run, indent=1) + "\n")


if __name__ == "__main__":
    main()
