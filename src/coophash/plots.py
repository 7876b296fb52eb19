"""Plots (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["plot_pr_curve", "plot_map_curves"]


def plot_pr_curve(curves: Mapping[str, Mapping[str, list]], path: str | Path, title: str = "") -> Path:
    """Precision-recall curves over Hamming radii, one line per label, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, c in curves.items():
        ax.plot(c["recall"], c["precision"], marker=".", markersize=3, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "precision-recall over Hamming radius")
    ax.legend(fontsize=7)
    return _save_figure(fig, path)


def plot_map_curves(records: Sequence[Mapping], path: str | Path, title: str = "") -> Optional[Path]:
    """Training-sample and validation mAP@all per epoch (from ``metrics.jsonl`` records) written to ``path`` (PNG).

    The gap between the two lines shows over-fitting.  None (nothing written) when no record holds either.
    """
    series = {}
    for key, label in (("train_map", "train (sample)"), ("val_map", "validation")):
        pts = [(r["epoch"], r[key]) for r in records if "epoch" in r and r.get(key) is not None]
        if pts:
            series[label] = pts
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for label, pts in series.items():
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP@all")
    ax.grid(alpha=0.3)
    ax.set_title(title or "train vs validation mAP")
    ax.legend(fontsize=7)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | Path) -> Path:
    """Write a figure to ``path`` atomically (a temporary file renamed into place) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
