"""``coophash encode`` / ``index`` / ``search``: packed code files, Hamming indexes and queries against them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from coophash.cli.common import DEVICE, fail, load_method, read_images, usage_fail

__all__ = ["encode", "index", "search"]

_SPLITS = ("database", "query", "validation", "train", "labeled")


@click.command()
@click.argument("run")
@click.option("--dataset", "dataset", help="Encode a dataset (default: the run's).")
@click.option("--split", type=click.Choice([*_SPLITS, "all"]), default="database", help="Manifest split to encode.")
@click.option("--images", "images", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Image files.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Code file to write.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best")
@click.option("--device", type=DEVICE, default="cpu")
@click.option("--root", default="runs")
def encode(run: str, dataset: Optional[str], split: str, images: tuple[str, ...], out: str, which: str,
           device: str, root: str) -> None:
    """Encode images or a dataset split to a packed code file (safetensors)."""
    import numpy as np

    from coophash.codefile import save_codes
    from coophash.data import Manifest, load_dataset
    from coophash.train import runs
    from coophash.train.encoding import encode_images, encode_indices

    if dataset:
        from coophash.data import DATASETS

        try:
            DATASETS.get(dataset)
        except KeyError as exc:
            usage_fail(str(exc), "--dataset")
    cfg, method = load_method(run, which, device, root)
    if images:
        x = read_images(images, method.info.image_size, method.info.channels)
        codes = encode_images(method.encode, x, method.device, batch_size=max(1, len(x)))
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
            mf = Manifest.load(runs.resolve_run(run, root, which)[0] / runs.MANIFEST)
            idx = getattr(mf, split)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    codes = encode_indices(method.encode, ds, idx, method.device)
    save_codes(out, codes, cfg.bits, ids=idx, labels=ds.labels[idx].numpy(), source=f"{name}:{split}")
    click.echo(f"wrote {len(codes)} codes of {cfg.bits} bits to {out}")


@click.command()
@click.argument("codes", type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Index file to write.")
@click.option("--backend", default="auto", type=click.Choice(["auto", "numba", "numpy", "faiss"]))
@click.option("--milvus", "milvus_uri", help="Add the codes to a Milvus server instead (URI, e.g. http://host:19530).")
@click.option("--collection", help="Milvus collection (created when missing).")
@click.option("--index-type", type=click.Choice(["BIN_FLAT", "BIN_IVF_FLAT"]), default=None,
              help="Index of a new Milvus collection (default BIN_FLAT, exact).")
@click.option("--nlist", type=click.IntRange(min=1), default=1024, help="IVF lists of a new BIN_IVF_FLAT collection.")
def index(codes: str, out: Optional[str], backend: str, milvus_uri: Optional[str], collection: Optional[str],
          index_type: Optional[str], nlist: int) -> None:
    """Build a Hamming index from a code file (labels, if present, go to a sidecar file or Milvus field).

    The sidecar ``<out>.labels.safetensors`` is rewritten (or removed) with the index, and checked against
    the index's codes when read, so an index never shows the labels of codes it no longer holds.
    """
    from coophash.codefile import CodeFileError, load_codes, save_index_labels
    from coophash.index import HammingIndex

    try:
        cf = load_codes(codes)
    except CodeFileError as exc:
        fail(str(exc))
    if milvus_uri:
        _index_milvus(cf, milvus_uri, collection, index_type, nlist)
        return
    if not out:
        usage_fail("give --out FILE (or --milvus URI --collection NAME)")
    idx = HammingIndex(cf.nbits, backend=backend)
    idx.add(cf.codes, ids=cf.ids)
    idx.save(out)
    save_index_labels(out, cf)
    click.echo(f"indexed {idx.ntotal} codes of {cf.nbits} bits into {out}")


@click.command()
@click.argument("index_file", required=False, type=click.Path(dir_okay=False))
@click.option("--milvus", "milvus_uri", help="Search a Milvus server instead of INDEX_FILE (URI).")
@click.option("--collection", help="Milvus collection (with --milvus).")
@click.option("--nprobe", type=click.IntRange(min=1), default=16,
              help="IVF lists probed per query (BIN_IVF_FLAT collections).")
@click.option("--codes", "codes", type=click.Path(dir_okay=False), help="Query code file.")
@click.option("--images", "images", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Query images.")
@click.option("--run", "run", help="Run whose network encodes --images.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, help="Neighbours per query.")
@click.option("--radius", type=click.IntRange(min=0), default=None,
              help="Return every code within this Hamming radius instead.")
@click.option("--limit", type=click.IntRange(min=1), default=10, help="Show at most this many queries (>= 1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--root", default="runs")
@click.option("--device", type=DEVICE, default="cpu")
def search(index_file: Optional[str], milvus_uri: Optional[str], collection: Optional[str], nprobe: int,
           codes: Optional[str], images: tuple[str, ...], run: Optional[str], k: int, radius: Optional[int],
           limit: int, as_json: bool, root: str, device: str) -> None:
    """Search an index (a file or a Milvus collection) with query codes or images; prints top-k ids,
    distances and labels where known."""
    idx, where = _open_index(index_file, milvus_uri, collection, nprobe)
    if codes:
        q, q_labels, names, q_scores = _query_codes(codes, idx.nbits)
    elif images:
        if not run:
            usage_fail("--images needs --run to encode them")
        q, q_labels, names, q_scores = _query_images(images, run, idx.nbits, where, root, device)
    else:
        usage_fail("give --codes or --images")
    try:
        if radius is not None:
            lims, D, I = idx.range_search(q, radius)
            rows = [(D[lims[i]:lims[i + 1]], I[lims[i]:lims[i + 1]]) for i in range(len(q))]
        else:
            D, I = idx.search(q, k)
            rows = [(D[i], I[i]) for i in range(len(q))]
        rows = rows[:limit]
        db_labels = _milvus_labels(idx, rows) if milvus_uri else _index_labels(idx, Path(index_file))
    except RuntimeError as exc:  # MilvusIndexError: the server went away or refused the request
        fail(str(exc))
    results = _results(rows, names, q_labels, q_scores, db_labels)
    if as_json:
        click.echo(json.dumps(results, indent=1))
    else:
        _print_table(results)


def _query_codes(codes: str, nbits: int) -> tuple[Any, Any, list[str], None]:
    """(packed codes, labels or None, names, no OOD scores) of a query code file."""
    from coophash.codefile import CodeFileError, load_codes

    try:
        cf = load_codes(codes, nbits=nbits)
    except CodeFileError as exc:
        fail(str(exc))
    return cf.codes, cf.labels, [str(i) for i in cf.ids], None


def _query_images(images: tuple[str, ...], run: str, nbits: int, where: str, root: str,
                  device: str) -> tuple[Any, None, list[str], Any]:
    """(packed codes, no labels, names, OOD scores or None) of query images encoded by a run's network.

    The out-of-distribution score is given by methods with a density (e.g. CoopHash's energy).
    """
    import torch

    from coophash.train.encoding import encode_images

    cfg, method = load_method(run, "best", device, root)
    if cfg.bits != nbits:
        fail(f"run {run} makes {cfg.bits}-bit codes but {where} holds {nbits}-bit codes")
    x = read_images(images, method.info.image_size, method.info.channels)
    q = encode_images(method.encode, x, method.device, batch_size=max(1, len(x)))
    with torch.no_grad():
        ood = method.ood_score(x.to(method.device))
    return q, None, list(images), None if ood is None else ood.float().cpu().numpy()


def _index_labels(idx: Any, index_path: Path) -> Optional[dict[int, list[int]]]:
    """id → class indices of an index's codes, from its labels file (None without one; refused when stale)."""
    import numpy as np

    from coophash.codefile import load_index_labels

    labels = load_index_labels(index_path, idx.codes, idx.ids)
    if labels is None:
        return None
    return {i: np.flatnonzero(lab).tolist() for i, lab in labels.items()}


def _open_index(index_file: Optional[str], milvus_uri: Optional[str], collection: Optional[str],
                nprobe: int) -> tuple[Any, str]:
    """(index, description for messages): a HammingIndex file or a Milvus collection."""
    if milvus_uri:
        from coophash.index.milvus import MilvusIndex, MilvusIndexError

        if not collection:
            usage_fail("--milvus needs --collection NAME")
        try:
            return MilvusIndex(milvus_uri, collection, nprobe=nprobe), f"collection {collection!r} at {milvus_uri}"
        except (MilvusIndexError, ImportError) as exc:
            fail(str(exc))
    from coophash.index import HammingIndex, IndexFileError

    if not index_file:
        usage_fail("give INDEX_FILE or --milvus URI --collection NAME")
    try:
        return HammingIndex.load(index_file), index_file
    except FileNotFoundError:
        fail(f"{index_file}: index file not found")
    except (IndexFileError, ValueError) as exc:
        fail(str(exc))


def _index_milvus(cf: Any, uri: str, collection: Optional[str], index_type: Optional[str], nlist: int) -> None:
    """Add a code file's codes, ids and labels to a Milvus collection, then flush it (index built)."""
    from coophash.index.milvus import MilvusIndex, MilvusIndexError

    if not collection:
        usage_fail("--milvus needs --collection NAME")
    try:
        with MilvusIndex(uri, collection, cf.nbits, index_type=index_type, nlist=nlist) as idx:
            idx.add(cf.codes, ids=cf.ids, labels=cf.labels)
            idx.flush()
            total = idx.ntotal
    except (MilvusIndexError, ImportError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"indexed {len(cf.codes)} codes of {cf.nbits} bits into collection {collection!r} at {uri} "
               f"({total} in all)")


def _milvus_labels(idx: Any, rows: list) -> Optional[dict[int, list[int]]]:
    """id → class indices of the hits in ``rows``, read from the collection's labels field."""
    import numpy as np

    if not idx.has_labels:
        return None
    ids = np.unique(np.concatenate([i for _, i in rows] + [np.zeros(0, dtype=np.int64)]))
    ids = ids[ids >= 0]
    if not ids.size:
        return {}
    return {int(i): lab.tolist() for i, lab in zip(ids, idx.get_labels(ids))}


def _results(rows: list, names: list[str], q_labels: Any, q_scores: Any,
             db_labels: Optional[dict[int, Any]]) -> list[dict[str, Any]]:
    """One entry per query: its name, hits (id, distance, labels where known), labels and OOD score."""
    import numpy as np

    results = []
    for qi, (d, ids) in enumerate(rows):
        hits = []
        for dist, j in zip(d.tolist(), ids.tolist()):
            if j < 0:
                continue
            hit = {"id": int(j), "distance": int(dist)}
            if db_labels is not None and j in db_labels:
                hit["labels"] = db_labels[j]
            hits.append(hit)
        entry: dict[str, Any] = {"query": names[qi], "hits": hits}
        if q_labels is not None:
            entry["labels"] = np.flatnonzero(q_labels[qi]).tolist()
        if q_scores is not None:
            entry["ood_score"] = float(q_scores[qi])
        results.append(entry)
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    """The human-readable form of search results."""
    for e in results:
        head = f"query {e['query']}" + (f" labels={e['labels']}" if "labels" in e else "")
        if "ood_score" in e:
            head += f" ood_score={e['ood_score']:.4f}"
        click.echo(head)
        for h in e["hits"]:
            lab = f" labels={h['labels']}" if "labels" in h else ""
            click.echo(f"   id={h['id']:>8}  d={h['distance']:>3}{lab}")
