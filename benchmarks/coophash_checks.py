"""CoopHash's generated pairs and energy, measured on one trained run: judge, sample grid, OOD AUROC.

    python benchmarks/coophash_checks.py RUN_DIR [--grid docs/coophash_samples.png] [--out checks.json]

* the independent judge (a ``classifier`` trained 3 epochs on every real training image of the run's split,
  never on generated ones; ``RUN_DIR/judge``) reports how often it recognises the requested class in generated
  and revised positives / negatives (20 per class, seeded), and on the run's real query images (its ceiling);
* the diversity of generated and revised positives of one class against real training images of that class
  (mean distance between two images of a class, generated / real, averaged over classes: 0 = the latent ignored);
* the sample grid of generated and revised pairs per class (``coophash sample``'s layout);
* OOD detection by the energy ``-f(x)``: AUROC of the run's query images (in distribution) against 500
  scikit-learn digits resized to the run's image size (foreign digits), by the suite's rank formula.
Prints one JSON object (and writes it to ``--out`` when given).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from coophash.api import load_run
from coophash.data import load_dataset
from coophash.data.protocols import Manifest
from coophash.methods.coophash_sample import judge_accuracy, sample_diversity, write_sample
from coophash.pipeline.gan_quality import judge_accuracy_on
from coophash.pipeline.judge import judge_config, train_judge
from coophash.suite.evals import auroc


@torch.no_grad()
def _scores(method, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    return torch.cat([method.ood_score(images[i:i + batch]) for i in range(0, len(images), batch)]).cpu().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--grid", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg, method = load_run(run)
    result: dict = {"run": str(run)}
    judge = train_judge(judge_config(cfg, epochs=3, seed=0), run / "judge")
    result["judge"] = judge_accuracy(judge, method, n_per_class=20, seed=0)
    ds = load_dataset(cfg.dataset)
    manifest = Manifest.load(run / "manifest.json")
    query = np.asarray(manifest.query)  # the judge's own accuracy on real images: the ceiling of the figures above
    result["judge"]["judge_acc_real_query"] = judge_accuracy_on(judge, ds.images(query),
                                                                ds.labels[torch.as_tensor(query)])
    train_idx = np.asarray(manifest.train)
    result["diversity"] = sample_diversity(method, ds.images(train_idx), ds.labels[torch.as_tensor(train_idx)],
                                           n_per_class=20, seed=0)
    if args.grid:
        png, _ = write_sample(method, Path(args.grid), per_class=4, seed=0)
        result["grid"] = str(png)
    channels, size = ds.image_shape[0], ds.image_shape[-1]
    digits = load_dataset("digits", image_size=size, channels=channels)
    pick = np.random.default_rng(0).choice(len(digits.labels), size=500, replace=False)
    s_in = _scores(method, ds.images(np.asarray(manifest.query)))
    s_out = _scores(method, digits.images(np.sort(pick)))
    result["ood_auroc_digits"] = auroc(s_in, s_out)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
