"""A strict ``--resume``: the run folder's config, manifest and metrics are checked, options that would
change the run are refused, one writer per run folder, no leftovers (temporary files, empty run folders)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from coophash.cli import cli
from coophash.data import Manifest
from coophash.train import runs

SPLIT = ["--set", "protocol_args.query_per_class=10", "--set", "protocol_args.val_per_class=10"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run on digits (copied by each test before it changes anything)."""
    root = tmp_path_factory.mktemp("resume")
    r = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--bits", "8", "--epochs", "1", "--out", str(root),
                                 "--quiet", "--threads", "1", *SPLIT])
    assert r.exit_code == 0, r.output
    return runs.list_runs(root)[0]


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run, under ``tmp_path/runs``."""
    dst = tmp_path / "runs" / finished.name
    shutil.copytree(finished, dst)
    return dst


def _resume(run: Path, *args: str):
    return CliRunner().invoke(cli, ["train", "--resume", str(run), "--quiet", *args])


def _epochs(run: Path) -> list:
    return [r["epoch"] for r in runs.read_metrics(run / runs.METRICS) if "epoch" in r and not r.get("final")]


def test_resume_refuses_options_that_would_change_the_run(run):
    before = (run / runs.METRICS).read_bytes()
    r = _resume(run, "--bits", "64", "--loss", "csq", "--lr", "5", "--seed", "9", "--epochs", "2")
    assert r.exit_code == 2, r.output
    for part in ("bits (8 -> 64)", "loss ('dpsh' -> 'csq')", "lr (0.001 -> 5.0)", "seed (0 -> 9)",
                 "Only --epochs may change", str(run / runs.CONFIG)):
        assert part in r.output, part
    assert "Traceback" not in r.output
    r = _resume(run, "--set", "split_seed=3", "--epochs", "2")
    assert r.exit_code == 2 and "split_seed (None -> 3)" in r.output, r.output
    r = CliRunner().invoke(cli, ["train", "--resume", str(run), "--config", str(run / runs.CONFIG)])
    assert r.exit_code == 2 and "--config cannot be used with --resume" in r.output, r.output
    assert (run / runs.METRICS).read_bytes() == before  # nothing trained


def test_resume_accepts_the_run_s_own_values_and_longer_training(run):
    r = _resume(run, "--bits", "8", "--loss", "dpsh", "--dataset", "digits", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert _epochs(run) == [1, 2]


def _cut_before_seed(text: str) -> str:
    return text[: text.index("seed:")]


@pytest.mark.parametrize("damage, pattern", [
    (lambda t: _cut_before_seed(t), "checksum mismatch"),
    (lambda t: _cut_before_seed(t.split("\n", 1)[1]), r"incomplete run config.*seed"),
    (lambda t: "", "the config file is empty"),
    (lambda t: None, "not UTF-8 text"),
])
def test_resume_refuses_a_damaged_config(run, damage, pattern):
    path = run / runs.CONFIG
    text = damage(path.read_text())
    path.write_bytes(np.random.default_rng(0).bytes(600) if text is None else text.encode())
    r = _resume(run, "--epochs", "2")
    assert r.exit_code == 1, r.output
    assert "config.yaml: " in r.output and "Traceback" not in r.output
    assert re.search(pattern, r.output), r.output


@pytest.mark.parametrize("damage, pattern", [
    (lambda b: b[: len(b) // 2], "not valid JSON"),
    (lambda b: np.random.default_rng(1).bytes(len(b)), "not UTF-8|not valid JSON"),
    (lambda b: b"", "empty manifest"),
    (lambda b: b.replace(b'"seed":0', b'"seed":1'), "checksum mismatch"),
])
def test_resume_refuses_a_damaged_manifest(run, damage, pattern):
    path = run / runs.MANIFEST
    path.write_bytes(damage(path.read_bytes()))
    r = _resume(run, "--epochs", "2")
    assert r.exit_code == 1, r.output
    assert "manifest.json: " in r.output and "Traceback" not in r.output
    assert re.search(pattern, r.output), r.output
    assert _epochs_or_none(run) in (None, [1])  # nothing appended


def _epochs_or_none(run: Path):
    try:
        return _epochs(run)
    except ValueError:
        return None


def test_resume_refuses_a_manifest_of_another_split(run):
    saved = Manifest.load(run / runs.MANIFEST)
    d = saved.to_dict()
    d["seed"] = 1  # a sealed, valid manifest, but not the split this run's config makes
    Manifest.from_json(json.dumps(d)).save(run / runs.MANIFEST)
    r = _resume(run, "--epochs", "2")
    assert r.exit_code == 1 and "manifest.json: the run's split differs" in r.output, r.output


@pytest.mark.parametrize("damage, pattern", [
    (lambda b: b"", r"metrics\.jsonl: empty, but the checkpoint has finished 1 epoch"),
    (lambda b: b[:-10], r"metrics\.jsonl, line \d+: the last line is incomplete"),
    (lambda b: b.replace(b'"epoch": 1', b'"epoch": 7'), r"metrics\.jsonl, line 2: checksum mismatch"),
    (lambda b: b.split(b"\n", 1)[1], r"metrics\.jsonl, line 1: the header line is damaged"),
])
def test_resume_reports_damaged_metrics_instead_of_dropping_them(run, damage, pattern):
    path = run / runs.METRICS
    path.write_bytes(damage(path.read_bytes()))
    r = _resume(run, "--epochs", "2")
    assert r.exit_code == 1, r.output
    assert re.search(pattern, r.output) and "Traceback" not in r.output, r.output


def test_one_writer_per_run_folder(run):
    code = ("import sys, time\nfrom coophash.train import runs\nlock = runs.writer_lock(sys.argv[1])\n"
            "lock.__enter__()\nprint('locked', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        r = _resume(run, "--epochs", "2")
        assert time.perf_counter() - t0 < 30  # refused at once, not after waiting
        assert r.exit_code == 1, r.output
        assert f"another process (pid {holder.pid}) is writing this run folder" in r.output
        assert _epochs(run) == [1]
    finally:
        holder.kill()
        holder.wait()
    assert _resume(run, "--epochs", "2").exit_code == 0  # the lock died with its process
    assert _epochs(run) == [1, 2]


def test_resume_removes_temporary_files_of_killed_writes(run):
    orphans = [run / ".last.safetensors.ab12cd_9.tmp", run / ".metrics.jsonl.zz99zz99.tmp"]
    for p in orphans:
        p.write_bytes(b"half a file")
    keep = run / ".notes.tmp"  # not a name an atomic write makes
    keep.write_text("mine")
    r = _resume(run, "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in orphans) and keep.exists()


@pytest.mark.parametrize("args", [["--dataset", "nope"], ["--loss", "nope"], ["--backbone", "nope"]])
def test_a_failed_start_leaves_no_run_folder(tmp_path, args):
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), "--quiet", "--epochs", "1", *args])
    assert r.exit_code != 0
    assert runs.list_runs(tmp_path) == []


def test_gan_resume_refuses_options_that_would_change_the_run(tmp_path):
    runner = CliRunner()
    base = ["gan", "--dataset", "digits", "--epochs", "1", "--width", "8", "--latent-dim", "8", "--n-fakes", "16",
            "--out", str(tmp_path), "--quiet", "--threads", "1", *SPLIT]
    r = runner.invoke(cli, base)
    assert r.exit_code == 0, r.output
    run = runs.list_runs(tmp_path)[0]
    r = runner.invoke(cli, ["gan", "--resume", str(run), "--latent-dim", "16", "--epochs", "3", "--quiet"])
    assert r.exit_code == 2, r.output
    assert "method_args" in r.output and "epochs (1 -> 3)" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["gan", "--resume", str(run), "--latent-dim", "8", "--epochs", "1", "--quiet"])
    assert r.exit_code == 0 and "wrote 16 fakes" in r.output, r.output  # the run's own values: accepted


def test_the_trainer_checks_the_folder_too(run):
    """Library callers get the same checks as the CLI: the config differs (beyond epochs, devices, threads and
    evaluation/checkpoint intervals) or the manifest was damaged: refused before anything is loaded."""
    from coophash.train.trainer import Trainer

    cfg = runs.read_run_config(run)
    with pytest.raises(ValueError, match=r"config\.yaml: cannot resume this run with another config \(lr: 0\.001"):
        Trainer(cfg.replace(epochs=2, lr=0.01), run).fit(resume=True)
    (run / runs.MANIFEST).write_bytes((run / runs.MANIFEST).read_bytes()[:100])
    with pytest.raises(ValueError, match=r"manifest\.json: not valid JSON"):
        Trainer(cfg.replace(epochs=2, eval_batch_size=64), run).fit(resume=True)
    assert _epochs(run) == [1]
