"""Fault injection: random ``kill -9`` during training, every file type corrupted every way, a full disk.

* A short run killed at random points (a subprocess, SIGKILL, several times in a row) resumes to the
  codes, weights, optimiser and RNG states of the uninterrupted run (threads pinned to 1).
* Each file type the tool reads (checkpoint, code file, index, index labels, fakes file, config.yaml,
  manifest.json, metrics.jsonl) is truncated, has a byte flipped (one bit, or all eight, at every
  position of files up to 1 KB and at 500-odd positions of larger ones), is replaced by random bytes and
  emptied: every case (about 11,700; small files' sizes vary with paths and timings) must be refused
  with a one-line error naming the file.
* A write that fails with ENOSPC halfway leaves the last good checkpoint loadable and no temporary file,
  and the run resumes from it to the uninterrupted result.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from coophash import pipeline
from coophash.api import load_run
from coophash.codefile import CodeFile, load_codes, load_index_labels, save_codes, save_index_labels
from coophash.codes import binarize, pack_bits
from coophash.config import TrainConfig
from coophash.data import HashDataset, Manifest
from coophash.fakes import load_fakes, save_fakes
from coophash.index.fileio import read_index_file, write_index_file
from coophash.train import runs
from coophash.train.checkpoint import load_weights, read_checkpoint_state, save_checkpoint
from coophash.utils import io as uio

# The run every test here trains: a tiny synthetic dataset (no file to read), a tiny network, a checkpoint
# every step (so that kills land in checkpoint writes too), one thread.
DATA_CODE = """
import numpy as np, torch
from coophash.data import HashDataset
rng = np.random.default_rng(0)
classes = np.arange(400) % 4
pixels = (rng.integers(0, 64, size=(400, 1, 8, 8)) + classes[:, None, None, None] * 48).astype(np.uint8)
DATASET = HashDataset.from_tensors(torch.from_numpy(pixels), classes, n_classes=4, name="blobs")
"""
CONFIG = dict(dataset="blobs", protocol_args={"query_per_class": 10, "val_per_class": 10}, bits=16, epochs=2,
              batch_size=32, checkpoint_every=1, threads=1, seed=3, label_fraction=0.5,
              backbone_args={"widths": [8, 16], "num_features": 32})
CHILD = DATA_CODE + f"""
import sys
from coophash import pipeline
from coophash.config import TrainConfig
cfg = TrainConfig.from_dict({{**{CONFIG!r}, "out": sys.argv[1]}})
pipeline.train(cfg, sys.argv[2], dataset=DATASET, resume=True,
               progress=lambda p: print("step", p.done, flush=True))
print("done", flush=True)
"""


def _dataset() -> HashDataset:
    scope: dict = {}
    exec(DATA_CODE, scope)  # the same data as the children's
    return scope["DATASET"]


def _cfg(out: Path) -> TrainConfig:
    return TrainConfig.from_dict({**CONFIG, "out": str(out)})


def _codes(run_dir: Path, ds: HashDataset) -> np.ndarray:
    """Packed codes of every image of ``ds`` from a run's best checkpoint."""
    _cfg_, method = load_run(run_dir, which="best")
    with torch.no_grad():
        return pack_bits(binarize(method.encode(ds.images(np.arange(len(ds)))).float()).numpy())


def _same_checkpoints(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# ------------------------------------------------------------------------------------------ (a) kill -9
def _child(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _run_to_end(tmp_path: Path, run_dir: Path) -> None:
    proc = _child(tmp_path, run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.endswith("done\n"), err[-2000:]


def test_random_kills_resume_to_the_uninterrupted_codes(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    _run_to_end(tmp_path, tmp_path / "reference")
    total = int(read_checkpoint_state(tmp_path / "reference" / runs.LAST)["global_step"])
    run_dir, kills = tmp_path / "killed", 0
    for _ in range(4):
        target, delay = rng.randint(1, total), rng.uniform(0.0, 0.03)
        proc = _child(tmp_path, run_dir)
        for line in proc.stdout:  # kill -9 right after step `target` (while it saves), or a little later
            if line.startswith("done") or (line.startswith("step") and int(line.split()[1]) >= target):
                break
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    _run_to_end(tmp_path, run_dir)
    assert kills >= 3, f"seed {seed}: only {kills} kills hit a running process"
    ref = tmp_path / "reference"
    for name in (runs.LAST, runs.BEST):
        assert _same_checkpoints(ref / name, run_dir / name), f"seed {seed}: {name} differs after {kills} kills"
    ds = _dataset()
    assert np.array_equal(_codes(ref, ds), _codes(run_dir, ds)), f"seed {seed}: codes differ after {kills} kills"
    assert [r["epoch"] for r in runs.read_metrics(run_dir / runs.METRICS) if "epoch" in r] == [1, 2]
    assert not list(run_dir.glob(".*.tmp"))  # temporary files of killed writes were cleaned


# ------------------------------------------------------------------------------------------ (b) mutations
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict:
    """One file of every type the tool reads, written by the tool, and how the tool reads each."""
    root = tmp_path_factory.mktemp("artifacts")
    ds = _dataset()
    cfg = _cfg(root)
    run_dir = root / "run"
    res = pipeline.train(cfg.replace(epochs=1, checkpoint_every=0), run_dir, dataset=ds)
    trainer = res.trainer
    codes = pack_bits(binarize(trainer.method.encode(ds.images(np.arange(64))).float()).numpy())
    ids, labels = np.arange(64, dtype=np.int64), ds.labels[:64].numpy()
    save_codes(root / "db.codes", codes, 16, ids=ids, labels=labels)
    write_index_file(root / "db.index", 16, codes, ids)
    save_index_labels(root / "db.index", CodeFile(codes, 16, ids, labels))
    save_fakes(root / "fakes.safetensors", torch.rand(8, 1, 8, 8) * 2 - 1, torch.eye(8, 4))
    model = trainer.method.modules()
    return {
        run_dir / runs.LAST: read_checkpoint_state,
        run_dir / runs.BEST: lambda p: [load_weights(p, m, name, strict=True) for name, m in model.items()],
        run_dir / runs.CONFIG: lambda p: runs.read_run_config(p.parent),
        run_dir / runs.MANIFEST: Manifest.load,
        run_dir / runs.METRICS: runs.read_metrics,
        root / "db.codes": load_codes,
        root / "db.index": read_index_file,
        root / "db.index.labels.safetensors": lambda p: load_index_labels(root / "db.index", codes, ids),
        root / "fakes.safetensors": load_fakes,
    }


def _mutations(data: bytes, rng: np.random.Generator):
    """(kind, bytes): truncations, one-byte flips (every position of small files), random bytes, empty."""
    n = len(data)
    for cut in sorted({1, 7, 8, n // 3, n // 2, n - 2, n - 1}):
        yield f"truncated to {cut}", data[:cut]
    positions = range(n) if n <= 1024 else sorted(set(range(256)) | set(range(n - 64, n))
                                                    | set(rng.integers(0, n, 256).tolist()))
    for i in positions:
        for mask in (0x01, 0xFF):
            yield f"byte {i} ^ {mask:#x}", data[:i] + bytes([data[i] ^ mask]) + data[i + 1:]
    for k in range(3):
        yield f"random bytes {k}", rng.bytes(n)
    yield "empty", b""


def test_every_corruption_of_every_file_type_is_refused(artifacts):
    rng = np.random.default_rng(0)
    for path, read in artifacts.items():
        read(path)  # intact: reads
    tried, failures = 0, []
    for path, read in artifacts.items():
        good = path.read_bytes()
        for kind, data in _mutations(good, rng):
            path.write_bytes(data)
            tried += 1
            try:
                read(path)
            except (ValueError, FileNotFoundError) as exc:
                message = str(exc)
                if path.name not in message or "\n" in message:
                    failures.append(f"{path.name}, {kind}: unclear message {message[:200]!r}")
            else:
                failures.append(f"{path.name}, {kind}: accepted")
        path.write_bytes(good)
    assert not failures, f"{len(failures)} of {tried} corruptions not refused clearly: {failures[:20]}"
    assert tried > 10000  # docs/reliability.md quotes the figure


# ------------------------------------------------------------------------------------------ (c) full disk
class _DiskFull:
    """``os.fdopen`` whose ``n``-th file (counting from 1) gets half of its data written, then ENOSPC."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.real = n, 0, os.fdopen

    def __call__(self, fd, *args, **kwargs):
        handle = self.real(fd, *args, **kwargs)
        self.calls += 1
        if self.calls != self.n:
            return handle
        real_write = handle.write

        def write(data):
            real_write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        handle.write = write
        return handle


def test_full_disk_leaves_the_last_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, modules={"m": nn.Linear(3, 3)}, state={"epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(uio.os, "fdopen", _DiskFull(1))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, modules={"m": nn.Linear(3, 3)}, state={"epoch": 2})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)  # names the file, not the temp file
    assert path.read_bytes() == before and read_checkpoint_state(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temporary file left


def test_training_on_a_full_disk_stops_cleanly_and_resumes(tmp_path, monkeypatch):
    ds = _dataset()
    cfg = _cfg(tmp_path)
    pipeline.train(cfg, tmp_path / "reference", dataset=ds)
    run_dir = tmp_path / "full"
    disk = _DiskFull(9)  # config, manifest, metrics header, then checkpoints: fails in the 6th checkpoint
    monkeypatch.setattr(uio.os, "fdopen", disk)
    with pytest.raises(OSError) as info:
        pipeline.train(cfg, run_dir, dataset=ds)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and disk.calls == 9
    assert not list(run_dir.glob(".*.tmp"))
    assert read_checkpoint_state(run_dir / runs.LAST)["global_step"] >= 1  # the last good checkpoint loads
    pipeline.train(cfg, run_dir, dataset=ds, resume=True)
    assert _same_checkpoints(tmp_path / "reference" / runs.LAST, run_dir / runs.LAST)
    assert np.array_equal(_codes(tmp_path / "reference", ds), _codes(run_dir, ds))
