"""Plots (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["plot_pr_curve"]


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
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
