"""Tests of the seeded split protocols and their manifest files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from coophash.data import DataError, HashDataset, Manifest, load_dataset, make_protocol, PROTOCOLS


def _single(per_class: int, n_classes: int = 10, shape=(1, 1, 1), seed: int = 0, groups=None) -> HashDataset:
    """Single-label dataset with classes in shuffled order (so stratification is really tested)."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    pixels = torch.from_numpy(rng.integers(0, 256, size=(classes.size, *shape), dtype=np.uint8))
    return HashDataset.from_tensors(pixels, classes, n_classes=n_classes, name=f"synthetic{per_class}", groups=groups)


def _multi(n: int = 400, n_classes: int = 6, seed: int = 0) -> HashDataset:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_classes)) < 0.3).astype(np.float32)
    labels[np.arange(n), rng.integers(0, n_classes, n)] = 1.0  # no empty rows
    pixels = torch.from_numpy(rng.integers(0, 256, size=(n, 1, 2, 2), dtype=np.uint8))
    return HashDataset.from_tensors(pixels, labels, name="multi")


@pytest.fixture(scope="module")
def big() -> HashDataset:
    """60,000 single-label items in 10 classes, the size of CIFAR-10."""
    return _single(6000)


@pytest.fixture(scope="module")
def mnist5k() -> HashDataset:
    return load_dataset("mnist5k")


def _per_class(dataset: HashDataset, idx: np.ndarray) -> list:
    return np.bincount(dataset.class_indices()[idx], minlength=dataset.n_classes).tolist()


def _check_invariants(m: Manifest, ds: HashDataset) -> None:
    """Every rule the module docstring promises, checked independently of Manifest.validate."""
    sets = {name: set(getattr(m, name).tolist()) for name in ("query", "validation", "database", "train", "labeled")}
    for name, values in sets.items():
        idx = getattr(m, name)
        assert idx.dtype == np.int64 and len(values) == idx.size, name
        assert np.all(np.diff(idx) > 0), f"{name} not sorted"
        assert all(0 <= v < len(ds) for v in (idx[0], idx[-1])) if idx.size else True
    assert not sets["query"] & sets["database"]
    assert not sets["query"] & sets["train"]
    assert not sets["validation"] & sets["query"]
    assert not sets["validation"] & sets["train"]
    assert sets["labeled"] <= sets["train"]
    if m.protocol in ("unseen", "cifar10"):
        assert not sets["train"] & sets["database"]  # the documented exceptions: train outside the database
    else:
        assert sets["train"] <= sets["database"]
    assert m.n_items == len(ds) and m.fingerprint == ds.fingerprint()
    m.check(ds)


SMALL_CASES = [
    ("standard", {"query_per_class": 5, "val_per_class": 4}),
    ("standard", {"query_per_class": 5, "val_per_class": 4, "train_per_class": 20}),
    ("standard", {"n_query": 30, "n_val": 20, "n_train": 100}),
    ("unseen", {"query_per_class": 5, "val_per_class": 4}),
    ("unseen", {"query_per_class": 5, "val_per_class": 4, "train_per_class": 10, "seen_classes": [1, 3, 5]}),
]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("label_fraction", [1.0, 0.1])
@pytest.mark.parametrize("protocol, params", SMALL_CASES)
def test_small_protocol_invariants(protocol, params, seed, label_fraction):
    ds = _single(40)
    m = make_protocol(ds, protocol, seed=seed, label_fraction=label_fraction, **params)
    _check_invariants(m, ds)
    if label_fraction == 1.0:
        assert np.array_equal(m.labeled, m.train)
    if protocol == "standard" and "query_per_class" in params:
        assert _per_class(ds, m.query) == [5] * 10 and _per_class(ds, m.validation) == [4] * 10
        expected_train = params.get("train_per_class", 40 - 9)
        assert _per_class(ds, m.train) == [expected_train] * 10
        assert _per_class(ds, m.database) == [31] * 10
        assert sorted(set(m.query) | set(m.validation) | set(m.database)) == list(range(len(ds)))
    if protocol == "unseen":
        seen = params.get("seen_classes", list(range(7)))
        unseen = [c for c in range(10) if c not in seen]
        assert m.seen_classes == seen and m.unseen_classes == unseen
        classes = ds.class_indices()
        assert set(classes[m.train]) <= set(seen) and set(classes[m.validation]) <= set(seen)
        assert set(classes[m.query]) == set(unseen) and set(classes[m.database]) == set(unseen)
        assert _per_class(ds, m.query) == [5 if c in unseen else 0 for c in range(10)]
        assert m.database.size == len(unseen) * 35


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("protocol", ["cifar10", "cifar10-1", "cifar10-2"])
def test_cifar_protocols(big, protocol, seed):
    m = make_protocol(big, protocol, seed=seed, label_fraction=0.02)
    _check_invariants(m, big)
    sizes = m.sizes()
    if protocol == "cifar10":
        assert (sizes["query"], sizes["train"], sizes["database"], sizes["validation"]) == (1000, 5000, 54000, 1000)
        assert _per_class(big, m.query) == [100] * 10 and _per_class(big, m.train) == [500] * 10
        assert set(m.validation) <= set(m.database)
    elif protocol == "cifar10-1":
        assert (sizes["query"], sizes["train"], sizes["database"], sizes["validation"]) == (1000, 5000, 59000, 1000)
        assert np.array_equal(m.database, np.setdiff1d(np.arange(60000), m.query))
        assert set(m.validation) <= set(m.database)
    else:
        assert (sizes["query"], sizes["database"], sizes["validation"], sizes["train"]) == (10000, 50000, 1000, 49000)
        assert _per_class(big, m.query) == [1000] * 10 and m.params["query_source"] == "random"
        assert np.array_equal(m.train, np.setdiff1d(m.database, m.validation))
    assert _per_class(big, m.validation) == [100] * 10
    assert _per_class(big, m.labeled) == [round(0.02 * n) for n in _per_class(big, m.train)]
    assert not set(m.validation_database) & set(m.validation)


def test_cifar10_2_uses_the_test_group():
    ds = _single(120, seed=2)
    classes = ds.class_indices()
    test = np.concatenate([np.flatnonzero(classes == c)[:20] for c in range(10)])
    ds = HashDataset.from_tensors(ds.pixels(), classes, n_classes=10, groups={"test": test})
    m = make_protocol(ds, "cifar10-2", val_per_class=10)
    assert np.array_equal(m.query, np.sort(test)) and m.params["query_source"] == "group:test"
    _check_invariants(m, ds)


def test_mnist5k_default_protocol(mnist5k):
    m = make_protocol(mnist5k)
    assert m.sizes() == {"query": 500, "validation": 500, "database": 4000, "train": 4000, "labeled": 4000}
    assert _per_class(mnist5k, m.query) == [50] * 10 and _per_class(mnist5k, m.database) == [400] * 10
    assert m.params == {"mode": "per_class", "query_per_class": 50, "val_per_class": 50, "train_per_class": None,
                        "label_fraction": 1.0}
    _check_invariants(m, mnist5k)
    low = make_protocol(mnist5k, label_fraction=0.02, seed=1)
    assert _per_class(mnist5k, low.labeled) == [8] * 10 and low.unlabeled.size == 4000 - 80


def test_label_fraction_rounds_half_up_and_keeps_one_per_class():
    ds = _single(30)
    m = make_protocol(ds, query_per_class=10, val_per_class=10, label_fraction=0.25)  # 10 train per class
    assert _per_class(ds, m.labeled) == [3] * 10  # 2.5 → 3 (half up, not banker's 2)
    tiny = make_protocol(ds, query_per_class=10, val_per_class=10, label_fraction=0.001)
    assert _per_class(ds, tiny.labeled) == [1] * 10
    with pytest.raises(ValueError, match="label_fraction"):
        make_protocol(ds, label_fraction=0.0)
    with pytest.raises(ValueError, match="label_fraction"):
        make_protocol(ds, label_fraction=1.5)


def test_multi_label_totals_and_first_label_stratification():
    ds = _multi()
    m = make_protocol(ds, seed=4, label_fraction=0.1)
    assert m.params["mode"] == "totals" and m.query.size == 40 and m.validation.size == 40
    assert m.database.size == 320 and np.array_equal(m.train, m.database)
    _check_invariants(m, ds)
    first = ds.labels.numpy().argmax(axis=1)
    counts = np.bincount(first[m.train], minlength=6)
    expected = [max(1, math.floor(0.1 * n + 0.5)) if n else 0 for n in counts]
    assert np.bincount(first[m.labeled], minlength=6).tolist() == expected
    sub = make_protocol(ds, n_query=50, n_val=10, n_train=100)
    assert sub.sizes() == {"query": 50, "validation": 10, "database": 340, "train": 100, "labeled": 100}
    with pytest.raises(ValueError, match="single-label"):
        make_protocol(ds, query_per_class=5)
    with pytest.raises(ValueError, match="single-label"):
        make_protocol(ds, "cifar10")


def test_multi_label_unseen_drops_mixed_items():
    ds = _multi(n=300)
    m = make_protocol(ds, "unseen", seed=1, seen_classes=[0, 1, 2])
    _check_invariants(m, ds)
    labels = ds.labels.numpy() > 0
    assert not labels[m.train][:, [3, 4, 5]].any() and not labels[m.validation][:, [3, 4, 5]].any()
    assert not labels[m.query][:, [0, 1, 2]].any() and not labels[m.database][:, [0, 1, 2]].any()
    mixed = int((labels[:, :3].any(1) & labels[:, 3:].any(1)).sum())
    assert m.params["n_dropped_mixed"] == mixed > 0
    used = m.query.size + m.validation.size + m.database.size + m.train.size
    assert used == len(ds) - mixed


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(tmp_path, big):
    for protocol, ds, params in [("standard", _single(40), {"query_per_class": 5, "val_per_class": 5}),
                                 ("unseen", _single(40), {"query_per_class": 5, "val_per_class": 5}),
                                 ("cifar10", big, {})]:
        a = make_protocol(ds, protocol, seed=11, label_fraction=0.5, **params).save(tmp_path / f"{protocol}-a.json")
        b = make_protocol(ds, protocol, seed=11, label_fraction=0.5, **params).save(tmp_path / f"{protocol}-b.json")
        c = make_protocol(ds, protocol, seed=12, label_fraction=0.5, **params).save(tmp_path / f"{protocol}-c.json")
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
        text = a.read_text()
        assert text.endswith("}\n") and text.count("\n") == 1 and ": " not in text
        assert list(json.loads(text)) == sorted(json.loads(text))


def test_splits_are_pinned_for_seed_zero():
    """Golden values: a change in the sampling code (or numpy's PCG64 stream) must show up here."""
    classes = np.arange(40) % 4
    ds = HashDataset.from_tensors(torch.zeros((40, 1, 1, 1), dtype=torch.uint8), classes, name="pinned")
    m = make_protocol(ds, query_per_class=2, val_per_class=1, seed=0)
    assert (m.query.tolist(), m.validation.tolist()) == (PINNED_QUERY, PINNED_VALIDATION)


PINNED_QUERY = [2, 5, 6, 8, 11, 12, 13, 23]
PINNED_VALIDATION = [4, 21, 22, 39]


def test_manifest_round_trip(tmp_path):
    ds = _single(40)
    m = make_protocol(ds, "unseen", seed=5, label_fraction=0.3, query_per_class=4, val_per_class=4)
    path = m.save(tmp_path / "runs" / "manifest.json")
    loaded = Manifest.load(path)
    for name in ("query", "validation", "database", "train", "labeled"):
        assert np.array_equal(getattr(loaded, name), getattr(m, name))
    assert (loaded.seed, loaded.protocol, loaded.params, loaded.seen_classes) == (5, "unseen", m.params, m.seen_classes)
    assert loaded.to_json() == path.read_text()
    loaded.check(ds)
    subset = loaded.subset(ds, "query")
    assert [subset[i][2] for i in range(3)] == m.query[:3].tolist()


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda d: d.pop("train"), r"missing field 'train'"),
        (lambda d: d.update(extra=1), r"unknown field 'extra'"),
        (lambda d: d.update(query=["1", "2"]), r"field 'query' must be a list of integers"),
        (lambda d: d.update(query=[5, 3]), r"field 'query'.*strictly increasing"),
        (lambda d: d.update(seed=-1), r"field 'seed'"),
        (lambda d: d.update(seed=True), r"field 'seed'"),
        (lambda d: d.update(fingerprint="abc"), r"field 'fingerprint'"),
        (lambda d: d.update(protocol="mystery"), r"field 'protocol'"),
        (lambda d: d.update(version=99), r"field 'version'"),
        (lambda d: d.update(params=[]), r"field 'params'"),
        (lambda d: d.update(labeled=sorted(d["labeled"] + [d["query"][0]])), r"'labeled' must lie inside 'train'"),
        (lambda d: d.update(validation=sorted(d["validation"] + [d["train"][0]])), r"'validation' and 'train' share"),
        (lambda d: d.update(database=[10**6]), r"'database' has indices outside"),
    ],
)
def test_manifest_load_errors_name_file_and_field(tmp_path, edit, pattern):
    ds = _single(20)
    data = json.loads(make_protocol(ds, query_per_class=3, val_per_class=3).to_json())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad\.json: .*" + pattern):
        Manifest.load(path)


def test_manifest_load_unreadable(tmp_path):
    with pytest.raises(DataError, match=r"none\.json: manifest file not found"):
        Manifest.load(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        Manifest.load(tmp_path / "broken.json")


def test_check_rejects_another_dataset():
    ds = _single(20)
    m = make_protocol(ds, query_per_class=3, val_per_class=3)
    pixels = ds.pixels().clone()
    pixels[0] ^= 1
    with pytest.raises(DataError, match="fingerprint"):
        m.check(HashDataset.from_tensors(pixels, ds.class_indices(), n_classes=10))
    with pytest.raises(DataError, match="200 items"):
        m.check(_single(21))


def test_bad_parameters():
    ds = _single(20)
    with pytest.raises(ValueError, match=r"class \d has 20 items"):
        make_protocol(ds, query_per_class=15, val_per_class=10)
    with pytest.raises(ValueError, match="unknown protocol"):
        make_protocol(ds, "nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        make_protocol(ds, query_per_klass=3)
    with pytest.raises(ValueError, match="not both"):
        make_protocol(ds, query_per_class=3, n_query=3)
    with pytest.raises(ValueError, match="seed"):
        make_protocol(ds, seed=-1)
    with pytest.raises(ValueError, match="every class"):
        make_protocol(ds, "unseen", seen_classes=list(range(10)))
    with pytest.raises(ValueError, match="class 0 has 20 items"):
        make_protocol(_single(20), "cifar10")
    assert set(PROTOCOLS) == {"standard", "unseen", "cifar10", "cifar10-1", "cifar10-2"}


def test_unseen_validation_retrieves_among_seen_classes():
    ds = _single(120)
    m = make_protocol(ds, "unseen", seed=0)
    classes = ds.labels.argmax(dim=1).numpy()
    seen = set(m.seen_classes)
    vdb = m.validation_database
    assert len(vdb) > 0 and set(classes[vdb]) <= seen
    assert not set(vdb) & set(m.validation)
    # every validation query has relevant items to find (model selection is meaningful)
    assert set(classes[m.validation]) <= set(classes[vdb])
    # the standard protocol is unchanged: validation retrieves from the database
    s = make_protocol(ds, "standard", seed=0, query_per_class=10, val_per_class=10)
    np.testing.assert_array_equal(s.validation_database, np.setdiff1d(s.database, s.validation))
