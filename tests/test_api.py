"""The Python front: Hasher(...).fit(dataset).encode(images), reload from the run folder, LSH floor."""
import numpy as np
import pytest
import torch

from coophash.api import Hasher
from coophash.data import load_dataset, make_protocol
from coophash.methods.lsh import RandomProjectionHash
from coophash.metrics import mean_average_precision


def test_hasher_fit_encode_and_reload(tmp_path):
    ds = load_dataset("digits")
    mf = make_protocol(ds, seed=0, query_per_class=10, val_per_class=10)
    h = Hasher(loss="dpsh", bits=12, epochs=2, seed=0, run_dir=tmp_path / "run").fit(ds, mf)
    codes = h.encode(ds.images(mf.query))
    assert codes.dtype == np.uint8 and codes.shape == (len(mf.query), 2)
    assert (codes[:, 1] >> 4).max() == 0  # padding bits of a 12-bit code stay zero
    assert h.encode(torch.zeros(0, 1, 8, 8)).shape == (0, 2)
    np.testing.assert_array_equal(h.encode(ds.images(mf.query), batch_size=7), codes)  # batching changes nothing
    db = h.encode(ds.images(mf.database))
    m = mean_average_precision(codes, db, ds.labels[mf.query].numpy(), ds.labels[mf.database].numpy(), 12)
    assert m == pytest.approx(h.results_["map@all"])
    again = Hasher.load(tmp_path / "run")
    np.testing.assert_array_equal(again.encode(ds.images(mf.query)), codes)
    with pytest.raises(RuntimeError, match="fit"):
        Hasher().encode(torch.zeros(1, 1, 8, 8))


def test_lsh_is_seeded_and_beats_chance():
    ds = load_dataset("digits")
    mf = make_protocol(ds, seed=1)
    x_train = ds.images(mf.train)
    a = RandomProjectionHash(32, seed=5).fit(x_train).encode(ds.images(mf.query))
    b = RandomProjectionHash(32, seed=5).fit(x_train).encode(ds.images(mf.query))
    c = RandomProjectionHash(32, seed=6).fit(x_train).encode(ds.images(mf.query))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    from coophash.demo import lsh_baseline

    res = lsh_baseline(ds, mf, bits=32, seed=0)
    assert res["map@all"] > 2 * res["chance_map"]
    assert 0.09 < res["chance_map"] < 0.11
