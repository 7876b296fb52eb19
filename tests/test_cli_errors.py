"""One error boundary for the CLI: a table of bad inputs driving every verb (issue 13).

Each case checks the exit status (2: usage error, 1: runtime error), that the message names the culprit
(the option, value, file or device), that it is one ``Error:`` line, and that no traceback is printed.
Most cases run in-process through click's CliRunner; :data:`SUBPROCESS` cases run the real
``python -m coophash`` and read its stderr.  A read-only folder and a full disk are simulated
(:func:`fs_fault`): tests often run as root, for whom a read-only permission bit does not stop writes.
"""
import builtins
import contextlib
import errno
import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from coophash.cli import cli
from coophash.codefile import save_codes
from coophash.train import runs

TINY = ["--dataset", "digits", "--bits", "8", "--epochs", "1", "--batch-size", "32", "--quiet",
        "--set", "protocol_args.query_per_class=10", "--set", "protocol_args.val_per_class=10"]


# ------------------------------------------------------------------------------------------ workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A trained tiny run, its database/query code files, an index with labels, and bad files to feed."""
    base = tmp_path_factory.mktemp("ws")
    root = base / "runs"
    runner = CliRunner()
    r = runner.invoke(cli, ["train", *TINY, "--out", str(root)])
    assert r.exit_code == 0, r.output
    (run,) = runs.list_runs(root)
    for split, name in (("database", "db.codes"), ("query", "q.codes")):
        r = runner.invoke(cli, ["encode", str(run), "--split", split, "--out", str(base / name)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["index", str(base / "db.codes"), "--out", str(base / "db.chidx")])
    assert r.exit_code == 0, r.output
    assert (base / "db.chidx.labels.safetensors").exists()
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(base / "q.png")
    (base / "garbage.png").write_bytes(os.urandom(200))
    (base / "bad.codes").write_bytes(b"not a code file at all")
    save_codes(base / "q32.codes", np.zeros((2, 4), np.uint8), 32)
    (base / "empty.yaml").write_text("")
    (base / "random.yaml").write_bytes(bytes(np.random.default_rng(1).integers(128, 256, 300, dtype=np.uint8)))
    (base / "badtype.yaml").write_text("bits: abc\n")
    _idx_folder(base / "idx")
    _evil_pickle(base / "evil.pt")
    (base / "suite.yaml").write_text("name: broken\nexperiments: 12\n")
    return {"base": base, "root": root, "run": run}


def _idx_folder(folder: Path) -> None:
    """MNIST-format idx files (train split) whose images .gz has one flipped byte."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    n = 200
    images = struct.pack(">IIII", 0x0803, n, 8, 8) + rng.integers(0, 256, n * 64, dtype=np.uint8).tobytes()
    labels = struct.pack(">II", 0x0801, n) + (np.arange(n) % 10).astype(np.uint8).tobytes()
    packed = bytearray(gzip.compress(images))
    packed[len(packed) // 2] ^= 0xFF
    (folder / "train-images-idx3-ubyte.gz").write_bytes(bytes(packed))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def _evil_pickle(path: Path) -> None:
    """A torch.save file whose unpickling would run a shell command (must never run)."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo PWNED",))

    torch.save({"w": Evil()}, path)


def _flip(path: Path, at: Optional[int] = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def _copy_run(ws: dict, tmp: Path) -> dict:
    """A copy of the trained run under ``tmp/runs`` (to damage): placeholders ``troot`` and ``trun``."""
    troot = tmp / "runs"
    trun = troot / ws["run"].name
    shutil.copytree(ws["run"], trun)
    return {"troot": troot, "trun": trun}


# ------------------------------------------------------------------------------------------ faults
@contextlib.contextmanager
def fs_fault(folder: Path, err: int, mkdir_ok: bool = False):
    """Inside ``folder``, creating folders and opening files for writing fail with ``err``.

    EACCES stands for a read-only folder, ENOSPC for a full disk (``mkdir_ok``: folders can still be made).
    """
    folder = Path(folder).resolve()
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def inside(p) -> bool:
        if not isinstance(p, (str, bytes, os.PathLike)):
            return False
        return Path(os.fsdecode(p)).resolve().is_relative_to(folder)

    def deny(p):
        raise OSError(err, os.strerror(err), os.fsdecode(p))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if not mkdir_ok and inside(path):
            deny(path)
        return real_mkdir(path, *args, **kwargs)

    saved = (builtins.open, io.open, os.open, os.mkdir)
    builtins.open, io.open, os.open, os.mkdir = fake_open, fake_open, fake_os_open, fake_mkdir
    try:
        yield
    finally:
        builtins.open, io.open, os.open, os.mkdir = saved


# ------------------------------------------------------------------------------------------ the table
@dataclass
class Case:
    id: str
    argv: str  # split on spaces after formatting with the placeholders
    code: int  # 2: usage error, 1: runtime error
    says: tuple[str, ...]  # substrings of the message (formatted too), e.g. the option, the file
    prepare: Optional[Callable[[dict, Path], dict]] = None  # damage a copy; returns more placeholders
    fault: Optional[tuple[str, int]] = None  # (folder placeholder, errno) of a simulated file-system fault
    extra: dict = field(default_factory=dict)


def _mkdir(name):
    def prep(ws, tmp):
        (tmp / name).mkdir()
        return {}
    return prep


def _damaged_run(name, how):
    """A copy of the run with file ``name`` damaged: cut before ``seed:``, emptied, random bytes, halved, flipped."""
    def prep(ws, tmp):
        ph = _copy_run(ws, tmp)
        p = ph["trun"] / name
        data = p.read_bytes()
        if how == "cut-before-seed":
            p.write_bytes(data[:data.index(b"\nseed:") + 1])
        elif how == "empty":
            p.write_bytes(b"")
        elif how == "random":
            p.write_bytes(bytes(np.random.default_rng(2).integers(0, 256, len(data), dtype=np.uint8)))
        elif how == "half":
            p.write_bytes(data[:len(data) // 2])
        elif how == "flip":
            _flip(p)
        return ph
    return prep


def _damaged_copy(name, how="flip"):
    """A copy of a workspace file under tmp, damaged; placeholder ``bad``."""
    def prep(ws, tmp):
        p = tmp / name
        shutil.copy(ws["base"] / name, p)
        if how == "flip":
            _flip(p)
        elif how == "truncate":
            p.write_bytes(p.read_bytes()[:-7])
        return {"bad": p}
    return prep


def _index_copy(labels_how):
    """The index and its labels file copied to tmp; the labels damaged (flip) or from other codes (stale)."""
    def prep(ws, tmp):
        idx = tmp / "db.chidx"
        shutil.copy(ws["base"] / "db.chidx", idx)
        lab = tmp / "db.chidx.labels.safetensors"
        if labels_how == "flip":
            shutil.copy(ws["base"] / "db.chidx.labels.safetensors", lab)
            _flip(lab)
        else:  # stale: the labels file of another index (the query codes)
            r = CliRunner().invoke(cli, ["index", str(ws["base"] / "q.codes"), "--out", str(tmp / "other.chidx")])
            assert r.exit_code == 0, r.output
            shutil.copy(tmp / "other.chidx.labels.safetensors", lab)
        return {"tidx": idx}
    return prep


def _fakes(ws, tmp):
    from coophash.fakes import save_fakes

    p = tmp / "fakes.safetensors"
    save_fakes(p, torch.zeros(16, 1, 8, 8), torch.zeros(16, 10))
    _flip(p)
    return {"fakes": p}


NO_CUDA = not torch.cuda.is_available()
T = "train " + " ".join(TINY)

CASES = [
    # -- train: names, values, devices (usage errors, 2) -----------------------------------------------
    Case("train-unknown-loss", T + " --loss nope --out {tmp}", 2, ("--loss", "unknown loss 'nope'")),
    Case("train-unknown-backbone", T + " --backbone nope --out {tmp}", 2, ("--backbone", "unknown backbone 'nope'")),
    Case("train-unknown-method", T + " --method nope --out {tmp}", 2, ("--method", "unknown method 'nope'")),
    Case("train-unknown-dataset", "train --dataset nope --out {tmp}", 2, ("--dataset", "unknown dataset 'nope'")),
    Case("train-unknown-protocol", T + " --protocol nope --out {tmp}", 2, ("--protocol", "unknown protocol 'nope'")),
    Case("train-config-bad-type", "train --config {base}/badtype.yaml --out {tmp}", 1, ("badtype.yaml", "bits")),
    Case("train-device-tpu", T + " --device tpu --out {tmp}", 2, ("--device", "'tpu'")),
    Case("train-device-cuda-missing", T + " --device cuda --out {tmp}", 1, ("cuda is not available on this machine",)),
    Case("train-device-cuda-99", T + " --device cuda:99 --out {tmp}", 1, ("cuda",)),
    Case("train-set-bits-abc", T + " --set bits=abc --out {tmp}", 2, ("--set", "bits", "'abc'")),
    Case("train-set-no-equals", T + " --set bogus --out {tmp}", 2, ("--set", "KEY=VALUE", "'bogus'")),
    Case("train-set-unknown-field", T + " --set nosuch=1 --out {tmp}", 2, ("--set", "nosuch")),
    Case("train-set-bad-yaml", T + " --set bits=[1 --out {tmp}", 2, ("--set", "bits")),
    Case("train-threads-negative", T + " --threads -2 --out {tmp}", 2, ("threads", "-2")),
    Case("train-bits-zero", T + " --bits 0 --out {tmp}", 2, ("bits", "0")),
    Case("train-label-fraction", T + " --label-fraction 2 --out {tmp}", 2, ("label_fraction", "2")),
    Case("train-epochs-negative", T + " --epochs -1 --out {tmp}", 2, ("epochs", "-1")),
    Case("train-bits-not-int", T + " --bits many --out {tmp}", 2, ("--bits", "'many'")),
    # -- train: bad files and the environment (runtime errors, 1) ---------------------------------------
    Case("train-config-missing", "train --config {tmp}/missing.yaml --out {tmp}", 1, ("missing.yaml",)),
    Case("train-config-empty", "train --config {base}/empty.yaml --out {tmp}", 1, ("empty.yaml", "empty")),
    Case("train-config-random-bytes", "train --config {base}/random.yaml --out {tmp}", 1, ("random.yaml",)),
    Case("train-idx-gz-flipped-byte", "train --dataset mnist-idx --set dataset_args.root={base}/idx "
         "--set dataset_args.split=train --bits 8 --epochs 1 --quiet --out {tmp}", 1,
         ("train-images-idx3-ubyte.gz", "damaged")),
    Case("train-pretrained-pickle", T + " --backbone resnet18 --set pretrained={base}/evil.pt --out {tmp}", 1,
         ("evil.pt", "posix.system")),
    Case("train-fakes-flipped", T + " --method fakereg --fakes {fakes} --out {tmp}/o", 1, ("fakes.safetensors",),
         prepare=_fakes),
    Case("train-read-only-folder", T + " --out {tmp}/ro", 1, ("ro", "permission denied"), prepare=_mkdir("ro"),
         fault=("{tmp}/ro", errno.EACCES)),
    Case("train-full-disk", T + " --out {tmp}/full", 1, ("full", "no space left"), prepare=_mkdir("full"),
         fault=("{tmp}/full", errno.ENOSPC)),
    # -- train --resume ----------------------------------------------------------------------------------
    Case("resume-missing-run", "train --resume 7 --out {root}", 1, ("7",)),
    Case("resume-read-only", "train --resume 0 --out {troot} --quiet", 1, ("permission denied",),
         prepare=lambda ws, tmp: _copy_run(ws, tmp), fault=("{trun}", errno.EACCES)),
    Case("resume-config-cut-before-seed", "train --resume 0 --out {troot} --quiet", 1, ("config.yaml",),
         prepare=_damaged_run("config.yaml", "cut-before-seed")),
    Case("resume-config-empty", "train --resume 0 --out {troot} --quiet", 1, ("config.yaml",),
         prepare=_damaged_run("config.yaml", "empty")),
    Case("resume-config-random", "train --resume 0 --out {troot} --quiet", 1, ("config.yaml",),
         prepare=_damaged_run("config.yaml", "random")),
    Case("resume-manifest-half", "train --resume 0 --out {troot} --quiet", 1, ("manifest.json",),
         prepare=_damaged_run("manifest.json", "half")),
    Case("resume-manifest-random", "train --resume 0 --out {troot} --quiet", 1, ("manifest.json",),
         prepare=_damaged_run("manifest.json", "random")),
    Case("resume-metrics-empty", "train --resume 0 --epochs 2 --out {troot} --quiet", 1, ("metrics.jsonl",),
         prepare=_damaged_run("metrics.jsonl", "empty")),
    Case("resume-other-flags", "train --resume 0 --bits 64 --loss csq --lr 5 --seed 9 --out {troot} --quiet", 2,
         ("bits", "loss", "lr", "seed"), prepare=lambda ws, tmp: _copy_run(ws, tmp)),
    # -- eval ----------------------------------------------------------------------------------------------
    Case("eval-R-foo", "eval {run} --R foo", 2, ("--R", "'foo'")),
    Case("eval-R-zero", "eval {run} --R 0", 2, ("--R", "'0'")),
    Case("eval-topk-zero", "eval {run} --topk 0", 2, ("--topk", "'0'")),
    Case("eval-topk-letters", "eval {run} --topk a,b", 2, ("--topk", "'a,b'")),
    Case("eval-radius-negative", "eval {run} --radius -1", 2, ("--radius", "-1")),
    Case("eval-split-unknown", "eval {run} --split nope", 2, ("--split", "'nope'")),
    Case("eval-device-tpu", "eval {run} --device tpu", 2, ("--device", "'tpu'")),
    Case("eval-missing-run", "eval 42 --root {root}", 1, ("42",)),
    Case("eval-flipped-checkpoint", "eval {trun} --out {tmp}/ev", 1, ("best.safetensors",),
         prepare=_damaged_run("best.safetensors", "flip")),
    Case("eval-read-only", "eval {trun}", 1, ("eval", "permission denied"), prepare=lambda ws, tmp: _copy_run(ws, tmp),
         fault=("{trun}", errno.EACCES)),
    # -- encode --------------------------------------------------------------------------------------------
    Case("encode-split-unknown", "encode {run} --split nope --out {tmp}/x.codes", 2, ("--split", "'nope'")),
    Case("encode-images-missing", "encode {run} --images {tmp}/none.png --out {tmp}/x.codes", 2,
         ("--images", "none.png")),
    Case("encode-images-garbage", "encode {run} --images {base}/garbage.png --out {tmp}/x.codes", 1,
         ("garbage.png",)),
    Case("encode-dataset-unknown", "encode {run} --dataset nope --out {tmp}/x.codes", 2,
         ("--dataset", "unknown dataset 'nope'")),
    Case("encode-no-out", "encode {run}", 2, ("--out",)),
    Case("encode-read-only", "encode {run} --out {tmp}/ro/x.codes", 1, ("x.codes", "permission denied"),
         prepare=_mkdir("ro"), fault=("{tmp}/ro", errno.EACCES)),
    Case("encode-full-disk", "encode {run} --out {tmp}/full/x.codes", 1, ("x.codes", "no space left"),
         prepare=_mkdir("full"), fault=("{tmp}/full", errno.ENOSPC)),
    # -- index ---------------------------------------------------------------------------------------------
    Case("index-missing-codes", "index {tmp}/none.codes --out {tmp}/x.chidx", 1, ("none.codes",)),
    Case("index-garbage-codes", "index {base}/bad.codes --out {tmp}/x.chidx", 1, ("bad.codes",)),
    Case("index-flipped-codes", "index {bad} --out {tmp}/x.chidx", 1, ("db.codes",), prepare=_damaged_copy("db.codes")),
    Case("index-backend-unknown", "index {base}/db.codes --out {tmp}/x.chidx --backend nope", 2, ("--backend",)),
    Case("index-no-out", "index {base}/db.codes", 2, ("--out",)),
    Case("index-read-only", "index {base}/db.codes --out {tmp}/ro/x.chidx", 1, ("x.chidx", "permission denied"),
         prepare=_mkdir("ro"), fault=("{tmp}/ro", errno.EACCES)),
    # -- search --------------------------------------------------------------------------------------------
    Case("search-k-zero", "search {base}/db.chidx --codes {base}/q.codes -k 0", 2, ("-k", "0")),
    Case("search-k-negative", "search {base}/db.chidx --codes {base}/q.codes -k -5", 2, ("-k", "-5")),
    Case("search-radius-negative", "search {base}/db.chidx --codes {base}/q.codes --radius -1", 2, ("--radius", "-1")),
    Case("search-limit-negative", "search {base}/db.chidx --codes {base}/q.codes --limit -1", 2, ("--limit", "-1")),
    Case("search-no-query", "search {base}/db.chidx", 2, ("--codes", "--images")),
    Case("search-images-without-run", "search {base}/db.chidx --images {base}/q.png", 2, ("--run",)),
    Case("search-missing-index", "search {tmp}/none.chidx --codes {base}/q.codes", 1, ("none.chidx",)),
    Case("search-truncated-index", "search {bad} --codes {base}/q.codes", 1, ("db.chidx",),
         prepare=_damaged_copy("db.chidx", "truncate")),
    Case("search-bits-mismatch", "search {base}/db.chidx --codes {base}/q32.codes", 1, ("q32.codes", "8")),
    Case("search-flipped-query-codes", "search {base}/db.chidx --codes {bad}", 1, ("q.codes",),
         prepare=_damaged_copy("q.codes")),
    Case("search-corrupt-label-file", "search {tidx} --codes {base}/q.codes", 1, ("db.chidx.labels.safetensors",),
         prepare=_index_copy("flip")),
    Case("search-stale-label-file", "search {tidx} --codes {base}/q.codes", 1,
         ("db.chidx.labels.safetensors", "stale"), prepare=_index_copy("stale")),
    Case("search-device-tpu", "search {base}/db.chidx --images {base}/q.png --run {run} --device tpu", 2,
         ("--device", "'tpu'")),
    # -- list, demo, bench, sample, gan, serve, the group ---------------------------------------------------
    Case("list-extra-argument", "list nope", 2, ("nope",)),
    Case("demo-epochs-negative", "demo --epochs -1 --quick --out {tmp}", 2, ("--epochs", "-1")),
    Case("bench-unknown-suite", "bench nope --out {tmp}", 2, ("nope",)),
    Case("bench-broken-suite-file", "bench {base}/suite.yaml --out {tmp} --dry-run", 1, ("suite.yaml",)),
    Case("bench-shard-out-of-range", "bench smoke --shard 3/2 --out {tmp} --dry-run", 2, ("--shard", "3/2")),
    Case("bench-seeds-letters", "bench smoke --seeds a,b --out {tmp} --dry-run", 2, ("--seeds", "'a,b'")),
    Case("bench-threads-zero", "bench smoke --threads 0 --out {tmp} --dry-run", 2, ("--threads", "0")),
    Case("bench-device-tpu", "bench smoke --device tpu --out {tmp} --dry-run", 2, ("--device", "'tpu'")),
    Case("sample-not-coophash", "sample {run} --out {tmp}/s.png", 1, ("coophash", "supervised")),
    Case("sample-per-class-zero", "sample {run} --per-class 0", 2, ("--per-class", "0")),
    Case("gan-device-tpu", "gan --dataset digits --epochs 1 --device tpu --out {tmp}", 2, ("--device", "'tpu'")),
    Case("gan-set-bits-abc", "gan --dataset digits --set bits=abc --out {tmp}", 2, ("--set", "bits", "'abc'")),
    Case("gan-resume-not-a-gan", "gan --resume 0 --out {root}", 1, ("not a GAN run",)),
    Case("gan-read-only-folder", "gan --dataset digits --epochs 1 --quiet --out {tmp}/ro", 1,
         ("ro", "permission denied"), prepare=_mkdir("ro"), fault=("{tmp}/ro", errno.EACCES)),
    Case("serve-missing-run", "serve 42 --root {root}", 1, ("42",)),
    Case("unknown-command", "nope", 2, ("nope",)),
]
if not NO_CUDA:  # pragma: no cover - a machine with CUDA
    CASES = [c for c in CASES if c.id != "train-device-cuda-missing"]

# run through the real entry point (python -m coophash) as well as in-process
SUBPROCESS = {"train-unknown-loss", "train-device-tpu", "train-config-random-bytes", "train-idx-gz-flipped-byte",
              "eval-flipped-checkpoint", "search-limit-negative", "train-device-cuda-missing"}


def _resolve(case: Case, ws: dict, tmp: Path) -> tuple[list[str], dict]:
    ph = {"base": ws["base"], "root": ws["root"], "run": ws["run"], "tmp": tmp}
    if case.prepare is not None:
        ph.update(case.prepare(ws, tmp))
    return [a.format(**ph) for a in case.argv.split()], ph


def _check(case: Case, code: int, output: str, ph: dict) -> None:
    assert code == case.code, f"{case.id}: exit status {code}, expected {case.code}\n{output}"
    assert "Traceback" not in output, output
    if case.code:
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, output  # one line says what was wrong
        for s in case.says:
            assert s.format(**ph) in errors[0], f"{case.id}: {s!r} not in {errors[0]!r}"
    assert "PWNED" not in output


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gives_one_line(case, ws, tmp_path):
    argv, ph = _resolve(case, ws, tmp_path)
    fault = contextlib.nullcontext()
    if case.fault is not None:
        folder, err = case.fault
        fault = fs_fault(Path(folder.format(**ph)), err, mkdir_ok=err == errno.ENOSPC)
    with fault:
        r = CliRunner().invoke(cli, argv)
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), \
        f"{case.id}: uncaught {r.exception!r}"
    _check(case, r.exit_code, r.output, ph)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS], ids=lambda c: c.id)
def test_bad_input_through_the_real_entry_point(case, ws, tmp_path):
    argv, ph = _resolve(case, ws, tmp_path)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-m", "coophash", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert p.stdout == "" or "run folder" in p.stdout  # errors go to stderr
    _check(case, p.returncode, p.stderr, ph)


def test_the_table_is_big_and_covers_every_verb():
    assert len(CASES) >= 40
    verbs = {c.argv.split()[0] for c in CASES}
    from coophash.cli import COMMANDS

    assert set(COMMANDS) <= verbs
    assert {c.code for c in CASES} == {1, 2}


def test_debug_shows_the_traceback(ws, tmp_path):
    """``coophash --debug``: the traceback of the underlying error, then the same one-line error and status."""
    bad = str(ws["base"] / "bad.codes")
    r = CliRunner().invoke(cli, ["index", bad, "--out", str(tmp_path / "x.chidx")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-m", "coophash", "--debug", "index", bad, "--out", str(tmp_path / "x.chidx")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1 and "Traceback" in p.stderr and "CodeFileError" in p.stderr
    assert p.stderr.rstrip().splitlines()[-1] == r.output.strip()
    # an error no rule expects propagates as it is under --debug
    r = CliRunner().invoke(cli, ["--debug", "search", str(_stale_index(ws, tmp_path)), "--codes",
                                 str(ws["base"] / "q.codes")])
    assert r.exit_code == 1 and type(r.exception).__name__ == "CodeFileError"
    r = CliRunner(env={"COOPHASH_DEBUG": "1"}).invoke(cli, ["search", str(_stale_index(ws, tmp_path)), "--codes",
                                                            str(ws["base"] / "q.codes")])
    assert type(r.exception).__name__ == "CodeFileError"


def _stale_index(ws, tmp):
    return _index_copy("stale")(ws, tmp)["tidx"]


def test_an_unexpected_exception_is_one_line_too(monkeypatch):
    """A bug (an exception no rule expects) still ends in one line, pointing at --debug."""
    import coophash.data as data

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(data, "list_datasets", boom)
    r = CliRunner().invoke(cli, ["list"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "internal error: ZeroDivisionError: division by zero" in r.output and "--debug" in r.output
