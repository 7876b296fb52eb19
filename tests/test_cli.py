"""The command-line tool end to end on a tiny budget: train, eval, encode, index, search, list, errors."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from coophash.cli import cli
from coophash.codefile import load_codes, save_codes
from coophash.index import HammingIndex


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = CliRunner().invoke(cli, [
        "train", "--dataset", "digits", "--loss", "csq", "--bits", "16", "--epochs", "2", "--batch-size", "32",
        "--label-fraction", "0.5", "--out", str(root), "--quiet",
        "--set", "protocol_args.query_per_class=10", "--set", "protocol_args.val_per_class=10",
    ])
    assert r.exit_code == 0, r.output
    assert "map@all=" in r.output
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(runs) == 1 and runs[0].name.startswith("00000-supervised-csq")
    return root, runs[0]


def test_list():
    r = CliRunner().invoke(cli, ["list"])
    assert r.exit_code == 0
    for word in ("dpsh", "csq", "greedyhash", "orthohash", "smallconv", "resnet18", "mnist5k", "cifar10", "supervised"):
        assert word in r.output


def test_eval_writes_metrics_and_plot(trained, tmp_path):
    root, run = trained
    r = CliRunner().invoke(cli, ["eval", "0", "--root", str(root), "--out", str(tmp_path / "ev"), "--topk", "10,50"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= m["map@all"] <= 1.0 and "precision@10" in m and "precision@r2" in m
    results = json.loads((run / "results.json").read_text())
    assert m["map@all"] == pytest.approx(results["map@all"])  # same checkpoint, same split
    png = (tmp_path / "ev" / "pr_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((tmp_path / "ev" / "pr_curve.json").read_text())
    assert len(curve["radius"]) == 17


def test_encode_index_search_roundtrip(trained, tmp_path):
    root, run = trained
    runner = CliRunner()
    db = tmp_path / "db.codes"
    r = runner.invoke(cli, ["encode", str(run), "--split", "database", "--out", str(db)])
    assert r.exit_code == 0, r.output
    cf = load_codes(db, nbits=16)
    manifest = json.loads((run / "manifest.json").read_text())
    assert cf.codes.shape == (len(manifest["database"]), 2)
    assert cf.ids.tolist() == manifest["database"]
    q = tmp_path / "q.codes"
    assert runner.invoke(cli, ["encode", str(run), "--split", "query", "--out", str(q)]).exit_code == 0
    idx_path = tmp_path / "db.chidx"
    r = runner.invoke(cli, ["index", str(db), "--out", str(idx_path)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["search", str(idx_path), "--codes", str(q), "-k", "5", "--json", "--limit", "3"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert len(res) == 3 and all(len(e["hits"]) == 5 for e in res)
    # the CLI answers equal a direct search with the library
    index = HammingIndex.load(idx_path)
    qc = load_codes(q)
    D, I = index.search(qc.codes[:3], 5)
    assert [[h["id"] for h in e["hits"]] for e in res] == I.tolist()
    assert [[h["distance"] for h in e["hits"]] for e in res] == D.tolist()
    assert all("labels" in h for h in res[0]["hits"])
    # radius search
    r = runner.invoke(cli, ["search", str(idx_path), "--codes", str(q), "--radius", "1", "--json", "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert all(h["distance"] <= 1 for e in json.loads(r.output) for h in e["hits"])


def test_search_with_images(trained, tmp_path):
    root, run = trained
    runner = CliRunner()
    db = tmp_path / "db.codes"
    assert runner.invoke(cli, ["encode", str(run), "--out", str(db)]).exit_code == 0
    assert runner.invoke(cli, ["index", str(db), "--out", str(tmp_path / "i.chidx")]).exit_code == 0
    img = tmp_path / "q.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(img)
    r = runner.invoke(cli, ["search", str(tmp_path / "i.chidx"), "--images", str(img), "--run", str(run), "-k", "3"])
    assert r.exit_code == 0, r.output
    assert "query" in r.output and "d=" in r.output


def test_bad_arguments_give_clear_errors(trained, tmp_path):
    root, run = trained
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--loss", "nope", "--epochs", "1", "--out", str(tmp_path), "--quiet",
                            "--dataset", "digits"])
    assert r.exit_code != 0 and "nope" in r.output
    r = runner.invoke(cli, ["train", "--label-fraction", "2", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "label_fraction" in r.output
    r = runner.invoke(cli, ["train", "--set", "bogus", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "KEY=VALUE" in r.output
    r = runner.invoke(cli, ["eval", "42", "--root", str(root)])
    assert r.exit_code != 0
    bad = tmp_path / "bad.codes"
    bad.write_bytes(b"not a code file at all")
    r = runner.invoke(cli, ["index", str(bad), "--out", str(tmp_path / "x.chidx")])
    assert r.exit_code != 0 and "bad.codes" in r.output
    # a 32-bit query file against a 16-bit index
    save_codes(tmp_path / "q32.codes", np.zeros((2, 4), np.uint8), 32)
    db = tmp_path / "db.codes"
    assert runner.invoke(cli, ["encode", str(run), "--out", str(db)]).exit_code == 0
    assert runner.invoke(cli, ["index", str(db), "--out", str(tmp_path / "i.chidx")]).exit_code == 0
    r = runner.invoke(cli, ["search", str(tmp_path / "i.chidx"), "--codes", str(tmp_path / "q32.codes")])
    assert r.exit_code != 0 and "expected 16" in r.output


def test_resume_extends_a_finished_run(tmp_path):
    runner = CliRunner()
    common = ["--out", str(tmp_path), "--quiet"]
    r = runner.invoke(cli, ["train", "--dataset", "digits", "--bits", "8", "--epochs", "1", *common,
                            "--set", "protocol_args.query_per_class=10", "--set", "protocol_args.val_per_class=10"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["train", "--resume", "0", "--epochs", "2", *common])
    assert r.exit_code == 0, r.output
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "epoch" in x and not x.get("final")] == [1, 2]
    r = runner.invoke(cli, ["train", "--resume", "7", *common])
    assert r.exit_code != 0


def test_index_again_then_search_shows_the_new_labels(trained, tmp_path):
    """`coophash index` over an existing index: search shows the labels of the codes indexed now (issue 13)."""
    root, run = trained
    runner = CliRunner()
    db, q, idx = tmp_path / "db.codes", tmp_path / "q.codes", tmp_path / "db.chidx"
    assert runner.invoke(cli, ["encode", str(run), "--out", str(db)]).exit_code == 0
    assert runner.invoke(cli, ["encode", str(run), "--split", "query", "--out", str(q)]).exit_code == 0

    def hits():
        r = runner.invoke(cli, ["search", str(idx), "--codes", str(q), "-k", "5", "--json", "--limit", "4"])
        assert r.exit_code == 0, r.output
        return [h for e in json.loads(r.output) for h in e["hits"]]

    assert runner.invoke(cli, ["index", str(db), "--out", str(idx)]).exit_code == 0
    cf = load_codes(db)
    first = hits()
    by_id = dict(zip(cf.ids.tolist(), cf.labels))
    assert all(h["labels"] == np.flatnonzero(by_id[h["id"]]).tolist() for h in first)
    # the same codes and ids with other labels (class c -> c+1), indexed into the same file
    relabelled = tmp_path / "relabelled.codes"
    save_codes(relabelled, cf.codes, cf.nbits, ids=cf.ids, labels=np.roll(cf.labels, 1, axis=1))
    assert runner.invoke(cli, ["index", str(relabelled), "--out", str(idx)]).exit_code == 0
    second = hits()
    assert [h["id"] for h in second] == [h["id"] for h in first]
    n_classes = cf.labels.shape[1]
    assert all(h2["labels"] == [(c + 1) % n_classes for c in h1["labels"]] for h1, h2 in zip(first, second))
    # codes without labels: no labels shown (not the previous ones)
    bare = tmp_path / "bare.codes"
    save_codes(bare, cf.codes, cf.nbits, ids=cf.ids)
    assert runner.invoke(cli, ["index", str(bare), "--out", str(idx)]).exit_code == 0
    assert all("labels" not in h for h in hits())


def test_encode_16_bit_png_like_its_8_bit_twin(trained, tmp_path):
    """A 16-bit PNG is scaled by its range: it encodes like the 8-bit image it was made from (it saturated)."""
    root, run = trained
    v8 = (np.random.default_rng(5).random((8, 8)) * 255).astype(np.uint8)
    Image.fromarray(v8).save(tmp_path / "a8.png")
    Image.fromarray(v8.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    codes = []
    for name in ("a8.png", "a16.png"):
        out = tmp_path / (name + ".codes")
        r = CliRunner().invoke(cli, ["encode", str(run), "--images", str(tmp_path / name), "--out", str(out)])
        assert r.exit_code == 0, r.output
        codes.append(load_codes(out).codes)
    assert np.array_equal(codes[0], codes[1])


def test_search_limit_shows_that_many_queries_and_refuses_negative(trained, tmp_path):
    root, run = trained
    runner = CliRunner()
    db = tmp_path / "db.codes"
    assert runner.invoke(cli, ["encode", str(run), "--out", str(db)]).exit_code == 0
    assert runner.invoke(cli, ["index", str(db), "--out", str(tmp_path / "i.chidx")]).exit_code == 0
    base = ["search", str(tmp_path / "i.chidx"), "--codes", str(db), "--json"]
    assert len(json.loads(runner.invoke(cli, base + ["--limit", "3"]).output)) == 3
    for bad in ("-1", "0"):
        r = runner.invoke(cli, base + ["--limit", bad])
        assert r.exit_code == 2 and "--limit" in r.output and "Traceback" not in r.output
