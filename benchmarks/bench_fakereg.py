"""Fake-image regularised hashing on the bundled MNIST protocol: every base loss with and without the regulariser.

Same protocol and budget as ``bench_baselines.py`` (mnist5k, standard protocol, smallconv, Adam lr 1e-3,
batch 64, 2-px shifts, 10 epochs of 63 steps, best epoch by validation mAP@all, reported on the query
split), at 32 bits, label fractions 0.02, 0.1 and 1.0, seeds 0, 1, 2.  The numbers *without* the regulariser
are the baseline benchmark's cached results (identical configs, so identical cache keys under
``--baselines``); they are read, never recomputed here.

Stage 1: one DCGAN per seed (the GAN sees every training image, whose set depends on the seed but not on
the label fraction), trained once and cached with its fakes under ``<out>/gans/seed<N>/``, reused by every
loss and fraction.  Stage 2: ``method=fakereg`` with ``fake_weight`` λ and ``fake_batch_size`` fakes per step.

Order (so that an interrupted run leaves the most useful results): a λ sweep on (dpsh, 0.1 labels, seed 0)
— λ for the grid is then chosen by *validation* mAP among the swept values unless ``--weight`` is given —;
fractions 0.02 and 0.1 at seed 0 for every loss; a sweep of the number of fakes on (dpsh, 0.1, seed 0);
fractions 0.02 and 0.1 at seeds 1 and 2; fraction 1.0 for seeds 0, 1, 2.  Resumable: cached results are skipped.  The
Markdown tables go between the result markers of ``--doc`` after every result.

    python benchmarks/bench_fakereg.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_baselines import PROTOCOL

from coophash.bench import find_cached, load_results, run_grid
from coophash.config import TrainConfig
from coophash.losses import list_losses
from coophash.utils.io import atomic_write_text

START, END = "<!-- fakereg-results:start -->", "<!-- fakereg-results:end -->"


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def baseline_cfg(args: argparse.Namespace, loss: str, lf: float, seed: int) -> TrainConfig:
    """The baseline benchmark's config for one cell (same fields, hence the same cache key)."""
    return TrainConfig.from_dict(dict(PROTOCOL, loss=loss, bits=args.bits, label_fraction=lf, seed=seed,
                                      epochs=args.epochs, threads=args.threads))


def ensure_gan(args: argparse.Namespace, seed: int) -> Path:
    """Train (or reuse) the seed's GAN and return its fakes file."""
    from coophash.pipeline.gan import FAKES_FILE, gan_config, train_gan

    folder = Path(args.out) / "gans" / f"seed{seed}"
    fakes = folder / FAKES_FILE
    if fakes.exists():
        return fakes
    gcfg = gan_config(baseline_cfg(args, "dpsh", 1.0, seed), {}, args.gan_epochs)
    t0 = time.time()
    train_gan(gcfg, folder)  # resumes a killed GAN stage from its last checkpoint
    secs = time.time() - t0
    atomic_write_text(folder / "timing.json", json.dumps({"seconds": secs, "epochs": args.gan_epochs}) + "\n")
    print(f"GAN seed {seed}: {secs:.0f} s -> {fakes}", flush=True)
    return fakes


def fakes_with_count(args: argparse.Namespace, seed: int, n: int) -> Path:
    """A fakes file of ``n`` images from the seed's GAN (the first n of any larger such file)."""
    from coophash.api import load_run
    from coophash.methods.gan import write_fakes
    from coophash.pipeline.gan import FAKES_SEED_OFFSET

    default = ensure_gan(args, seed)
    folder = default.parent
    if n == 0:
        return default
    path = folder / f"fakes-n{n}.safetensors"
    if not path.exists():
        cfg, method = load_run(folder, which="last")
        write_fakes(method, path, n, cfg.seed + FAKES_SEED_OFFSET, source=str(folder))
    return path


def fakereg_cfg(args: argparse.Namespace, loss: str, lf: float, seed: int, weight: float,
                fakes: Path) -> TrainConfig:
    """A stage-2 config: the baseline's config with method fakereg and its arguments."""
    margs = {"fakes": str(fakes.relative_to(ROOT) if fakes.is_absolute() and ROOT in fakes.parents else fakes),
             "fake_weight": float(weight), "fake_batch_size": args.fake_batch_size}
    return TrainConfig.from_dict(dict(PROTOCOL, method="fakereg", loss=loss, bits=args.bits, label_fraction=lf,
                                      seed=seed, epochs=args.epochs, threads=args.threads, method_args=margs))


def chosen_weight(args: argparse.Namespace) -> float:
    """λ for the grid: ``--weight``, else the swept λ with the best validation mAP (ties: the smaller λ)."""
    if args.weight is not None:
        return args.weight
    recs = {r["config"]["method_args"]["fake_weight"]: r for r in _sweep_records(args, "weight")}
    if not recs:
        return args.weights[0]
    return max(sorted(recs), key=lambda w: recs[w]["best_val_map"])


def _sweep_records(args: argparse.Namespace, kind: str) -> list[dict]:
    out = []
    for r in load_results(args.out):
        c = r["config"]
        if c["method"] != "fakereg" or c["loss"] != args.sweep_loss or c["seed"] != 0:
            continue
        if c["label_fraction"] != args.sweep_fraction:
            continue
        fk = c["method_args"]["fakes"]
        if kind == "weight" and Path(fk).name == "fakes.safetensors":
            out.append(r)
        if kind == "count":
            out.append(r)
    return out


def configs(args: argparse.Namespace) -> Iterator[TrainConfig]:
    """The whole benchmark in priority order (GANs are trained lazily when a seed first needs them)."""
    for w in args.weights:
        yield fakereg_cfg(args, args.sweep_loss, args.sweep_fraction, 0, w, ensure_gan(args, 0))
    weight = chosen_weight(args)
    low = [f for f in args.fractions if f < 1.0]
    for i, seed in enumerate(args.seeds):
        for lf in sorted(low):
            for loss in args.losses:
                yield fakereg_cfg(args, loss, lf, seed, weight, ensure_gan(args, seed))
        if i == 0:
            for n in args.counts:
                yield fakereg_cfg(args, args.sweep_loss, args.sweep_fraction, 0, weight,
                                  fakes_with_count(args, 0, n))
    for seed in args.seeds:
        for lf in [f for f in args.fractions if f >= 1.0]:
            for loss in args.losses:
                yield fakereg_cfg(args, loss, lf, seed, weight, ensure_gan(args, seed))


# ---------------------------------------------------------------------------------------------- report
def _stats(vals: list[float]) -> tuple[float, float, int]:
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def _cell(vals: list[float]) -> str:
    if not vals:
        return "–"
    m, s, n = _stats(vals)
    return f"{m:.4f} ± {s:.4f} ({n})"


def _baseline_map(args: argparse.Namespace, loss: str, lf: float, seed: int) -> float | None:
    path = find_cached(args.baselines, baseline_cfg(args, loss, lf, seed))
    return json.loads(path.read_text())["map@all"] if path is not None else None


def render(args: argparse.Namespace, command: str) -> str:
    """The results section (Markdown)."""
    weight = chosen_weight(args)
    grid = _grid(args, weight)
    fracs = sorted(args.fractions, reverse=True)
    how = "given by --weight" if args.weight is not None else "chosen by validation mAP in the λ sweep below"
    intro = (f"Generated by `{command}`; λ = {weight:g} ({how}), {args.fake_batch_size} fakes per step, "
             f"one GAN per seed ({args.gan_epochs} epochs).")
    lines = [START, "", intro, ""]
    lines += _grid_lines(args, grid, fracs)
    lines += _sweep_lines(args, weight)
    lines += _cost_lines(args, grid)
    lines += ["", END]
    return "\n".join(lines)


def _grid(args: argparse.Namespace, weight: float) -> dict[tuple[str, float, int], dict]:
    """The grid's fakereg results (all fakes, weight λ, the batch of fakes asked for) by (loss, fraction, seed)."""
    grid: dict[tuple[str, float, int], dict] = {}
    for r in load_results(args.out):
        c = r["config"]
        ma = c["method_args"]
        if c["method"] != "fakereg" or Path(ma["fakes"]).name != "fakes.safetensors":
            continue
        if ma["fake_weight"] != weight or ma.get("fake_batch_size") != args.fake_batch_size:
            continue
        grid[(c["loss"], c["label_fraction"], c["seed"])] = r
    return grid


def _grid_lines(args: argparse.Namespace, grid: dict[tuple[str, float, int], dict], fracs: list[float]) -> list[str]:
    """Without → with per loss and label fraction, then the paired per-seed differences."""
    lines = [f"### mAP@all at {args.bits} bits: without → with fake-image regularisation", "",
             "Each cell: baseline (without) | fakereg (with), mean ± sample std over seeds (n).", "",
             "| loss | " + " | ".join(f"labels {f:g}: without | with" for f in fracs) + " |",
             "|---|" + "---|---|" * len(fracs)]
    for loss in args.losses:
        cells = []
        for lf in fracs:
            with_ = [grid[(loss, lf, s)]["map@all"] for s in args.seeds if (loss, lf, s) in grid]
            without = [v for v in (_baseline_map(args, loss, lf, s) for s in args.seeds) if v is not None]
            cells += [_cell(without), _cell(with_)]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", "### Paired difference (with − without), same seeds", "",
              "Mean ± sample std of the per-seed difference in mAP@all (n seeds with both results).", "",
              "| loss | " + " | ".join(f"labels {f:g}" for f in fracs) + " |", "|---|" + "---|" * len(fracs)]
    for loss in args.losses:
        cells = []
        for lf in fracs:
            diffs = []
            for s in args.seeds:
                b = _baseline_map(args, loss, lf, s)
                if b is not None and (loss, lf, s) in grid:
                    diffs.append(grid[(loss, lf, s)]["map@all"] - b)
            if diffs:
                m, sd, n = _stats(diffs)
                cells.append(f"{m:+.4f} ± {sd:.4f} ({n})")
            else:
                cells.append("–")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


def _sweep_lines(args: argparse.Namespace, weight: float) -> list[str]:
    """The λ sweep (with the baseline as λ = 0) and the number-of-fakes sweep."""
    sweep = _sweep_records(args, "count")
    title = (f"### λ sweep ({args.sweep_loss}, labels {args.sweep_fraction:g}, seed 0, "
             f"{args.fake_batch_size} fakes per step, all fakes)")
    lines = ["", title, "",
             "| λ | val mAP@all | query mAP@all |", "|---|---|---|"]
    b = _baseline_map(args, args.sweep_loss, args.sweep_fraction, 0)
    if b is not None:
        path = find_cached(args.baselines, baseline_cfg(args, args.sweep_loss, args.sweep_fraction, 0))
        bv = json.loads(path.read_text())["best_val_map"]
        lines.append(f"| 0 (baseline) | {bv:.4f} | {b:.4f} |")
    for r in sorted((r for r in sweep if Path(r["config"]["method_args"]["fakes"]).name == "fakes.safetensors"),
                    key=lambda r: r["config"]["method_args"]["fake_weight"]):
        lines.append(f"| {r['config']['method_args']['fake_weight']:g} | {r['best_val_map']:.4f} | {r['map@all']:.4f} |")
    lines += ["", f"### Number of fakes ({args.sweep_loss}, labels {args.sweep_fraction:g}, seed 0, λ = {weight:g})",
              "", "| fakes | val mAP@all | query mAP@all |", "|---|---|---|"]
    rows = []
    for r in sweep:
        ma = r["config"]["method_args"]
        if ma["fake_weight"] != weight:
            continue
        name = Path(ma["fakes"]).name
        n = 4000 if name == "fakes.safetensors" else int(name.split("-n")[1].split(".")[0])
        rows.append((n, r))
    for n, r in sorted(rows, key=lambda t: t[0]):
        lines.append(f"| {n} | {r['best_val_map']:.4f} | {r['map@all']:.4f} |")
    return lines


def _cost_lines(args: argparse.Namespace, grid: dict[tuple[str, float, int], dict]) -> list[str]:
    """Mean seconds per epoch of stage 2 and per GAN of stage 1."""
    secs = [r["seconds_per_epoch"] for r in grid.values() if r.get("seconds_per_epoch")]
    gan_secs = []
    for s in args.seeds:
        t = Path(args.out) / "gans" / f"seed{s}" / "timing.json"
        if t.exists():
            gan_secs.append(json.loads(t.read_text())["seconds"])
    lines = ["", "### Cost", ""]
    if secs:
        lines.append(f"- stage 2: {sum(secs) / len(secs):.1f} s per epoch on average (63 steps + validation), "
                     f"over {len(secs)} runs;")
    if gan_secs:
        lines.append(f"- stage 1: {sum(gan_secs) / len(gan_secs):.0f} s per GAN ({args.gan_epochs} epochs, "
                     f"{len(gan_secs)} GANs, one per seed).")
    return lines


def write_doc(args: argparse.Namespace, command: str) -> None:
    """Replace the results section of ``--doc`` (or append it)."""
    doc = Path(args.doc)
    section = render(args, command)
    text = doc.read_text() if doc.exists() else "# Fake-image regularised hashing\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(doc, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", type=lambda s: s.split(","), default=list_losses())
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--fractions", type=_floats, default=[0.02, 0.1, 1.0])
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--gan-epochs", type=int, default=15)
    ap.add_argument("--weights", type=_floats, default=[0.03, 0.3, 1.0], help="λ sweep")
    ap.add_argument("--weight", type=float, default=None, help="λ of the grid (default: chosen by the sweep)")
    ap.add_argument("--counts", type=_ints, default=[1000, 8000], help="number-of-fakes sweep (4000 = all)")
    ap.add_argument("--fake-batch-size", type=int, default=32)
    ap.add_argument("--sweep-loss", default="dpsh")
    ap.add_argument("--sweep-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/fakereg")
    ap.add_argument("--baselines", default="benchmarks/results/baselines")
    ap.add_argument("--doc", default="docs/fakereg.md")
    ap.add_argument("--report-only", action="store_true", help="Only rewrite the tables from cached results.")
    args = ap.parse_args()
    command = ("python benchmarks/bench_fakereg.py " + " ".join(sys.argv[1:])).strip()
    if args.report_only:
        write_doc(args, command)
        return
    t0 = time.time()

    def done(cfg: TrainConfig, rec: dict, cached: bool) -> None:
        if not cached:
            ma = cfg.method_args
            print(f"[{time.time() - t0:6.0f}s] {cfg.loss:10s} lf={cfg.label_fraction:<5g} seed={cfg.seed} "
                  f"λ={ma['fake_weight']:g} fakes={Path(ma['fakes']).name} mAP@all={rec['map@all']:.4f} "
                  f"val={rec['best_val_map']:.4f} ({rec['seconds_per_epoch']:.1f} s/epoch)", flush=True)
            write_doc(args, command)

    run_grid(configs(args), args.out, on_done=done)
    write_doc(args, command)


if __name__ == "__main__":
    main()
