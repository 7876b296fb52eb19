"""Over-fitting figures of a suite's runs: training-sample against validation mAP per epoch (issue 12).

Each cached result holds the per-epoch ``curves`` of its run (:func:`coophash.bench.epoch_curves`):
``epoch``, ``val_map`` (validation mAP@all, which selects the best epoch) and ``train_map`` (mAP@all of a
fixed sample of labeled training images retrieving from the rest of train).  From them, per run:

* ``final_train_map`` -- training-sample mAP at the last epoch;
* ``gap_at_best`` -- train − validation mAP at the selected (best-validation) epoch;
* ``gap_at_last`` -- train − validation mAP at the last epoch;

and, over seeds, the mean curves that :func:`plot_overfitting` draws.  Results cached before curves were
recorded have none: they count as runs "without curves" and give no figure.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from coophash.utils.io import atomic_write_bytes

__all__ = ["has_curves", "run_summary", "mean_curve", "plot_overfitting"]


def has_curves(rec: Mapping[str, Any]) -> bool:
    """Whether a cached result holds per-epoch curves with at least one training-sample mAP."""
    c = rec.get("curves")
    return bool(c) and bool(c.get("epoch")) and any(v is not None for v in c.get("train_map", []))


def _by_epoch(curves: Mapping[str, Sequence], key: str) -> dict[int, float]:
    return {int(e): float(v) for e, v in zip(curves["epoch"], curves[key]) if v is not None}


def _gap(train: Mapping[int, float], val: Mapping[int, float], epoch: Optional[int]) -> Optional[float]:
    if epoch is None or epoch not in train or epoch not in val:
        return None
    return train[epoch] - val[epoch]


def run_summary(rec: Mapping[str, Any]) -> Optional[dict[str, Optional[float]]]:
    """Final training-sample mAP and the train − validation gaps at the best and last epochs of one result.

    None when the result has no curves; a figure is None when an epoch it needs logged no value (e.g. a
    training-sample mAP logged every few epochs only).
    """
    if not has_curves(rec):
        return None
    c = rec["curves"]
    train, val = _by_epoch(c, "train_map"), _by_epoch(c, "val_map")
    last = max(int(e) for e in c["epoch"])
    best = rec.get("best_epoch")
    best = int(best) if best is not None and int(best) > 0 else None
    return {"final_train_map": train.get(last), "gap_at_best": _gap(train, val, best),
            "gap_at_last": _gap(train, val, last)}


def mean_curve(curves: Sequence[Mapping[str, Sequence]]) -> dict[str, list]:
    """Mean over runs (seeds) of ``train_map`` and ``val_map`` at every epoch any run logged.

    ``n_train`` / ``n_val`` count the runs averaged at each epoch (None where none logged a value).
    """
    epochs = sorted({int(e) for c in curves for e in c["epoch"]})
    out: dict[str, list] = {"epoch": epochs}
    for key in ("train_map", "val_map"):
        per = [_by_epoch(c, key) for c in curves]
        means, counts = [], []
        for e in epochs:
            vals = [p[e] for p in per if e in p]
            means.append(float(np.mean(vals)) if vals else None)
            counts.append(len(vals))
        out[key] = means
        out["n_" + key.split("_")[0]] = counts
    return out


def plot_overfitting(curves: Mapping[str, Mapping[str, list]], path: Path, title: str) -> Optional[Path]:
    """One PNG: per method (one colour), mean validation mAP (solid) and training-sample mAP (dashed) by epoch.

    ``curves`` maps a method name to its :func:`mean_curve`; None (nothing written) when no method has one.
    """
    curves = {m: c for m, c in curves.items() if c and c.get("epoch")}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (m, c) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        for key, style, label in (("val_map", "-", m), ("train_map", "--", None)):
            pts = [(e, v) for e, v in zip(c["epoch"], c[key]) if v is not None]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], style, color=colour, label=label, linewidth=1.3)
    ax.plot([], [], "-", color="0.3", label="validation (solid)")
    ax.plot([], [], "--", color="0.3", label="train sample (dashed)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP@all")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2, loc="lower right", framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
