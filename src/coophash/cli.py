"""The ``coophash`` command-line tool: train, eval, encode, index, search, list, demo."""
from __future__ import annotations

import os

# OpenMP threads that spin while waiting slow every step badly when the cores are shared (DESIGN.md §6);
# set before torch (and its OpenMP runtime) is imported. An explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path
from typing import Any, Optional, Sequence

import click
import numpy as np
import yaml

__all__ = ["main", "cli"]


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


def _parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML; ``a.b=v`` sets key b of dict field a)."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            _fail(f"--set {key}: cannot parse value {raw!r}: {exc}")
        if "." in key:
            field, sub = key.split(".", 1)
            out.setdefault(field, {})[sub] = value
        else:
            out[key] = value
    return out


def _progress_bar(total: int, desc: str):  # pragma: no cover - display only
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


@click.group()
@click.version_option(package_name="coophash")
def cli() -> None:
    """Supervised deep image hashing with generated data."""


# ---------------------------------------------------------------------------------------------
@cli.command("list")
def list_cmd() -> None:
    """List methods, losses, backbones and datasets."""
    from coophash.data import list_datasets
    from coophash.losses import list_losses
    from coophash.methods import list_methods
    from coophash.nets import list_backbones

    click.echo("methods:   " + ", ".join(list_methods()))
    click.echo("losses:    " + ", ".join(list_losses()))
    click.echo("backbones: " + ", ".join(list_backbones()))
    click.echo("datasets:  " + ", ".join(list_datasets()))


# ---------------------------------------------------------------------------------------------
def _build_config(config: Optional[str], flags: dict[str, Any], sets: Sequence[str]):
    from coophash.config import TrainConfig, load_config

    try:
        cfg = load_config(config) if config else TrainConfig()
        data = cfg.to_dict()
        data.update({k: v for k, v in flags.items() if v is not None})
        for key, value in _parse_sets(sets).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return TrainConfig.from_dict(data, "command line")
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


def run_training(cfg, run_dir: Path, resume: bool, quiet: bool = False) -> dict:
    """Train with a progress bar; returns the final results."""
    from coophash.train.trainer import Trainer

    trainer = Trainer(cfg, run_dir)
    total = cfg.epochs * trainer.schedule.steps_per_epoch
    bar = None if quiet else _progress_bar(total, f"train {cfg.method}/{cfg.loss}")
    spe = trainer.schedule.steps_per_epoch

    def progress(epoch: int, step: int, values: dict[str, float]) -> None:
        if bar is not None:
            bar.n = epoch * spe + step
            total_keys = [k for k in values if k.endswith("/total")]
            if total_keys:
                bar.set_postfix(loss=f"{values[total_keys[0]]:.4f}", epoch=epoch + 1, refresh=False)
            bar.refresh()

    trainer.progress = progress
    try:
        return trainer.fit(resume=resume)
    finally:
        if bar is not None:
            bar.close()


def _method_options(func):
    """Add a ``--name`` option for every field of every registered method's ``Args`` dataclass."""
    import dataclasses

    from coophash.methods import METHODS

    seen: dict[str, str] = {}
    for mname, mcls in sorted(METHODS.items()):
        if mcls.Args is None:
            continue
        for f in dataclasses.fields(mcls.Args):
            if f.name in seen:
                continue
            seen[f.name] = mname
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            typ = {bool: str, int: int, float: float, str: str}.get(type(default), str)
            helptext = f.metadata.get("help", "") + f" [{mname}; default {default!r}]"
            func = click.option(flag, "m__" + f.name, type=typ, default=None, help=helptext)(func)
    return func


@cli.command()
@_method_options
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--method", help="Hashing method (see `coophash list`).")
@click.option("--loss", help="Supervised hashing loss.")
@click.option("--backbone", help="Backbone network.")
@click.option("--bits", type=int, help="Code length K.")
@click.option("--dataset", help="Dataset name.")
@click.option("--protocol", help="Protocol name (standard, unseen, cifar10, cifar10-1, cifar10-2).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Use an existing manifest file.")
@click.option("--label-fraction", type=float, help="Fraction of train items that keep their labels.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@click.option("--device", help="torch device, e.g. cpu or cuda (cuda:N for another GPU).")
@click.option("--threads", type=int, help="torch threads.")
@click.option("--out", help="Folder holding numbered run folders (default runs).")
@click.option("--resume", "resume", help="Continue a killed run (number, name or folder).")
@click.option("--set", "sets", multiple=True, help="Override any config field: KEY=VALUE or FIELD.KEY=VALUE.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config, method, loss, backbone, bits, dataset, protocol, manifest, label_fraction, epochs,
          batch_size, lr, seed, device, threads, out, resume, sets, quiet, **method_opts) -> None:
    """Train a hashing method; writes a numbered run folder.

    Method hyperparameters have their own options (below) or go through --set method_args.NAME=VALUE.
    """
    from coophash.config import TrainConfig
    from coophash.train import runs

    if resume:
        try:
            run_dir = runs.find_run(out or "runs", resume)
            cfg = TrainConfig.from_dict(runs.read_config(run_dir / runs.CONFIG), str(run_dir))
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        if epochs is not None:
            cfg = cfg.replace(epochs=epochs)
    else:
        flags = dict(method=method, loss=loss, backbone=backbone, bits=bits, dataset=dataset, protocol=protocol,
                     manifest=manifest, label_fraction=label_fraction, epochs=epochs, batch_size=batch_size,
                     lr=lr, seed=seed, device=device, threads=threads, out=out)
        margs = {k[3:]: _coerce(v) for k, v in method_opts.items() if v is not None}
        sets = list(sets) + [f"method_args.{k}={v}" for k, v in margs.items()]
        cfg = _build_config(config, flags, sets)
        tag = f"{cfg.method}-{cfg.loss}-{cfg.dataset}-{cfg.bits}b-lf{cfg.label_fraction:g}-s{cfg.seed}"
        run_dir = runs.create_run_dir(cfg.out, tag)
    click.echo(f"run folder: {run_dir}")
    try:
        res = run_training(cfg, run_dir, resume=bool(resume), quiet=quiet)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    click.echo(_format_metrics(res))


def _coerce(v: Any) -> Any:
    """Booleans given on the command line as text (true/false/yes/no)."""
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "on", "off"):
        return v.lower() in ("true", "yes", "on")
    return v


def _format_metrics(res: dict) -> str:
    keys = [k for k in res if k.startswith(("map", "precision", "recall")) and not isinstance(res[k], dict)]
    return "  ".join(f"{k}={res[k]:.4f}" for k in keys)


# ---------------------------------------------------------------------------------------------
def _load(run: str, which: str, device: str, root: str):
    from coophash.api import load_run

    try:
        return load_run(run, which=which, device=device, root=root)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


def _run_dir_of(run: str, root: str) -> Path:
    from coophash.train import runs

    p = Path(run)
    if p.is_file():
        return p.parent
    return p if p.is_dir() else runs.find_run(root, run)


@cli.command("eval")
@click.argument("run")
@click.option("--which", type=click.Choice(["best", "last"]), default="best")
@click.option("--split", default="query", help="Query split of the manifest (query or validation).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Another manifest (default: the run's).")
@click.option("--R", "R", default="all", help="mAP cut-off: all or an integer.")
@click.option("--topk", default="100,1000", help="Comma-separated K for precision/recall@K.")
@click.option("--radius", type=int, default=2)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Folder for metrics.json and pr_curve.png.")
@click.option("--device", default="cpu")
@click.option("--root", default="runs", help="Folder of run folders.")
def eval_cmd(run, which, split, manifest, R, topk, radius, out, device, root) -> None:
    """Evaluate a run or checkpoint: mAP@R, P@K, R@K, P@r<=2 and the PR curve (JSON + PNG)."""
    from coophash.data import Manifest, load_dataset
    from coophash.metrics import evaluate
    from coophash.train import runs
    from coophash.train.trainer import encode_indices

    cfg, method = _load(run, which, device, root)
    run_dir = _run_dir_of(run, root)
    try:
        mf = Manifest.load(manifest or run_dir / runs.MANIFEST)
        ds = load_dataset(cfg.dataset, image_size=cfg.image_size, channels=cfg.channels, **cfg.dataset_args)
        mf.check(ds)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if split not in ("query", "validation"):
        _fail(f"--split must be query or validation, got {split!r}")
    r_val = None if str(R).lower() == "all" else int(R)
    ks = tuple(int(k) for k in topk.split(",") if k.strip())
    q_idx = getattr(mf, split)
    q = encode_indices(method.encode, ds, q_idx, method.device)
    db = encode_indices(method.encode, ds, mf.database, method.device)
    res = evaluate(q, db, ds.labels[q_idx].numpy(), ds.labels[mf.database].numpy(), cfg.bits, R=r_val,
                   topk=ks, radius=radius)
    click.echo(_format_metrics(res))
    out_dir = Path(out) if out else run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    from coophash.plots import plot_pr_curve
    from coophash.utils.io import atomic_write_text

    atomic_write_text(out_dir / "metrics.json", json.dumps(res, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out_dir / "pr_curve.json", json.dumps(res["pr_curve"], indent=2) + "\n")
    plot_pr_curve({f"{cfg.method}/{cfg.loss} {cfg.bits} bits": res["pr_curve"]}, out_dir / "pr_curve.png")
    click.echo(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'pr_curve.json'}, {out_dir / 'pr_curve.png'}")


# ---------------------------------------------------------------------------------------------
def _read_images(paths: Sequence[str], image_size: int, channels: int):
    """Image files to a float batch in [-1, 1] of the run's size and channels."""
    import torch

    from coophash.data import read_image_file

    imgs = []
    for p in paths:
        try:
            imgs.append(read_image_file(p, image_size=image_size, channels=channels))
        except (ValueError, FileNotFoundError, OSError) as exc:
            _fail(str(exc))
    return torch.stack(imgs)


@cli.command()
@click.argument("run")
@click.option("--dataset", "dataset", help="Encode a dataset (default: the run's).")
@click.option("--split", default="database", help="Manifest split to encode (database, query, validation, train, all).")
@click.option("--images", "images", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Image files.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Code file to write.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best")
@click.option("--device", default="cpu")
@click.option("--root", default="runs")
def encode(run, dataset, split, images, out, which, device, root) -> None:
    """Encode images or a dataset split to a packed code file (safetensors)."""
    import torch

    from coophash.codefile import save_codes
    from coophash.codes import binarize, pack_bits
    from coophash.data import Manifest, load_dataset
    from coophash.train import runs
    from coophash.train.trainer import encode_indices

    cfg, method = _load(run, which, device, root)
    if images:
        c = method.info.channels
        x = _read_images(images, method.info.image_size, c)
        with torch.no_grad():
            codes = pack_bits(binarize(method.encode(x.to(method.device)).float().cpu()).numpy())
        save_codes(out, codes, cfg.bits, source="images:" + ",".join(images))
        click.echo(f"wrote {len(codes)} codes of {cfg.bits} bits to {out}")
        return
    try:
        name = dataset or cfg.dataset
        ds = load_dataset(name, image_size=method.info.image_size, channels=method.info.channels,
                          **(cfg.dataset_args if name == cfg.dataset else {}))
        if split == "all" or name != cfg.dataset:
            idx = np.arange(len(ds))
        else:
            mf = Manifest.load(_run_dir_of(run, root) / runs.MANIFEST)
            if split not in ("database", "query", "validation", "train", "labeled"):
                _fail(f"unknown split {split!r}")
            idx = getattr(mf, split)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    codes = encode_indices(method.encode, ds, idx, method.device)
    save_codes(out, codes, cfg.bits, ids=idx, labels=ds.labels[idx].numpy(), source=f"{name}:{split}")
    click.echo(f"wrote {len(codes)} codes of {cfg.bits} bits to {out}")


# ---------------------------------------------------------------------------------------------
def _labels_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".labels.safetensors")


@cli.command()
@click.argument("codes", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Index file to write.")
@click.option("--backend", default="auto", type=click.Choice(["auto", "numba", "numpy", "faiss"]))
def index(codes, out, backend) -> None:
    """Build a Hamming index from a code file (labels, if present, go to a sidecar file)."""
    from coophash.codefile import CodeFileError, load_codes, save_codes
    from coophash.index import HammingIndex

    try:
        cf = load_codes(codes)
    except CodeFileError as exc:
        _fail(str(exc))
    idx = HammingIndex(cf.nbits, backend=backend)
    idx.add(cf.codes, ids=cf.ids)
    idx.save(out)
    if cf.labels is not None:
        save_codes(_labels_path(Path(out)), cf.codes, cf.nbits, ids=cf.ids, labels=cf.labels, source=cf.source)
    click.echo(f"indexed {idx.ntotal} codes of {cf.nbits} bits into {out}")


@cli.command()
@click.argument("index_file", type=click.Path(dir_okay=False))
@click.option("--codes", "codes", type=click.Path(dir_okay=False), help="Query code file.")
@click.option("--images", "images", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Query images.")
@click.option("--run", "run", help="Run whose network encodes --images.")
@click.option("-k", "k", type=int, default=10, help="Neighbours per query.")
@click.option("--radius", type=int, default=None, help="Return every code within this Hamming radius instead.")
@click.option("--limit", type=int, default=10, help="Show at most this many queries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--root", default="runs")
@click.option("--device", default="cpu")
def search(index_file, codes, images, run, k, radius, limit, as_json, root, device) -> None:
    """Search an index with query codes or images; prints top-k ids, distances and labels where known."""
    import torch

    from coophash.codefile import CodeFileError, load_codes
    from coophash.codes import binarize, pack_bits
    from coophash.index import HammingIndex, IndexFileError

    try:
        idx = HammingIndex.load(index_file)
    except (IndexFileError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    q_labels = None
    q_scores = None  # out-of-distribution score per query (methods with a density, e.g. CoopHash's energy)
    names: list[str]
    if codes:
        try:
            cf = load_codes(codes, nbits=idx.nbits)
        except CodeFileError as exc:
            _fail(str(exc))
        q, q_labels, names = cf.codes, cf.labels, [str(i) for i in cf.ids]
    elif images:
        if not run:
            _fail("--images needs --run to encode them")
        cfg, method = _load(run, "best", device, root)
        if cfg.bits != idx.nbits:
            _fail(f"run {run} makes {cfg.bits}-bit codes but {index_file} holds {idx.nbits}-bit codes")
        x = _read_images(images, method.info.image_size, method.info.channels)
        with torch.no_grad():
            q = pack_bits(binarize(method.encode(x.to(method.device)).float().cpu()).numpy())
            ood = method.ood_score(x.to(method.device))
        q_scores = None if ood is None else ood.float().cpu().numpy()
        names = list(images)
    else:
        _fail("give --codes or --images")
    db_labels = None
    lp = _labels_path(Path(index_file))
    if lp.exists():
        lf = load_codes(lp)
        db_labels = dict(zip(lf.ids.tolist(), lf.labels))
    results = []
    if radius is not None:
        lims, D, I = idx.range_search(q, radius)
        rows = [(D[lims[i]:lims[i + 1]], I[lims[i]:lims[i + 1]]) for i in range(len(q))]
    else:
        D, I = idx.search(q, k)
        rows = [(D[i], I[i]) for i in range(len(q))]
    for qi, (d, ids) in enumerate(rows[:limit]):
        hits = []
        for dist, j in zip(d.tolist(), ids.tolist()):
            if j < 0:
                continue
            hit = {"id": int(j), "distance": int(dist)}
            if db_labels is not None and j in db_labels:
                hit["labels"] = np.flatnonzero(db_labels[j]).tolist()
            hits.append(hit)
        entry = {"query": names[qi], "hits": hits}
        if q_labels is not None:
            entry["labels"] = np.flatnonzero(q_labels[qi]).tolist()
        if q_scores is not None:
            entry["ood_score"] = float(q_scores[qi])
        results.append(entry)
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    for e in results:
        head = f"query {e['query']}" + (f" labels={e['labels']}" if "labels" in e else "")
        if "ood_score" in e:
            head += f" ood_score={e['ood_score']:.4f}"
        click.echo(head)
        for h in e["hits"]:
            lab = f" labels={h['labels']}" if "labels" in h else ""
            click.echo(f"   id={h['id']:>8}  d={h['distance']:>3}{lab}")


# ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the demo's budget).")
@click.option("--out", default="runs", help="Folder of run folders.")
@click.option("--quick", is_flag=True, help="A tiny budget (seconds), for smoke tests.")
def demo(epochs, out, quick) -> None:
    """The main job: LSH floor, train the default method on bundled MNIST, evaluate, index, sample query."""
    from coophash.demo import run_demo

    run_demo(epochs=epochs, out=out, quick=quick, echo=click.echo, train_fn=run_training)


# Commands of the generative methods live in their own modules; importing them adds them to `cli`.
from coophash import cli_coophash as _cli_coophash  # noqa: E402,F401
from coophash import cli_fakereg as _cli_fakereg  # noqa: E402,F401
from coophash import cli_bench as _cli_bench  # noqa: E402,F401


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``coophash`` script."""
    cli.main(args=argv, prog_name="coophash")


if __name__ == "__main__":  # pragma: no cover
    main()
