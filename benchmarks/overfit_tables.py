"""Tables of the over-fitting suite (benchmarks/overfit.yaml) from its result cache, as markdown.

    python benchmarks/overfit_tables.py bench/overfit [benchmarks/overfit.yaml] [--plot docs/overfit_curves.png]

Reads every ``<out>/results/*.json`` (and the GAN folders' ``quality.json``), names each run by the suite entry
whose config it matches, and prints:

* the main table per backbone and label fraction: DPSH (without) and fakereg-dpsh (with), query mAP@all mean ±
  sample std over seeds, the paired difference (with − without, same seed = same split and labeled subset), and
  the over-fitting figures of each arm: final training-sample mAP and the gap training-sample − validation mAP
  at the epoch that validation selected;
* the variants at 2% labels (``fr-*-mixed``, fakereg's former default with fakes mixed into the real batch, and
  one change from it each) and at 10% labels on resnet18 (one change from the defaults each) beside their
  validation mAP (the selection criterion) and their paired differences against the base loss, fakereg at its
  defaults and the mixed pass, on the same backbone and seeds;
* the GAN stages' quality as the independent judge sees it (coverage, mean confidence, Fréchet distance with
  the distance between two halves of the real images as its scale, a conditional GAN's accuracy).

With ``--plot PNG``: training-sample (dashed) and validation (solid) mAP against epochs of the two arms (not the
variants), one panel per label fraction, mean over the seeds that logged curves.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml

from coophash.suite import load_suite, plan_suite

Runs = dict[str, dict[tuple[float, int], dict]]


def _fmt(vals: list[float], sign: bool = False) -> str:
    """mean ± sample std (n); one value: the value (1); none: a dash."""
    if not vals:
        return "–"
    f = "+.4f" if sign else ".4f"
    if len(vals) == 1:
        return f"{vals[0]:{f}} (1)"
    return f"{statistics.mean(vals):{f}} ± {statistics.stdev(vals):.4f} ({len(vals)})"


def load_runs(out: Path, suite_path: str) -> tuple[Runs, dict[str, dict]]:
    """(entry name -> (label fraction, seed) -> cached result, entry name -> its suite entry)."""
    suite = load_suite(suite_path)
    plan = plan_suite(suite, out=str(out))
    by_key = {}
    for p in (out / "results").glob("*.json"):
        rec = json.loads(p.read_text())
        by_key[rec["key"]] = rec
    runs: Runs = {}
    for run in plan.runs:
        rec = by_key.get(run.key)
        if rec is not None:
            runs.setdefault(run.method, {})[(float(run.cfg.label_fraction), int(run.cfg.seed))] = rec
    entries = {m.name: {"backbone": m.overrides.get("backbone", suite.defaults.get("backbone")), "method": m.method,
                        "method_args": dict(m.overrides.get("method_args") or {})} for m in suite.methods}
    return runs, entries


def overfit_figures(rec: dict) -> tuple[float | None, float | None]:
    """(final training-sample mAP, training-sample − validation mAP at the selected epoch) of one result."""
    c = rec.get("curves") or {}
    train, val, epochs = c.get("train_map") or [], c.get("val_map") or [], c.get("epoch") or []
    if not train or not epochs:
        return None, None
    final = train[-1]
    best = rec.get("best_epoch")
    if best in epochs:
        i = epochs.index(best)
        gap = None if train[i] is None or val[i] is None else train[i] - val[i]
    else:
        gap = None
    return final, gap


def paired(runs: Runs, with_name: str, without_name: str, lf: float) -> list[float]:
    """Per-seed differences with − without (query mAP@all) over the seeds both have at ``lf``."""
    a, b = runs.get(with_name, {}), runs.get(without_name, {})
    return [a[k]["map@all"] - b[k]["map@all"] for k in sorted(a) if k[0] == lf and k in b]


def _vals(runs: Runs, name: str, lf: float, field: str = "map@all") -> list[float]:
    return [r[field] for (f, _s), r in sorted(runs.get(name, {}).items()) if f == lf and r.get(field) is not None]


def main_table(runs: Runs, entries: dict[str, dict]) -> list[str]:
    lines = ["| backbone | labels | without (dpsh) | with (fakereg-dpsh) | with − without (paired) | "
             "train-sample mAP at the end: without / with | gap at the selected epoch: without / with |",
             "|---|---|---|---|---|---|---|"]
    for without in [n for n, e in entries.items() if e["method"] == "supervised"]:
        bb = entries[without]["backbone"]
        with_ = f"fakereg-{without}"
        if with_ not in entries:
            continue
        for lf in (0.02, 0.1, 1.0):
            if not _vals(runs, without, lf) and not _vals(runs, with_, lf):
                continue
            figs = {n: [overfit_figures(r) for (f, _s), r in sorted(runs.get(n, {}).items()) if f == lf]
                    for n in (without, with_)}
            final = " / ".join(_fmt([x for x, _ in figs[n] if x is not None]) for n in (without, with_))
            gap = " / ".join(_fmt([g for _, g in figs[n] if g is not None], sign=True) for n in (without, with_))
            lines.append(f"| {bb} | {lf:g} | {_fmt(_vals(runs, without, lf))} | {_fmt(_vals(runs, with_, lf))} | "
                         f"{_fmt(paired(runs, with_, without, lf), sign=True)} | {final} | {gap} |")
    return lines


def variants_table(runs: Runs, entries: dict[str, dict], lf: float = 0.02) -> list[str]:
    """The variants at label fraction ``lf``: validation and query mAP, paired against the base loss, fakereg at
    its defaults (the arm, fakes in their own batch-norm pass) and fakereg's former default with fakes mixed into
    the real batch (``fr-*-mixed``), each on the same backbone and seeds. A variant is one change from the mixed
    pass (``fr-<backbone>-<change>``, 2% labels) or from the defaults (``fr-<backbone>-own-<change>``)."""
    lines = ["| variant | backbone | change | val mAP | query mAP@all | − dpsh (paired) | "
             "− fakereg, own pass (paired) | − fakereg, mixed pass (paired) |", "|---|---|---|---|---|---|---|---|"]
    for name, e in entries.items():
        if not name.startswith("fr-") or not _vals(runs, name, lf):
            continue
        same = [n for n, x in entries.items() if x["backbone"] == e["backbone"]]
        base = next(n for n in same if entries[n]["method"] == "supervised")
        mixed = next((n for n in same if n.startswith("fr-") and not entries[n]["method_args"]), None)
        args = dict(e["method_args"])
        own = args.pop("fake_bn", None) == "separate"
        change = ", ".join(f"{k}={v}" for k, v in args.items())
        change = (f"{change or '–'} (from the defaults: own pass)" if own
                  else f"{change} (from the mixed pass)" if change else "– (fakes mixed: the former default)")
        vs_mixed = "–" if mixed in (None, name) else _fmt(paired(runs, name, mixed, lf), sign=True)
        lines.append(f"| {name} | {e['backbone']} | {change} | {_fmt(_vals(runs, name, lf, 'best_val_map'))} | "
                     f"{_fmt(_vals(runs, name, lf))} | {_fmt(paired(runs, name, base, lf), sign=True)} | "
                     f"{_fmt(paired(runs, name, f'fakereg-{base}', lf), sign=True)} | {vs_mixed} |")
    return lines


def runs_table(runs: Runs) -> list[str]:
    """Every run: validation mAP of the selected epoch (the selection criterion), query mAP, best epoch, s/epoch."""
    lines = ["| entry | labels | seed | val mAP | query mAP@all | best epoch | s/epoch |", "|---|---|---|---|---|---|---|"]
    for name, recs in runs.items():
        for (lf, seed), r in sorted(recs.items()):
            lines.append(f"| {name} | {lf:g} | {seed} | {r['best_val_map']:.4f} | {r['map@all']:.4f} | "
                         f"{r['best_epoch']} | {r['seconds_per_epoch']:.1f} |")
    return lines


def gan_table(out: Path) -> list[str]:
    lines = ["| GAN folder | conditional | trained on (label fraction) | epochs | coverage | mean confidence | "
             "Fréchet (real halves) | judge accuracy on the requested class | histogram |",
             "|---|---|---|---|---|---|---|---|---|"]
    for q in sorted((out / "gans").glob("*/quality.json")):
        fig = json.loads(q.read_text())
        cfg_path = q.parent / "config.yaml"
        cfg = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.exists() else {}
        conditional = bool((cfg.get("method_args") or {}).get("gan_conditional"))
        epochs = cfg.get("epochs", "?")
        lf = cfg.get("label_fraction", "?")  # a conditional GAN sees the labeled images only; else all (1.0)
        acc = fig.get("judge_accuracy")
        lines.append(f"| {q.parent.name} | {'yes' if conditional else 'no'} | "
                     f"{'labeled images' if conditional else 'all training images'} ({lf}) | {epochs} | "
                     f"{fig['coverage']}/{fig['n_classes']} | {fig['mean_confidence']:.3f} | "
                     f"{fig['frechet_distance']:.2f} ({fig['frechet_real_halves']:.2f}) | "
                     f"{'–' if acc is None else f'{acc:.3f}'} | {fig['histogram']} |")
    return lines


def plot_curves(runs: Runs, entries: dict[str, dict], path: str) -> None:
    """Training-sample (dashed) and validation (solid) mAP per epoch of the arms, one panel per label fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [lf for lf in (0.02, 0.1, 1.0) if any(k[0] == lf for recs in runs.values() for k in recs)]
    fig, axes = plt.subplots(1, max(1, len(fractions)), figsize=(6 * max(1, len(fractions)), 4.2), squeeze=False)
    arms = [n for n in entries if not n.startswith("fr-")]  # the two arms per backbone (variants: one seed)
    colour = dict(zip(arms, plt.cm.tab10.colors))  # one colour per entry in every panel
    for ax, lf in zip(axes[0], fractions):
        for name in arms:
            curves = [r["curves"] for (f, _s), r in runs.get(name, {}).items() if f == lf and r.get("curves")]
            if not curves:
                continue
            n = min(len(c["val_map"]) for c in curves)
            val = [statistics.mean(c["val_map"][e] for c in curves) for e in range(n)]
            (line,) = ax.plot(range(1, n + 1), val, marker=".", color=colour[name],
                              label=f"{name} ({len(curves)} seeds)")
            if all(c["train_map"][e] is not None for c in curves for e in range(n)):
                train = [statistics.mean(c["train_map"][e] for c in curves) for e in range(n)]
                ax.plot(range(1, n + 1), train, linestyle="--", color=line.get_color())
        ax.set_xlabel("epoch (63 optimiser steps each)")
        ax.set_ylabel("mAP@all (solid: validation, dashed: training sample)")
        ax.set_title(f"MNIST, 32 bits, {lf:.0%} labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    argv = sys.argv[1:]
    plot = ""
    if "--plot" in argv:
        i = argv.index("--plot")
        plot = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    out = Path(argv[0] if argv else "bench/overfit")
    suite_path = argv[1] if len(argv) > 1 else "benchmarks/overfit.yaml"
    runs, entries = load_runs(out, suite_path)
    if plot:
        plot_curves(runs, entries, plot)
    print("\n".join(["### Without → with fake-image regularisation (32 bits, query mAP@all)", "",
                     *main_table(runs, entries), "", "### Variants at 2% labels", "",
                     *variants_table(runs, entries, 0.02), "", "### Variants at 10% labels (resnet18)", "",
                     *variants_table(runs, entries, 0.1), "", "### GAN stages as the judge sees them", "",
                     *gan_table(out), "", "### Every run", "", *runs_table(runs)]))


if __name__ == "__main__":
    main()
