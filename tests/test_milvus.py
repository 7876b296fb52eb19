"""MilvusIndex against a real Milvus server (PyPI's embedded ``milvus`` package, started once per session).

BIN_FLAT must give HammingIndex's distances exactly and the same ids up to ties at the k-th distance;
range_search, labels, remove_ids and the count are checked against HammingIndex / the inputs; BIN_IVF_FLAT's
recall@100 is measured against nprobe and must reach 1.0 when every list is probed.
"""
from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import uuid

import numpy as np
import pytest

from coophash.codes import hamming_distance
from coophash.index import HammingIndex

pytest.importorskip(
    "milvus", reason="the embedded Milvus server is not installed (pip install 'coophash[test]': milvus==2.3.5)"
)

from coophash.index.milvus import MilvusIndex, MilvusIndexError, embedded_server  # noqa: E402


@pytest.fixture(scope="session")
def milvus_uri():
    """URI of an embedded standalone Milvus server on free ports, its data in a temporary folder."""
    data = tempfile.mkdtemp(prefix="coophash-milvus-")
    try:
        # Query nodes pick up flushed, indexed segments every UpdateNextTargetInterval s (10 by default).
        with embedded_server(data, settings={"queryCoord.UpdateNextTargetInterval": 1}) as uri:
            yield uri
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _codes(rng: np.random.Generator, n: int, nbits: int) -> np.ndarray:
    """Random packed codes with zero padding bits."""
    arr = rng.integers(0, 256, size=(n, (nbits + 7) // 8), dtype=np.uint8)
    if nbits % 8:
        arr[:, -1] &= (1 << (nbits % 8)) - 1
    return arr


def _name() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def _assert_same_up_to_ties(D, I, Dr, db, q, ids=None):
    """Distances identical; ids below the k-th distance identical as sets, those at it among the tied codes."""
    np.testing.assert_array_equal(D, Dr)
    ids = np.arange(db.shape[0]) if ids is None else ids
    full = np.asarray(hamming_distance(q, db))
    for row in range(q.shape[0]):
        kth = Dr[row, -1]
        assert set(I[row][D[row] < kth]) == set(ids[full[row] < kth])
        tied = I[row][D[row] == kth]
        assert len(set(tied)) == tied.size and set(tied) <= set(ids[full[row] == kth])
        np.testing.assert_array_equal(full[row][np.searchsorted(ids, I[row])], D[row])  # true distances
        assert np.all(np.diff(D[row]) >= 0)


@pytest.fixture(scope="module")
def flat64(milvus_uri):
    """A 64-bit BIN_FLAT collection of 4,000 random codes with multi-hot labels, and a HammingIndex twin."""
    rng = np.random.default_rng(0)
    db, q = _codes(rng, 4000, 64), _codes(rng, 40, 64)
    q[:20] = db[rng.integers(0, 4000, 20)]
    q[:20, 0] ^= 1  # near-duplicates, so radius search finds something
    labels = (rng.random((4000, 7)) < 0.3).astype(np.float32)
    index = MilvusIndex(milvus_uri, _name(), 64)
    index.add(db[:2500], labels=labels[:2500])
    index.add(db[2500:], labels=labels[2500:])  # default ids continue 2500, 2501, ...
    ref = HammingIndex(64)
    ref.add(db)
    yield index, ref, db, q, labels
    index.drop()


def test_bin_flat_equals_hamming_index(flat64):
    index, ref, db, q, _ = flat64
    assert index.ntotal == len(index) == 4000 and index.nbits == 64 and index.index_type == "BIN_FLAT"
    for k in (1, 10, 100):
        D, I = index.search(q, k)
        Dr, _ = ref.search(q, k)
        assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (40, k)
        _assert_same_up_to_ties(D, I, Dr, db, q)
    D, I = index.search(q[:2], 5000)  # more than ntotal: padded as HammingIndex / FAISS do
    assert np.all(I[:, 4000:] == -1) and np.all(D[:, 4000:] == np.iinfo(np.int32).max)
    assert np.array_equal(np.sort(I[:, :4000], axis=1), np.tile(np.arange(4000), (2, 1)))


def test_range_search_equals_hamming_index(flat64):
    index, ref, _, q, _ = flat64
    for r in (0, 1, 12, 20):
        got, want = index.range_search(q, r), ref.range_search(q, r, method="scan")
        for g, w in zip(got, want):  # ids increase with insertion, so (distance, id) is HammingIndex's order
            np.testing.assert_array_equal(g, w)
    assert index.range_search(q, 1)[0][-1] >= 20


def test_labels_and_codes_round_trip(flat64):
    index, _, db, q, labels = flat64
    ids = np.array([3999, 0, 2500, 17])
    np.testing.assert_array_equal(index.get_codes(ids), db[ids])
    np.testing.assert_array_equal(index.get_labels(ids, num_classes=7), labels[ids])
    for got, row in zip(index.get_labels(ids), labels[ids]):
        np.testing.assert_array_equal(got, np.flatnonzero(row))
    with pytest.raises(KeyError, match="4000"):
        index.get_labels([1, 4000])
    D, I = index.search(q, 10, filter="array_contains(labels, 3)")
    assert np.all(labels[I.ravel(), 3] == 1)
    sub = np.flatnonzero(labels[:, 3])
    ref = HammingIndex(64)
    ref.add(db[sub], ids=sub)
    _assert_same_up_to_ties(D, I, ref.search(q, 10)[0], db[sub], q, ids=sub)


def test_remove_ids_count_and_odd_width(milvus_uri):
    rng = np.random.default_rng(1)
    db, q = _codes(rng, 1500, 60), _codes(rng, 30, 60)
    ids = rng.permutation(10_000)[:1500].astype(np.int64)
    name = _name()
    index = MilvusIndex(milvus_uri, name, 60)
    try:
        assert index.code_size == 8 and index.ntotal == 0
        index.add(db, ids=ids, labels=rng.integers(0, 5, 1500))
        ref = HammingIndex(60)
        ref.add(db, ids=ids)
        gone = ids[::3]
        assert index.remove_ids(np.concatenate([gone, [10_001, 10_002]])) == gone.size
        assert ref.remove_ids(gone) == gone.size
        assert index.ntotal == 1500 - gone.size and index.remove_ids(gone) == 0
        keep = np.isin(ids, gone, invert=True)
        order = np.argsort(ids[keep])
        D, I = index.search(q, 20)
        _assert_same_up_to_ties(D, I, ref.search(q, 20)[0], db[keep][order], q, ids=ids[keep][order])
        with pytest.raises(ValueError, match="unique"):
            index.add(db[:2], ids=[5, 5])
        with pytest.raises(ValueError, match="bits above bit 59"):
            index.add(np.full((1, 8), 255, dtype=np.uint8))
        again = MilvusIndex(milvus_uri, name)  # nbits read back from the collection
        assert again.nbits == 60 and again.ntotal == 1500 - gone.size
        with pytest.raises(ValueError, match="pass ids"):
            again.add(db[:1])
        again.close()
        for wrong in (64, 32):  # 64 has the same byte width as 60: nbits is stored with the collection
            with pytest.raises(MilvusIndexError, match=f"{milvus_uri}.*{name}.*60-bit codes.*not {wrong}-bit"):
                MilvusIndex(milvus_uri, name, wrong)
        with pytest.raises(MilvusIndexError, match="BIN_FLAT, not BIN_IVF_FLAT"):
            MilvusIndex(milvus_uri, name, 60, index_type="BIN_IVF_FLAT")
    finally:
        index.drop()
    with pytest.raises(MilvusIndexError, match=f"{milvus_uri}.*{name}.*does not exist"):
        MilvusIndex(milvus_uri, name)


def test_ivf_recall_rises_with_nprobe(milvus_uri):
    rng = np.random.default_rng(2)
    n, nq, k, nlist = 20_000, 50, 100, 32
    db, q = _codes(rng, n, 64), _codes(rng, nq, 64)
    ref = HammingIndex(64)
    ref.add(db)
    Dr, _ = ref.search(q, k)
    index = MilvusIndex(milvus_uri, _name(), 64, index_type="BIN_IVF_FLAT", nlist=nlist)
    try:
        index.add(db)
        index.flush()  # seal, build the IVF lists and wait until they serve queries
        recall = {}
        for nprobe in (1, 4, 16, nlist):
            index.nprobe = nprobe
            D, I = index.search(q, k)
            # recall@100 counting ties: returned codes no farther than the true 100th neighbour
            recall[nprobe] = float(np.mean(np.minimum((D <= Dr[:, -1:]).sum(axis=1), k)) / k)
        print("BIN_IVF_FLAT recall@100 by nprobe:", recall)
        values = list(recall.values())
        assert values == sorted(values) and values[0] < 0.9 and recall[nlist] == 1.0
        np.testing.assert_array_equal(D, Dr)  # every list probed: exact
    finally:
        index.drop()


def test_server_down_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(MilvusIndexError, match=f"cannot reach Milvus at {uri}") as info:
        MilvusIndex(uri, "codes", 64, timeout=2)
    assert "\n" not in str(info.value)


def test_missing_pymilvus_says_how_to_install(monkeypatch):
    from coophash.index import milvus as module

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ImportError, match=r"pip install 'coophash\[milvus\]'"):
        module.MilvusIndex("http://127.0.0.1:1", "codes", 64)


def test_argument_errors(flat64):
    index = flat64[0]
    with pytest.raises(ValueError, match="k must be"):
        index.search(flat64[3], 16385)
    with pytest.raises(ValueError, match="r must be"):
        index.range_search(flat64[3], -1)
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((1, 4), dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="index_type"):
        MilvusIndex("http://127.0.0.1:1", "codes", 64, index_type="HNSW")


def test_cli_index_and_search_on_milvus(milvus_uri, tmp_path):
    from click.testing import CliRunner

    from coophash.cli import cli
    from coophash.codefile import save_codes

    rng = np.random.default_rng(3)
    db, labels = _codes(rng, 300, 32), (rng.random((300, 6)) < 0.3).astype(np.float32)
    ids = np.arange(1000, 1300)
    save_codes(tmp_path / "db.codes", db, 32, ids=ids, labels=labels)
    save_codes(tmp_path / "q.codes", db[:4], 32)
    save_codes(tmp_path / "q16.codes", db[:4, :2], 16)
    name, runner = _name(), CliRunner()
    r = runner.invoke(cli, ["index", str(tmp_path / "db.codes"), "--milvus", milvus_uri, "--collection", name])
    assert r.exit_code == 0 and f"indexed 300 codes of 32 bits into collection {name!r}" in r.output, r.output
    try:
        r = runner.invoke(cli, ["search", "--milvus", milvus_uri, "--collection", name,
                                "--codes", str(tmp_path / "q.codes"), "-k", "5", "--json"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.output)
        ref = HammingIndex(32)
        ref.add(db, ids=ids)
        D, _ = ref.search(db[:4], 5)
        assert [[h["distance"] for h in e["hits"]] for e in res] == D.tolist()
        for e in res:
            assert e["hits"][0]["distance"] == 0
            for h in e["hits"]:
                assert h["labels"] == np.flatnonzero(labels[h["id"] - 1000]).tolist()
        r = runner.invoke(cli, ["index", str(tmp_path / "q16.codes"), "--milvus", milvus_uri, "--collection", name])
        assert r.exit_code == 1 and milvus_uri in r.output and "32-bit codes" in r.output
    finally:
        MilvusIndex(milvus_uri, name).drop()
    r = runner.invoke(cli, ["search", "--milvus", "http://127.0.0.1:1", "--collection", name,
                            "--codes", str(tmp_path / "q.codes")])
    assert r.exit_code == 1 and "cannot reach Milvus at http://127.0.0.1:1" in r.output
