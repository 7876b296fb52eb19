"""The quality of a GAN's fakes, as an independent judge sees them (issue 12, "GAN quality measured").

The judge is a classifier trained on real labeled training images only (:mod:`coophash.pipeline.judge`).
For a fakes file it reports

* ``histogram``: how many fakes it puts in each class, and ``coverage``: the classes that get at least 1%
  of the fakes (a collapsed generator covers few);
* ``mean_confidence``: the mean of its largest softmax probability on the fakes (recognisable digits score
  high, blobs near 1 / n_classes);
* ``frechet_distance``: the Fréchet distance (FID's formula, :func:`coophash.metrics.frechet_distance`)
  between the judge's penultimate features of fakes and of as many real training images, and, as the
  scale to read it on, ``frechet_real_halves``: the same between two disjoint halves of the real images;
* ``judge_accuracy`` (conditional GANs): how often the judge recognises a fake as its conditioning class.

:func:`measure_fakes_quality` trains (or reuses) the judge in ``<gan_dir>/judge/``, stores the figures in
the fakes file's metadata (entry ``quality``, JSON; the file is rewritten atomically with a new checksum,
its tensors unchanged) and in ``<gan_dir>/quality.json``, written last: its presence means both are done.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from coophash.config import TrainConfig
from coophash.data import HashDataset
from coophash.fakes import from_uint8, load_fakes, update_fakes_meta
from coophash.methods.classifier import Classifier
from coophash.metrics import frechet_distance
from coophash.pipeline.judge import fit_judge, judge_config_in
from coophash.train.progress import ProgressFn
from coophash.utils.io import atomic_write_bytes

__all__ = [
    "COVERAGE_SHARE",
    "JUDGE_DIR",
    "QUALITY_FILE",
    "QUALITY_META_KEY",
    "format_quality",
    "gan_quality",
    "judge_accuracy_on",
    "judge_outputs",
    "measure_fakes_quality",
    "read_quality",
]

log = logging.getLogger(__name__)

QUALITY_FILE = "quality.json"
JUDGE_DIR = "judge"
QUALITY_META_KEY = "quality"
#: A class is covered when it gets at least this share of the fakes.
COVERAGE_SHARE = 0.01


@torch.no_grad()
def judge_outputs(judge: Classifier, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(logits (N, n_classes), penultimate features (N, F)) of the judge on the CPU; ``images`` are float in
    [-1, 1] or stored ``uint8`` pixels (converted batch by batch, so a large set is never all float at once)."""
    judge.train(False)
    logits, feats = [], []
    for start in range(0, int(images.shape[0]), int(batch_size)):
        x = images[start:start + batch_size]
        x = from_uint8(x) if x.dtype == torch.uint8 else x.float()
        out = judge.net(x.to(judge.device))
        assert out.logits is not None
        logits.append(out.logits.float().cpu())
        feats.append(out.features.flatten(1).float().cpu())
    return torch.cat(logits), torch.cat(feats)


def gan_quality(judge: Classifier, fakes_images: Tensor, real_images: Tensor, n_classes: int, *,
                fake_labels: Optional[Tensor] = None, batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
    """The judge's view of fakes (N, C, H, W) (in [-1, 1], or ``uint8`` pixels) against real images:
    histogram, coverage, mean confidence, Fréchet distances (and accuracy against multi-hot ``fake_labels``).

    The Fréchet distance compares ``n = min(#fakes, #real)`` of each, chosen by a generator seeded with
    ``seed`` (never torch's global one); ``frechet_real_halves`` compares two disjoint halves of the real images.
    """
    m, r = int(fakes_images.shape[0]), int(real_images.shape[0])
    if m < 2 or r < 4:
        raise ValueError(f"gan_quality needs at least 2 fakes and 4 real images, got {m} and {r}")
    logits, f_feats = judge_outputs(judge, fakes_images, batch_size)
    _, r_feats = judge_outputs(judge, real_images, batch_size)
    probs = torch.softmax(logits.double(), dim=1)
    pred = probs.argmax(dim=1)
    hist = torch.bincount(pred, minlength=int(n_classes))
    g = torch.Generator().manual_seed(int(seed))
    n = min(m, r)
    fake_pick = torch.randperm(m, generator=g)[:n]
    real_order = torch.randperm(r, generator=g)
    half = r // 2
    out: dict[str, Any] = {
        "n_fakes": m,
        "n_classes": int(n_classes),
        "histogram": [int(v) for v in hist.tolist()],
        "coverage": int((hist.double() >= COVERAGE_SHARE * m).sum()),
        "coverage_share": COVERAGE_SHARE,
        "mean_confidence": float(probs.max(dim=1).values.mean()),
        "frechet_distance": frechet_distance(f_feats[fake_pick].numpy(), r_feats[real_order[:n]].numpy()),
        "frechet_n": n,
        "frechet_real_halves": frechet_distance(r_feats[real_order[:half]].numpy(),
                                                r_feats[real_order[half:2 * half]].numpy()),
        "feature_dim": int(f_feats.shape[1]),
    }
    if fake_labels is not None:
        hit = fake_labels.to(torch.float64)[torch.arange(m), pred] > 0
        out["judge_accuracy"] = float(hit.double().mean())
    return out


@torch.no_grad()
def judge_accuracy_on(judge: Classifier, images: Tensor, labels: Tensor, batch_size: int = 256) -> Optional[float]:
    """Share of images whose predicted class is one of their labels (multi-hot (N, n_classes)); None if none."""
    if int(images.shape[0]) == 0:
        return None
    logits, _ = judge_outputs(judge, images, batch_size)
    pred = logits.argmax(dim=1)
    return float((labels.to(torch.float64)[torch.arange(len(pred)), pred] > 0).double().mean())


def read_quality(gan_dir: str | Path) -> Optional[dict[str, Any]]:
    """The quality figures a GAN folder holds (``quality.json``), or None when it has none."""
    path = Path(gan_dir) / QUALITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def measure_fakes_quality(gcfg: TrainConfig, gan_dir: str | Path, fakes_path: str | Path, *,
                          dataset: Optional[HashDataset] = None, judge_epochs: int = 3,
                          progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """The quality of the fakes of the GAN run ``gcfg`` in ``gan_dir`` (reused when ``quality.json`` exists).

    Trains (or reuses) the judge in ``<gan_dir>/judge/`` on the real labeled training images of the split of
    ``gcfg``, measures, then stores the figures in the fakes file's metadata and in ``quality.json``.
    """
    gan_dir = Path(gan_dir)
    known = read_quality(gan_dir)
    if known is not None:
        return known
    fakes = load_fakes(fakes_path)
    jdir = gan_dir / JUDGE_DIR
    trainer = fit_judge(judge_config_in(jdir, gcfg, judge_epochs), jdir, dataset=dataset, progress=progress)
    judge, ds, mf = trainer.method, trainer.ds, trainer.manifest
    assert isinstance(judge, Classifier)
    q = gan_quality(judge, fakes.images, ds.pixels(mf.train), judge.info.n_classes, fake_labels=fakes.labels,
                    batch_size=trainer.cfg.eval_batch_size or 256)
    val = torch.as_tensor(mf.validation, dtype=torch.int64)
    q["judge"] = {"run_dir": str(jdir), "epochs": int(trainer.cfg.epochs), "backbone": trainer.cfg.backbone,
                  "val_accuracy": judge_accuracy_on(judge, ds.pixels(mf.validation), ds.labels[val])}
    update_fakes_meta(fakes_path, {QUALITY_META_KEY: q})
    atomic_write_bytes(gan_dir / QUALITY_FILE, (json.dumps(q, indent=1, sort_keys=True) + "\n").encode())
    log.info("GAN quality: %s", format_quality(q))
    return q


def format_quality(q: dict[str, Any]) -> str:
    """The figures on one line: coverage, mean confidence, Fréchet distance (and conditional accuracy)."""
    line = (f"coverage {q['coverage']}/{q['n_classes']} classes, mean confidence {q['mean_confidence']:.3f}, "
            f"Fréchet distance {q['frechet_distance']:.3g} (real vs real: {q['frechet_real_halves']:.3g})")
    if "judge_accuracy" in q:
        line += f", judge accuracy on conditional fakes {q['judge_accuracy']:.3f}"
    return line
