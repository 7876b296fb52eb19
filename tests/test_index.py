"""Tests of coophash.index.HammingIndex: every backend against a brute-force reference, MIH vs scan,
file format robustness and FAISS interop."""
from __future__ import annotations

import os

import numpy as np
import pytest

from coophash.codes import hamming_distance, n_bytes, pack_bits
from coophash.index import HammingIndex, IndexFileError
from coophash.index import _kernels, mih

SENTINEL = np.iinfo(np.int32).max
KS = [7, 16, 32, 64, 100, 128]


def _backend_param(name: str):
    marks = []
    if name == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            marks.append(pytest.mark.skip(reason="faiss not installed"))
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [_backend_param(b) for b in ("numba", "numpy", "faiss")]


def _tied_codes(rng: np.random.Generator, n: int, nbits: int, pool: int = 40, p: float = 0.15) -> np.ndarray:
    """Packed codes with many duplicates and many equal distances: n draws from a small pool of sparse codes."""
    base = (rng.random((pool, nbits)) < p).astype(np.uint8)
    bits = base[rng.integers(0, pool, size=n)]
    flip = rng.random((n, nbits)) < 0.03  # a few near-duplicates too
    bits = np.where(flip, 1 - bits, bits).astype(np.uint8)
    return pack_bits(bits)


def _reference_search(q: np.ndarray, db: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: exact distances, stable argsort (ties by insertion order), padding with -1 / sentinel."""
    nq = q.shape[0]
    D = np.full((nq, k), SENTINEL, dtype=np.int32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if db.shape[0] == 0:
        return D, I
    dist = hamming_distance(q, db)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    c = order.shape[1]
    D[:, :c] = np.take_along_axis(dist, order, axis=1)
    I[:, :c] = ids[order]
    return D, I


def _reference_range(q: np.ndarray, db: np.ndarray, ids: np.ndarray, r: int):
    dist = hamming_distance(q, db)
    lims = [0]
    Ds, Is = [], []
    for row in dist:
        hit = np.flatnonzero(row <= r)
        order = np.argsort(row[hit], kind="stable")
        Ds.append(row[hit][order])
        Is.append(ids[hit][order])
        lims.append(lims[-1] + hit.size)
    return np.array(lims, dtype=np.int64), np.concatenate(Ds).astype(np.int32), np.concatenate(Is).astype(np.int64)


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        np.testing.assert_array_equal(g, w)


# ----------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nbits", KS)
def test_search_matches_bruteforce_with_ties(backend: str, nbits: int) -> None:
    rng = np.random.default_rng(nbits)
    db = _tied_codes(rng, 700, nbits)
    q = np.concatenate([db[rng.integers(0, 700, 12)], _tied_codes(rng, 12, nbits)])
    index = HammingIndex(nbits, backend=backend)
    index.add(db[:300])
    index.add(db[300:])  # default ids continue: 0..699
    np.testing.assert_array_equal(index.ids, np.arange(700))
    ids = np.arange(700, dtype=np.int64)
    for k in (1, 5, 50, 333):
        D, I = index.search(q, k)
        assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == (q.shape[0], k)
        _assert_same((D, I), _reference_search(q, db, ids, k))
    # The data really has ties at the cut-off, or the test would not test the tie order.
    dist = hamming_distance(q, db)
    kth = np.sort(dist, axis=1)[:, 49]
    assert np.all((dist == kth[:, None]).sum(axis=1) > 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_k_larger_than_ntotal_pads(backend: str) -> None:
    rng = np.random.default_rng(1)
    db = _tied_codes(rng, 9, 64)
    index = HammingIndex(64, backend=backend)
    index.add(db)
    D, I = index.search(db[:3], 20)
    _assert_same((D, I), _reference_search(db[:3], db, np.arange(9), 20))
    assert np.all(I[:, 9:] == -1) and np.all(D[:, 9:] == SENTINEL)
    empty = HammingIndex(64, backend=backend)
    D, I = empty.search(db[:2], 4)
    assert np.all(I == -1) and np.all(D == SENTINEL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ids_remove_and_reset(backend: str) -> None:
    rng = np.random.default_rng(2)
    nbits = 100
    db = _tied_codes(rng, 400, nbits)
    ids = rng.permutation(10_000)[:400].astype(np.int64) + 5
    q = db[rng.integers(0, 400, 10)]
    index = HammingIndex(nbits, backend=backend)
    index.add(db, ids=ids)
    _assert_same(index.search(q, 30), _reference_search(q, db, ids, 30))

    gone = ids[rng.choice(400, 150, replace=False)]
    assert index.remove_ids(np.concatenate([gone, [10**9]])) == 150
    keep = ~np.isin(ids, gone)
    assert index.ntotal == int(keep.sum())
    np.testing.assert_array_equal(index.ids, ids[keep])
    np.testing.assert_array_equal(index.codes, db[keep])
    _assert_same(index.search(q, 30), _reference_search(q, db[keep], ids[keep], 30))
    _assert_same(index.range_search(q, 4, method="mih"), _reference_range(q, db[keep], ids[keep], 4))

    # Appending after a removal keeps insertion order; default ids continue past the largest id.
    extra = _tied_codes(rng, 50, nbits)
    index.add(extra)
    new_ids = np.arange(int(ids.max()) + 1, int(ids.max()) + 51)
    np.testing.assert_array_equal(index.ids[-50:], new_ids)
    all_db = np.concatenate([db[keep], extra])
    all_ids = np.concatenate([ids[keep], new_ids])
    _assert_same(index.search(q, 60), _reference_search(q, all_db, all_ids, 60))

    index.reset()
    assert index.ntotal == 0 and len(index) == 0
    D, I = index.search(q, 3)
    assert np.all(I == -1)
    index.add(db[:5])
    np.testing.assert_array_equal(index.ids, np.arange(5))


def test_numba_parallel_matches_serial() -> None:
    rng = np.random.default_rng(3)
    db = _tied_codes(rng, 3000, 128)
    q = _tied_codes(rng, 70, 128)
    one = HammingIndex(128, backend="numba", n_threads=1)
    two = HammingIndex(128, backend="numba", n_threads=2)
    one.add(db)
    two.add(db)
    ref = _reference_search(q, db, np.arange(3000), 25)
    _assert_same(one.search(q, 25), ref)
    _assert_same(two.search(q, 25), ref)


# ----------------------------------------------------------------------------------------------- range search
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nbits", [16, 64, 100])
def test_range_search_mih_and_scan_match_bruteforce(backend: str, nbits: int) -> None:
    rng = np.random.default_rng(10 + nbits)
    db = _tied_codes(rng, 900, nbits, pool=60, p=0.3)
    ids = np.arange(900, dtype=np.int64) * 3 + 1
    q = np.concatenate([db[rng.integers(0, 900, 15)], _tied_codes(rng, 10, nbits, pool=60, p=0.3)])
    index = HammingIndex(nbits, backend=backend)
    index.add(db, ids=ids)
    for r in (0, 1, 2, 3, 5):
        want = _reference_range(q, db, ids, r)
        assert want[0][-1] > 0
        for method in ("mih", "scan", "auto"):
            got = index.range_search(q, r, method=method)
            _assert_same(got, want)
        # inclusive: the hits at exactly distance r are there (when some exist)
        if np.any(want[1] == r):
            assert np.any(index.range_search(q, r, method="mih")[1] == r)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_mih_every_split_is_exact(backend: str) -> None:
    """Force every substring count m for several radii (covers per-substring radius s = r // m > 0)."""
    rng = np.random.default_rng(5)
    nbits = 40
    db = _tied_codes(rng, 500, nbits, pool=50, p=0.3)
    q = db[:8]
    index = HammingIndex(nbits, backend=backend)
    index.add(db)
    words = index._db()
    ids = np.arange(500, dtype=np.int64)
    qw = index._pad(q)
    for m in (1, 2, 3, 5, 8):
        starts, lens = mih.split(nbits, m)
        tables = mih.build_tables(words, starts, lens, with_codes=backend == "numba")
        for r in (0, 2, 4, 7):
            s = r // m
            if mih._ball(max(lens), s) > 3000:
                continue
            masks, nmasks = mih.masks_for(tables, s)
            want = _reference_range(q, db, ids, r)
            if backend == "numba":
                got = _kernels.mih_range(
                    tables.tcodes, index.ntotal, np.ascontiguousarray(qw).reshape(-1), ids, r, s, tables.starts,
                    tables.lens, tables.shifts, tables.keys, tables.perm, tables.offs, masks, nmasks,
                )
            else:
                got = mih.query_numpy(words, qw, ids, r, s, tables, masks, nmasks)
            _assert_same(got, want)


def test_mih_tables_lazy_and_invalidated() -> None:
    rng = np.random.default_rng(6)
    db = rng.integers(0, 256, size=(20_000, 8), dtype=np.uint8)
    index = HammingIndex(64, backend="numba")
    index.add(db)
    assert not index._tables
    index.range_search(db[:4], 2)
    assert index.last_range_method == "mih" and index._tables  # small radius on 20k codes: sublinear path
    index.add(db[:10])
    assert not index._tables  # add invalidates
    lims, D, I = index.range_search(db[:4], 0)
    assert list(np.diff(lims)) == [2, 2, 2, 2]  # each query now has its duplicate
    index.remove_ids([0])
    assert not index._tables
    index.range_search(db[:4], 20)
    assert index.last_range_method == "scan"  # large radius: MIH degenerates, falls back to the scan


def test_mih_plan_uses_pigeonhole() -> None:
    p = mih.plan(64, 1_000_000, 2, 0.15)
    assert p is not None and p.beats_scan
    assert p.s == 2 // p.m and sum(p.lens) == 64
    assert mih.plan(64, 1_000_000, 30, 0.15) is None or not mih.plan(64, 1_000_000, 30, 0.15).beats_scan


# ----------------------------------------------------------------------------------------------- validation
def test_add_rejects_bad_codes() -> None:
    index = HammingIndex(64)
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        index.add(np.zeros((3, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        index.add(np.zeros((3, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="ids"):
        index.add(np.zeros((3, 8), dtype=np.uint8), ids=np.arange(2))
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.zeros((2, 8), dtype=np.uint8), ids=np.array([1, -1]))
    index7 = HammingIndex(7)
    with pytest.raises(ValueError, match="zero"):
        index7.add(np.array([[0x80]], dtype=np.uint8))  # bit 7 does not exist in a 7-bit code
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        index.search(np.zeros((1, 16), dtype=np.uint8), 1)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 8), dtype=np.uint8), 0)
    with pytest.raises(ValueError):
        index.range_search(np.zeros((1, 8), dtype=np.uint8), -1)
    with pytest.raises(ValueError):
        HammingIndex(64, backend="gpu")
    assert index.ntotal == 0


def test_torch_input_accepted() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    db = rng.integers(0, 256, size=(50, 4), dtype=np.uint8)
    index = HammingIndex(32)
    index.add(torch.from_numpy(db))
    D, I = index.search(torch.from_numpy(db[:3]), 1)
    np.testing.assert_array_equal(I[:, 0], [0, 1, 2])


# ----------------------------------------------------------------------------------------------- files
def _small_index(nbits: int = 64, n: int = 200) -> tuple[HammingIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    db = _tied_codes(rng, n, nbits)
    ids = rng.permutation(5 * n)[:n].astype(np.int64)
    index = HammingIndex(nbits)
    index.add(db, ids=ids)
    return index, db, ids


@pytest.mark.parametrize("nbits", [7, 64, 100])
def test_save_load_round_trip(tmp_path, nbits: int) -> None:
    index, db, ids = _small_index(nbits)
    path = tmp_path / "codes.chidx"
    index.save(path)
    index.save(path)  # overwriting is fine
    assert sorted(os.listdir(tmp_path)) == ["codes.chidx"]  # no temporary file left behind
    loaded = HammingIndex.load(path, nbits=nbits)
    assert loaded.nbits == nbits and loaded.ntotal == index.ntotal
    np.testing.assert_array_equal(loaded.codes, db)
    np.testing.assert_array_equal(loaded.ids, ids)
    _assert_same(loaded.search(db[:10], 17), index.search(db[:10], 17))
    loaded.add(db[:1])
    assert loaded.ids[-1] == ids.max() + 1
    raw = path.read_bytes()
    assert raw[:5] == b"CHIDX"
    assert len(raw) == 24 + db.size + 8 * len(ids) + 32


def test_load_truncated(tmp_path) -> None:
    index, _, _ = _small_index()
    path = tmp_path / "t.chidx"
    index.save(path)
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 10):
        path.write_bytes(raw[:cut])
        with pytest.raises(IndexFileError, match="truncated") as err:
            HammingIndex.load(path)
        assert str(path) in str(err.value)
    path.write_bytes(raw + b"\0")
    with pytest.raises(IndexFileError, match="trailing"):
        HammingIndex.load(path)


def test_load_corrupted_checksum(tmp_path) -> None:
    index, _, _ = _small_index()
    path = tmp_path / "c.chidx"
    index.save(path)
    raw = bytearray(path.read_bytes())
    for pos in (30, len(raw) - 40, len(raw) - 1):  # a code byte, an id byte, the digest itself
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(IndexFileError, match="checksum") as err:
            HammingIndex.load(path)
        assert str(path) in str(err.value)


def test_load_wrong_magic_version_and_nbits(tmp_path) -> None:
    index, _, _ = _small_index()
    path = tmp_path / "m.chidx"
    index.save(path)
    raw = path.read_bytes()
    path.write_bytes(b"NOTIX" + raw[5:])
    with pytest.raises(IndexFileError, match="magic"):
        HammingIndex.load(path)
    path.write_bytes(raw[:5] + bytes([99]) + raw[6:])
    with pytest.raises(IndexFileError, match="version 99"):
        HammingIndex.load(path)
    path.write_bytes(raw)
    with pytest.raises(IndexFileError, match="64-bit.*expected 32-bit") as err:
        HammingIndex.load(path, nbits=32)
    assert str(path) in str(err.value)
    assert issubclass(IndexFileError, ValueError)
    assert HammingIndex.load(path, nbits=64).ntotal == 200


def test_no_pickle_in_index_package() -> None:
    import coophash.index as pkg

    folder = os.path.dirname(pkg.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                assert "import pickle" not in f.read(), name


# ----------------------------------------------------------------------------------------------- FAISS interop
@pytest.mark.parametrize("nbits", [16, 64, 100])
def test_faiss_round_trip(nbits: int) -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(9)
    db = _tied_codes(rng, 500, nbits)
    q = db[:20]
    index = HammingIndex(nbits)
    index.add(db)
    f = index.to_faiss()
    assert isinstance(f, faiss.IndexBinaryFlat) and f.d == 8 * n_bytes(nbits) and f.ntotal == 500
    Df, _ = f.search(q, 40)
    D, I = index.search(q, 40)
    np.testing.assert_array_equal(D, Df)  # same distances (FAISS's own tie order may differ)
    back = HammingIndex.from_faiss(f, nbits=nbits)
    _assert_same(back.search(q, 40), (D, I))
    _assert_same(back.range_search(q, 3), index.range_search(q, 3))

    ids = rng.permutation(10_000)[:500].astype(np.int64)
    custom = HammingIndex(nbits)
    custom.add(db, ids=ids)
    fm = custom.to_faiss()
    assert isinstance(fm, faiss.IndexBinaryIDMap)
    Dm, Im = fm.search(q, 1)
    np.testing.assert_array_equal(Dm[:, 0], 0)
    assert np.all(np.isin(Im[:, 0], ids))
    back = HammingIndex.from_faiss(fm, nbits=nbits)
    np.testing.assert_array_equal(back.ids, ids)
    _assert_same(back.search(q, 40), custom.search(q, 40))

    plain = faiss.IndexBinaryFlat(nbits if nbits % 8 == 0 else 8 * n_bytes(nbits))
    plain.add(db)
    from_plain = HammingIndex.from_faiss(plain)
    assert from_plain.nbits == plain.d
    np.testing.assert_array_equal(from_plain.search(q, 40)[0], D)


def test_faiss_wrapper_reorders_ties_whatever_faiss_returns() -> None:
    """The FAISS backend must not rely on FAISS's order among equal distances: feed it a fake engine that
    returns ties in reverse insertion order and check the answer is still the stable reference."""
    from coophash.index import _faiss_backend

    rng = np.random.default_rng(11)
    db = _tied_codes(rng, 300, 16, pool=10)
    q = db[:6]
    dist = hamming_distance(q, db)

    class ReversedTies:
        ntotal = db.shape[0]

        def search(self, qsub: np.ndarray, kk: int):
            rows = qsub[:, 0].astype(np.int64)
            pos = np.arange(self.ntotal)
            order = np.stack([np.lexsort((-pos, dist[r]))[:kk] for r in rows])
            return np.take_along_axis(dist[rows], order, axis=1), order

    ids = np.arange(300, dtype=np.int64) + 1000
    qidx = np.arange(6, dtype=np.uint8)[:, None]  # the fake engine reads the query number from byte 0
    for k in (1, 7, 40):
        got = _faiss_backend.topk(ReversedTies(), qidx, ids, k)
        _assert_same(got, _reference_search(q, db, ids, k))


def test_works_without_numba() -> None:
    """With numba missing, 'auto' falls back to the NumPy backend (including NumPy MIH)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from coophash.index import HammingIndex\n"
        "from coophash.codes import hamming_distance\n"
        "rng = np.random.default_rng(0)\n"
        "db = rng.integers(0, 256, size=(3000, 8), dtype=np.uint8)\n"
        "ix = HammingIndex(64)\n"
        "assert ix.backend == 'numpy', ix.backend\n"
        "ix.add(db)\n"
        "D, I = ix.search(db[:5], 3)\n"
        "assert (I[:, 0] == np.arange(5)).all() and (D[:, 0] == 0).all()\n"
        "lims, D, I = ix.range_search(db[:5], 1, method='mih')\n"
        "assert list(I[lims[:-1]]) == [0, 1, 2, 3, 4]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
