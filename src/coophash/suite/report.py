"""The suite report: ``results.json``, ``report.md`` with every table, PNG plots and ``retrievals.html``.

Everything is computed from the cached results, so the report can be rewritten at any time (a partial
suite gives a partial report that says what is missing).
"""
from __future__ import annotations

import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from coophash.plots import plot_pr_curve
from coophash.suite.html import write_retrievals
from coophash.suite.overfitting import has_curves, mean_curve, plot_overfitting, run_summary
from coophash.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_report", "build_results", "stats", "fmt_stats"]

_EXPLAIN = {
    "main": "mAP@all on the query split (field normaliser, ties by database index), best epoch chosen on the "
            "validation split; mean ± sample std over seeds (n).",
    "unseen": "Train on the seen classes; queries and database are images of the unseen classes only.",
    "cross_dataset": "Train on the default data; queries and database come from another dataset resized to the "
                     "training image size, split by a protocol seeded by the run seed.",
    "ood_detection": "AUROC of the method's `ood_score` (CoopHash: the energy −f(x); higher = more unusual) "
                     "separating in-distribution images from out-of-distribution queries; 0.5 = chance.",
    "overfitting": "Per epoch, each run logs the mAP@all of a fixed seeded sample of up to 500 labeled training "
                   "images retrieving from the rest of train (*train*) beside the validation mAP@all (*val*, which "
                   "selects the best epoch). Final train: train mAP at the last epoch; best val: val mAP of the "
                   "selected epoch; gap: train − val at the selected epoch and at the last epoch (a gap that grows "
                   "over the epochs is over-fitting); mean ± sample std over seeds (n).",
}


# ------------------------------------------------------------------------------------------ helpers
def stats(values: Iterable[Optional[float]]) -> dict[str, Any]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": vals}


def fmt_stats(s: Optional[Mapping[str, Any]], digits: int = 4, bold: bool = False) -> str:
    """``mean ± std (n)`` or an en dash when there is no value."""
    if not s or not s.get("n"):
        return "–"
    text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['n']})"
    return f"**{text}**" if bold else text


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, tuples lists, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pct(lf: float) -> str:
    return f"{lf * 100:g}%"


def _save_fig(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------------ results
def _rows(sr: Any, experiment: str) -> list[tuple[Any, dict]]:
    """(planned run, cached record) of every cached run an experiment reads."""
    return [(r, sr.records[r.key]) for r in sr.plan.runs if experiment in r.experiments and r.key in sr.records]


def _method_names(sr: Any) -> list[str]:
    skipped = {s["name"] for s in sr.plan.skipped}
    return [m.name for m in sr.plan.suite.methods if m.name not in skipped]


def build_results(sr: Any, command: str = "", note: str = "") -> dict[str, Any]:
    """Every table of the report as one JSON-ready dict."""
    res = _header(sr, command, note)
    exps = sr.plan.suite.experiments
    methods = _method_names(sr)
    if "main" in exps:
        res["main"] = _main_table(sr)
        res["best_per_family"] = _best_per_family(sr, res["main"])
    if "scarcity" in exps:
        bits = str(exps["scarcity"]["bits"])
        res["scarcity"] = {"bits": int(bits), "map@all": res.get("main", {}).get(bits, {})}
    if "overfitting" in exps:
        res["overfitting"] = _overfitting(sr, methods)
    if "unseen" in exps:
        res["unseen"] = {m: stats(rec["map@all"] for run, rec in _rows(sr, "unseen") if run.method == m)
                         for m in methods}
    if "cross_dataset" in exps:
        rows = _rows(sr, "cross_dataset")
        res["cross_dataset"] = {
            m: {"map@all": stats(rec["extra"]["cross_dataset"]["map@all"] for run, rec in rows if run.method == m),
                "in_distribution_map@all": stats(rec["map@all"] for run, rec in rows if run.method == m)}
            for m in methods}
    if "ood_detection" in exps:
        res["ood_detection"] = {m: _ood_entry(sr, m, exps["ood_detection"]["against"]) for m in methods}
    if "pr" in exps:
        res["pr"] = {m: _pr_entry(sr, m) for m in methods}
    if "cost" in exps:
        res["cost"] = _cost(sr, methods)
    res["runs"] = [
        {"method": run.method, "experiments": sorted(run.experiments), "key": run.key,
         **{k: v for k, v in sr.records[run.key].items() if k != "extra"},
         "extra": {k: v for k, v in sr.records[run.key].get("extra", {}).items() if not k.startswith("samples")}}
        for run in sr.plan.runs if run.key in sr.records]
    return _clean(res)


def _header(sr: Any, command: str, note: str) -> dict[str, Any]:
    """What was run, where and how far it got: suite, machine, methods, skipped and pending runs, progress."""
    suite = sr.plan.suite
    methods = _method_names(sr)
    res: dict[str, Any] = {
        "suite": suite.name,
        "source": suite.source,
        "description": suite.description,
        "command": command,
        "note": note,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "device": sorted({r.cfg.device for r in sr.plan.runs}),
        "seeds": sr.plan.seeds,
        "defaults": suite.defaults,
        "methods": [{"name": m.name, **m.overrides, "status": "skipped" if m.name not in methods else "ran"}
                    for m in suite.methods],
        "skipped": sr.plan.skipped,
        "pending": list(sr.plan.pending),
        "experiments": suite.experiments,
        "progress": {},
    }
    for kind in suite.experiments:
        planned = sr.plan.runs_for(kind)
        res["progress"][kind] = {"planned": len(planned), "cached": sum(r.key in sr.records for r in planned)}
    return res


def _main_table(sr: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """mAP@all stats per bits (str) → method → label fraction (``f"{lf:g}"``)."""
    main: dict[str, dict[str, dict[str, Any]]] = {}
    groups: dict[tuple, list[float]] = {}
    for run, rec in _rows(sr, "main"):
        groups.setdefault((run.cfg.bits, run.method, run.cfg.label_fraction), []).append(rec["map@all"])
    for (bits, m, lf), vals in groups.items():
        main.setdefault(str(bits), {}).setdefault(m, {})[f"{lf:g}"] = stats(vals)
    return main


def _overfitting(sr: Any, methods: list[str]) -> dict[str, Any]:
    """Per method → label fraction (``f"{lf:g}"``): final train mAP, best val mAP, gaps, and the mean curves.

    A cell whose runs have no per-epoch curves (cached before they were recorded) has status ``no curves``."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for run, rec in _rows(sr, "overfitting"):
        groups.setdefault((run.method, run.cfg.label_fraction), []).append(rec)
    out: dict[str, Any] = {"bits": int(sr.plan.suite.experiments["overfitting"]["bits"]), "methods": {}}
    for m in methods:
        for lf in sorted({lf for (mm, lf) in groups if mm == m}, reverse=True):
            recs = groups[(m, lf)]
            with_curves = [r for r in recs if has_curves(r)]
            sums = [run_summary(r) for r in with_curves]
            entry: dict[str, Any] = {
                "status": "ok" if with_curves else "no curves", "runs": len(recs), "with_curves": len(with_curves),
                "best_val_map": stats(r.get("best_val_map") for r in recs),
                "best_epoch": stats(r.get("best_epoch") for r in recs),
                **{k: stats(s[k] for s in sums if s) for k in ("final_train_map", "gap_at_best", "gap_at_last")},
            }
            if with_curves:
                entry["curve"] = mean_curve([r["curves"] for r in with_curves])
            out["methods"].setdefault(m, {})[f"{lf:g}"] = entry
    return out


def _ood_entry(sr: Any, m: str, against_kinds: list[str]) -> dict[str, Any]:
    """AUROC stats of method ``m`` against each OOD kind, with a status: ok, no_score or pending."""
    entry: dict[str, Any] = {}
    for against, kind, extra in (("unseen", "unseen", "ood_unseen"), ("cross_dataset", "cross_dataset", "ood_cross")):
        if against not in against_kinds:
            continue
        got = [rec["extra"][extra] for run, rec in _rows(sr, kind) if run.method == m and extra in
               rec.get("extra", {})]
        if not got:
            entry[against] = {"status": "pending", **stats([])}
        elif not any(g.get("available") for g in got):
            entry[against] = {"status": "no_score", **stats([])}
        else:
            entry[against] = {"status": "ok", **stats(g.get("auroc") for g in got if g.get("available"))}
    return entry


def _pr_entry(sr: Any, m: str) -> dict[str, Any]:
    """Precision within radius 2 and the mean precision-recall curve over seeds of method ``m``."""
    recs = [rec for run, rec in _rows(sr, "pr") if run.method == m and rec.get("pr_curve")]
    entry = {"precision@r2": stats(rec.get("precision@r2") for rec in recs), "n": len(recs)}
    if recs:
        p = np.array([rec["pr_curve"]["precision"] for rec in recs], dtype=np.float64)
        r = np.array([rec["pr_curve"]["recall"] for rec in recs], dtype=np.float64)
        entry["curve"] = {"radius": recs[0]["pr_curve"]["radius"], "precision": p.mean(0).tolist(),
                          "recall": r.mean(0).tolist()}
    return entry


def _cost(sr: Any, methods: list[str]) -> dict[str, Any]:
    """Training and encoding cost per method, search timings, and the training time of every cached run."""
    cost: dict[str, Any] = {}
    for m in methods:
        rows = [(run, rec) for run, rec in _rows(sr, "cost") if run.method == m]
        cost[m] = {
            "seconds_per_epoch": stats(_median_epoch(rec) for _, rec in rows),
            "steps_per_epoch": rows[0][1].get("steps_per_epoch") if rows else None,
            "encode_images_per_s": stats(rec.get("extra", {}).get("encode_speed", {}).get("images_per_s")
                                         for _, rec in rows),
        }
    out: dict[str, Any] = {"methods": cost, "search": sr.search}
    out["train_seconds_total"] = sum(
        float(rec.get("seconds_per_epoch") or 0.0) * float(rec["config"]["epochs"]) for rec in sr.records.values()
        if rec.get("seconds_per_epoch") is not None and math.isfinite(float(rec["seconds_per_epoch"])))
    return out


def _median_epoch(rec: Mapping[str, Any]) -> Optional[float]:
    """Median training seconds of a run's epochs (robust to a one-off first epoch, e.g. fakereg's GAN stage)."""
    secs = rec.get("epoch_seconds")
    if secs:
        return float(np.median(np.asarray(secs, dtype=np.float64)))
    return rec.get("seconds_per_epoch")


def _best_per_family(sr: Any, main: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each (bits, label fraction) the best entry of each method family (the TrainConfig ``method``)."""
    family = {m.name: m.method for m in sr.plan.suite.methods}
    out = []
    for bits, per_method in main.items():
        lfs = sorted({lf for d in per_method.values() for lf in d}, key=float, reverse=True)
        for lf in lfs:
            best: dict[str, tuple[float, str]] = {}
            for m, d in per_method.items():
                s = d.get(lf)
                if s and s["n"]:
                    fam = family.get(m, m)
                    if fam not in best or s["mean"] > best[fam][0]:
                        best[fam] = (s["mean"], m)
            for fam, (mean, m) in sorted(best.items()):
                out.append({"bits": int(bits), "label_fraction": float(lf), "family": fam, "best": m,
                            "map@all": per_method[m][lf]})
    return out


# ------------------------------------------------------------------------------------------ plots
def plot_scarcity(res: Mapping[str, Any], path: Path) -> Optional[Path]:
    """mAP@all against label fraction (log axis), one line per method with ± std error bars."""
    data = res.get("scarcity", {}).get("map@all", {})
    if not data:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for m, per_lf in data.items():
        pts = sorted((float(lf), s) for lf, s in per_lf.items() if s["n"])
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts], marker="o", markersize=4,
                    capsize=3, label=m)
    ax.set_xscale("log")
    xs_all = sorted({float(lf) for d in data.values() for lf in d})
    ax.set_xticks(xs_all)
    ax.set_xticklabels([_pct(x) for x in xs_all])
    ax.set_xlabel("labeled fraction of train")
    ax.set_ylabel("mAP@all (query split)")
    ax.set_title(f"Label scarcity, {res['scarcity']['bits']} bits (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best", framealpha=0.8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path


def _overfitting_lfs(res: Mapping[str, Any]) -> list[str]:
    """The label fractions of the over-fitting section, largest first (``f"{lf:g}"`` strings)."""
    per = res.get("overfitting", {}).get("methods", {})
    return sorted({lf for d in per.values() for lf in d}, key=float, reverse=True)


def plot_overfitting_curves(res: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """One PNG per label fraction (``overfitting-lf<lf>.png``): mean train and val mAP per epoch per method.

    Returns ``{"overfitting-lf<lf>": path}`` for the label fractions with at least one curve."""
    files: dict[str, Path] = {}
    per = res.get("overfitting", {}).get("methods", {})
    for lf in _overfitting_lfs(res):
        curves = {m: d[lf]["curve"] for m, d in per.items() if lf in d and d[lf].get("curve")}
        title = (f"Train sample (dashed) vs validation (solid) mAP@all, mean over seeds\n"
                 f"{res['overfitting']['bits']} bits, labels {_pct(float(lf))}")
        p = plot_overfitting(curves, out / f"overfitting-lf{lf}.png", title)
        if p:
            files[f"overfitting-lf{lf}"] = p
    return files


def plot_pr(res: Mapping[str, Any], path: Path, title: str) -> Optional[Path]:
    """Mean precision-recall curves over Hamming radii, one line per method."""
    curves = {m: d["curve"] for m, d in res.get("pr", {}).items() if d.get("curve")}
    if not curves:
        return None
    return plot_pr_curve(curves, path, title)


# ------------------------------------------------------------------------------------------ markdown
def _ratio_text(ratio: Optional[float]) -> str:
    if not ratio:
        return "–"
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(res: Mapping[str, Any], files: Mapping[str, Path]) -> str:
    """The Markdown report: a header, then one section per experiment in the suite's results."""
    lines = _md_header(res)
    if "main" in res:
        lines += _md_main(res)
    if "scarcity" in res:
        lines += _md_scarcity(res, files)
    if "overfitting" in res:
        lines += _md_overfitting(res, files)
    if "unseen" in res or "cross_dataset" in res:
        lines += _md_ood_retrieval(res)
    if "ood_detection" in res:
        lines += _md_ood_detection(res)
    if "pr" in res:
        lines += _md_pr(res, files)
    if "cost" in res:
        lines += _md_cost(res)
    if files.get("retrievals"):
        lines += ["## Sample retrievals", "",
                  f"[{files['retrievals'].name}]({files['retrievals'].name}): each query with its top "
                  f"{res['experiments']['retrievals']['k']}, correct ones marked (open the file in a browser; no "
                  "server needed).", ""]
    lines += ["## Data", "", "Every number above is in `results.json` (one entry per run under `runs`, with its full "
              "config).", ""]
    return "\n".join(lines)


def _md_header(res: Mapping[str, Any]) -> list[str]:
    """Title, description, command, note, machine and protocol; then skipped methods and missing runs."""
    d = res["defaults"]
    lines = [f"# coophash bench `{res['suite']}`", ""]
    if res.get("description"):
        lines += [res["description"], ""]
    if res.get("command"):
        lines += [f"Command: `{res['command']}`", ""]
    if res.get("note"):
        lines += [res["note"], ""]
    lines += [f"Written {res['created_utc']} on {res['machine']['platform']} ({res['machine']['processor']}), "
              f"device {', '.join(res['device'])}; seeds {res['seeds']}.", "",
              "Shared protocol: " + ", ".join(f"{k} {v}" for k, v in d.items()) + ".", ""]
    if res["skipped"]:
        lines += ["## Warnings: methods skipped", ""]
        lines += [f"* **{s['name']}**: {s['reason']}" for s in res["skipped"]] + [""]
    incomplete = {k: v for k, v in res["progress"].items() if v["cached"] < v["planned"]}
    if incomplete or res["pending"]:
        lines += ["## Incomplete", "",
                  "Runs finished per experiment (the rest are not run yet; rerun the command):", ""]
        lines += [f"* {k}: {v['cached']} of {v['planned']}" for k, v in incomplete.items()]
        lines += [f"* not planned yet: {p}" for p in res["pending"]] + [""]
    return lines


def _md_main(res: Mapping[str, Any]) -> list[str]:
    """One table per code length (best mean per label fraction in bold), then the best entry of each family."""
    lines = ["## Main table", "", _EXPLAIN["main"], ""]
    for bits in sorted(res["main"], key=int):
        per_method = res["main"][bits]
        lfs = sorted({lf for v in per_method.values() for lf in v}, key=float, reverse=True)
        best = {lf: max((v[lf]["mean"] for v in per_method.values() if lf in v and v[lf]["n"]), default=None)
                for lf in lfs}
        rows = []
        for m in [x["name"] for x in res["methods"]]:
            if m not in per_method:
                continue
            rows.append([m] + [fmt_stats(per_method[m].get(lf), bold=per_method[m].get(lf, {}).get("mean") is not
                                         None and per_method[m][lf]["mean"] == best[lf]) for lf in lfs])
        lines += [f"### {bits} bits", ""] + _table(["method"] + [f"labels {_pct(float(lf))}" for lf in lfs], rows)
        lines += [""]
    if res.get("best_per_family"):
        lines += ["### Best entry of each method family", "",
                  "(family = the TrainConfig `method`: `supervised` is the best baseline loss, `fakereg` the best "
                  "base loss of fake-image regularised hashing)", ""]
        lines += _table(["bits", "labels", "family", "best entry", "mAP@all"],
                        [[str(b["bits"]), _pct(b["label_fraction"]), b["family"], b["best"],
                          fmt_stats(b["map@all"])]
                         for b in res["best_per_family"]]) + [""]
    return lines


def _md_scarcity(res: Mapping[str, Any], files: Mapping[str, Path]) -> list[str]:
    """The scarcity plot (mAP against label fraction) and what it shows."""
    lines = ["## Label scarcity", ""]
    if files.get("scarcity"):
        lines += [f"![mAP against label fraction]({files['scarcity'].name})", ""]
    lines += [f"mAP@all against the labeled fraction of train at {res['scarcity']['bits']} bits (the main table's "
              "numbers).", ""]
    return lines


def _md_overfitting(res: Mapping[str, Any], files: Mapping[str, Path]) -> list[str]:
    """Per label fraction: the train/val curves plot, then one row per method (or "no curves")."""
    of = res["overfitting"]
    lines = ["## Over-fitting", "", f"{of['bits']} bits. " + _EXPLAIN["overfitting"], ""]
    lfs = _overfitting_lfs(res)
    if not lfs:
        return lines + ["No run of this section has finished yet.", ""]
    if not any(e["with_curves"] for d in of["methods"].values() for e in d.values()):
        lines += ["No curves: every cached run of this section predates per-epoch curves (rerun them to get "
                  "them).", ""]
    for lf in lfs:
        lines += [f"### Labels {_pct(float(lf))}", ""]
        if files.get(f"overfitting-lf{lf}"):
            lines += [f"![train and validation mAP per epoch, labels {_pct(float(lf))}]"
                      f"({files[f'overfitting-lf{lf}'].name})", ""]
        rows = [_overfitting_row(m, d[lf]) for m, d in of["methods"].items() if lf in d]
        lines += _table(["method", "final train mAP", "best val mAP", "gap at best epoch", "gap at last epoch",
                         "best epoch", "runs with curves"], rows) + [""]
    return lines


def _overfitting_row(m: str, e: Mapping[str, Any]) -> list[str]:
    """One method's row of an over-fitting table; "no curves" where its runs predate per-epoch curves."""
    train = g_best = g_last = "no curves"
    if e["with_curves"]:
        train = fmt_stats(e["final_train_map"])
        g_best, g_last = _fmt_signed(e["gap_at_best"]), _fmt_signed(e["gap_at_last"])
    return [m, train, fmt_stats(e["best_val_map"]), g_best, g_last, fmt_stats(e["best_epoch"], 1),
            f"{e['with_curves']} of {e['runs']}"]


def _fmt_signed(s: Optional[Mapping[str, Any]], digits: int = 4) -> str:
    """``+mean ± std (n)`` (sign always shown), or an en dash."""
    if not s or not s.get("n"):
        return "–"
    return f"{s['mean']:+.{digits}f} ± {s['std']:.{digits}f} ({s['n']})"


def _md_ood_retrieval(res: Mapping[str, Any]) -> list[str]:
    """One table: in-distribution, unseen-class and cross-dataset mAP@all per method."""
    exps = res["experiments"]
    header, cols = ["method"], []
    if "cross_dataset" in res:
        header.append("in-distribution (same runs)")
        cols.append(lambda m: fmt_stats(res["cross_dataset"][m]["in_distribution_map@all"]))
    if "unseen" in res:
        seen = exps["unseen"]["seen_classes"]
        contiguous = seen == list(range(seen[0], seen[-1] + 1))
        header.append(f"unseen classes (train on {seen[0]}–{seen[-1]})" if contiguous
                      else f"unseen classes (train on {seen})")
        cols.append(lambda m: fmt_stats(res["unseen"][m]))
    if "cross_dataset" in res:
        header.append(f"cross-dataset ({exps['cross_dataset']['dataset']})")
        cols.append(lambda m: fmt_stats(res["cross_dataset"][m]["map@all"]))
    methods = [x["name"] for x in res["methods"] if x["status"] == "ran"]
    lines = ["## Out-of-distribution retrieval", ""]
    lines += [f"mAP@all, {exps.get('unseen', exps.get('cross_dataset'))['bits']} bits. "
              + " ".join(_EXPLAIN[k] for k in ("unseen", "cross_dataset") if k in res), ""]
    lines += _table(header, [[m] + [c(m) for c in cols] for m in methods]) + [""]
    if "unseen" in res:
        lines += ["Unseen-class runs are selected at their last epoch: the protocol's validation queries (seen "
                  "classes) have no relevant item in the unseen-class database, so validation mAP cannot rank "
                  "epochs.", ""]
    return lines


def _md_ood_detection(res: Mapping[str, Any]) -> list[str]:
    """AUROC per method and OOD kind; methods without an ``ood_score`` listed apart."""
    lines = ["## Out-of-distribution detection", "", _EXPLAIN["ood_detection"], ""]
    against = res["experiments"]["ood_detection"]["against"]
    names = {"unseen": "unseen-class queries vs held-out seen-class images",
             "cross_dataset": "cross-dataset queries vs in-distribution queries"}
    rows, without = [], []
    for m, entry in res["ood_detection"].items():
        if entry and all(e["status"] == "no_score" for e in entry.values()):
            without.append(m)
            continue
        rows.append([m] + [fmt_stats(entry.get(a)) for a in against])
    lines += _table(["method"] + [f"AUROC, {names[a]}" for a in against], rows) if rows else \
        ["No method with an `ood_score` has finished its runs."]
    lines += [""]
    if without:
        lines += ["Methods without an `ood_score` (no AUROC): " + ", ".join(without) + ".", ""]
    return lines


def _md_pr(res: Mapping[str, Any], files: Mapping[str, Path]) -> list[str]:
    """The precision-recall plot and the precision within radius 2 per method."""
    exps = res["experiments"]
    lines = ["## Precision-recall", ""]
    if files.get("pr"):
        lines += [f"![precision-recall curves]({files['pr'].name})", ""]
    lines += [f"Precision and recall of the Hamming ball of each radius, averaged over queries and seeds; "
              f"{exps['pr']['bits']} bits, labels {_pct(float(exps['pr']['label_fraction']))}. Precision within "
              "radius 2 counts a query that retrieves nothing as 0.", ""]
    lines += _table(["method", "precision within radius 2"],
                    [[m, fmt_stats(e["precision@r2"])] for m, e in res["pr"].items()]) + [""]
    return lines


def _md_cost(res: Mapping[str, Any]) -> list[str]:
    """Seconds per epoch and encoding speed per method, total training time, then search timings."""
    c = res["cost"]
    exps = res["experiments"]
    lines = ["## Cost", "", f"Training seconds per epoch (median epoch of each run, optimiser steps only: a GAN "
             f"stage trained inside a run's first epoch is left out) and encoding speed of the test-time "
             f"network on the database split, {exps['cost']['bits']} bits, labels "
             f"{_pct(float(exps['cost']['label_fraction']))}.", ""]
    rows = []
    for m, e in c["methods"].items():
        rows.append([m, fmt_stats(e["seconds_per_epoch"], 2), str(e["steps_per_epoch"] or "–"),
                     fmt_stats(e["encode_images_per_s"], 0)])
    lines += _table(["method", "s/epoch", "steps/epoch", "encode images/s"], rows) + [""]
    lines += [f"All cached runs of this suite trained for {c['train_seconds_total'] / 3600:.2f} h in total "
              "(sum of epoch times).", ""]
    if c["search"]:
        lines += _md_search(c["search"])
    return lines


def _md_search(search: list[Mapping[str, Any]]) -> list[str]:
    """Search timings of HammingIndex and FAISS IndexBinaryFlat per code length."""
    lines = ["Search (top-k, random codes, one thread each, best of repeats; same codes and queries for both):", ""]
    srows = []
    for s in search:
        faiss_ms = s.get("faiss_ms_per_query")
        ratio = s.get("ratio_faiss_over_ours")
        srows.append([str(s["bits"]), f"{s['n_database']:,}", str(s["n_queries"]), str(s["k"]),
                      f"{s['coophash_ms_per_query']:.3f} ({s['backend']})",
                      f"{faiss_ms:.3f}" if faiss_ms is not None else s.get("faiss_note", "–"),
                      _ratio_text(ratio),
                      "yes" if s.get("same_distances") else ("–" if faiss_ms is None else "NO")])
    lines += _table(["bits", "codes", "queries", "k", "HammingIndex ms/query", "FAISS IndexBinaryFlat ms/query",
                     "ours vs FAISS", "same distances"], srows) + [""]
    return lines


def write_report(sr: Any, command: str = "", note: str = "") -> dict[str, Path]:
    """Write results.json, report.md, the plots and the retrievals page under ``sr.report_dir``.

    ``note`` is free text printed under the command (where and how the runs were trained, say)."""
    out = Path(sr.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = build_results(sr, command, note)
    files: dict[str, Path] = {}
    if "scarcity" in res and (p := plot_scarcity(res, out / "scarcity.png")):
        files["scarcity"] = p
    if "overfitting" in res:
        files.update(plot_overfitting_curves(res, out))
    if "pr" in res:
        e = res["experiments"]["pr"]
        p = plot_pr(res, out / "pr_curves.png",
                    f"Precision-recall over Hamming radius\n{e['bits']} bits, "
                    f"labels {_pct(float(e['label_fraction']))}")
        if p:
            files["pr"] = p
    if "retrievals" in res["experiments"]:
        p = write_retrievals(sr, out / "retrievals.html")
        if p:
            files["retrievals"] = p
    res["files"] = {k: v.name for k, v in files.items()}
    files["results"] = atomic_write_text(out / "results.json", json.dumps(res, indent=1, allow_nan=False) + "\n")
    files["report"] = atomic_write_text(out / "report.md", render_markdown(res, files))
    return files
