"""One path from a config to a trainer: ``Hasher.fit`` and ``coophash train`` make the same split and codes.

Both build a TrainConfig and call ``coophash.pipeline.train``; the manifest of a run is made in one place
(``prepare_data``), which honours ``split_seed`` and a ``manifest`` file given in the config.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from coophash.api import Hasher
from coophash.cli import cli
from coophash.config import TrainConfig
from coophash.data import Manifest, load_dataset, make_protocol
from coophash.train import runs
from coophash.train.trainer import prepare_data

PROTOCOL_ARGS = {"query_per_class": 10, "val_per_class": 10}
COMMON = dict(bits=8, epochs=1, batch_size=32, label_fraction=0.5, seed=0)


def _cli_train(out, *extra):
    args = ["train", "--dataset", "digits", "--bits", "8", "--epochs", "1", "--batch-size", "32",
            "--label-fraction", "0.5", "--seed", "0", "--out", str(out), "--quiet",
            "--set", "protocol_args.query_per_class=10", "--set", "protocol_args.val_per_class=10", *extra]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    (run,) = runs.list_runs(out)
    return run


def _manifest(run_dir):
    return json.loads((run_dir / runs.MANIFEST).read_text())


def _same_codes(hasher, cli_run, ds, idx):
    a = hasher.encode(ds.images(idx))
    b = Hasher.load(cli_run).encode(ds.images(idx))
    np.testing.assert_array_equal(a, b)
    return a


def test_prepare_data_honours_split_seed_and_manifest(tmp_path):
    ds = load_dataset("digits")
    base = dict(dataset="digits", label_fraction=0.5, protocol_args=PROTOCOL_ARGS)
    _, by_seed = prepare_data(TrainConfig.from_dict({**base, "seed": 3}), ds)
    _, by_split_seed = prepare_data(TrainConfig.from_dict({**base, "seed": 0, "split_seed": 3}), ds)
    assert by_seed.to_dict() == by_split_seed.to_dict()
    assert by_seed.to_dict() == make_protocol(ds, seed=3, label_fraction=0.5, **PROTOCOL_ARGS).to_dict()
    path = make_protocol(ds, seed=9, **PROTOCOL_ARGS).save(tmp_path / "m.json")
    got_ds, from_file = prepare_data(TrainConfig.from_dict({**base, "manifest": str(path)}), ds)
    assert got_ds is ds and from_file.to_dict() == Manifest.load(path).to_dict()
    given = make_protocol(ds, seed=4, **PROTOCOL_ARGS)
    assert prepare_data(TrainConfig.from_dict({**base, "manifest": str(path)}), ds, given)[1] is given


def test_hasher_and_cli_honour_split_seed_with_identical_codes(tmp_path):
    ds = load_dataset("digits")
    cli_run = _cli_train(tmp_path / "cli", "--set", "split_seed=5")
    h = Hasher(**COMMON, split_seed=5, protocol_args=PROTOCOL_ARGS, run_dir=tmp_path / "hasher").fit(ds)
    want = make_protocol(ds, seed=5, label_fraction=0.5, **PROTOCOL_ARGS).to_dict()
    other = make_protocol(ds, seed=0, label_fraction=0.5, **PROTOCOL_ARGS).to_dict()
    assert want["query"] != other["query"]  # the split seed matters, so the check below means something
    for run in (cli_run, tmp_path / "hasher"):
        got = _manifest(run)
        assert {k: got[k] for k in ("query", "train", "labeled")} == {k: want[k] for k in ("query", "train", "labeled")}
    assert runs.read_config(cli_run)["split_seed"] == 5 and h.config_.split_seed == 5
    codes = _same_codes(h, cli_run, ds, np.asarray(want["query"]))
    assert codes.shape == (len(want["query"]), 1)
    cli_results = json.loads((cli_run / "results.json").read_text())
    assert h.results_["map@all"] == cli_results["map@all"]


def test_hasher_and_cli_honour_a_manifest_file_with_identical_codes(tmp_path):
    ds = load_dataset("digits")
    path = make_protocol(ds, seed=7, label_fraction=0.5, **PROTOCOL_ARGS).save(tmp_path / "split.json")
    want = Manifest.load(path).to_dict()
    cli_run = _cli_train(tmp_path / "cli", "--manifest", str(path))
    h = Hasher(**COMMON, manifest=str(path), run_dir=tmp_path / "hasher").fit(ds)
    for run in (cli_run, tmp_path / "hasher"):
        got = _manifest(run)
        assert {k: got[k] for k in ("query", "database", "train", "labeled")} == {
            k: want[k] for k in ("query", "database", "train", "labeled")}
    _same_codes(h, cli_run, ds, np.asarray(want["database"]))
    assert h.results_["map@all"] == pytest.approx(json.loads((cli_run / "results.json").read_text())["map@all"],
                                                  rel=0, abs=0)
