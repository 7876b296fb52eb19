"""The same command gives the same result: two processes of one `coophash train` on the CPU, bit for bit.

Before :mod:`coophash.train.determinism`, DPSH's pairwise term (``u[i] * u[j]`` over index tensors) had a
backward pass that adds with atomics from several OpenMP threads, so two runs of one command differed from
the second optimiser step on (mAP 0.9811 vs 0.9814 in issue 13).  The test runs with 2 threads on purpose;
without deterministic kernels its two runs differ (checked by hand: epoch-1 loss 2.006678009 vs 2.006677976).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from coophash.api import load_run
from coophash.bench import EXECUTION_FIELDS, config_key
from coophash.config import TrainConfig
from coophash.data import Manifest, load_dataset
from coophash.train import runs
from coophash.train.determinism import check_device, make_reproducible
from coophash.train.encoding import encode_indices

# 32 bits x 2,016 pairs of a 64-batch: enough elements for torch to split the index backward over threads
# (with 16 bits it runs on one thread and the test would pass without deterministic kernels)
COMMAND = ["train", "--dataset", "digits", "--loss", "dpsh", "--bits", "32", "--epochs", "2", "--batch-size", "64",
           "--label-fraction", "0.5", "--seed", "0", "--threads", "2", "--quiet",
           "--set", "protocol_args.query_per_class=10", "--set", "protocol_args.val_per_class=10",
           "--set", "checkpoint_every=7"]


def _start(out, threads_flag=True):
    at = COMMAND.index("--threads")
    argv = COMMAND if threads_flag else COMMAND[:at] + COMMAND[at + 2:]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "coophash", *argv, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def _codes(run):
    cfg, method = load_run(run)
    ds = load_dataset(cfg.dataset, image_size=cfg.image_size, channels=cfg.channels, **cfg.dataset_args)
    mf = Manifest.load(run / runs.MANIFEST)
    return encode_indices(method.encode, ds, mf.database, torch.device("cpu"))


def _losses(run):
    return [(r["epoch"], r["hash/total"], r["val_map"]) for r in runs.read_metrics(run / runs.METRICS) if "epoch" in r
            and not r.get("final")]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The run folders of one command run twice, in two processes at the same time (competing for the cores)."""
    tmp = tmp_path_factory.mktemp("rerun")
    procs = [_start(tmp / f"p{i}") for i in range(2)]
    outputs = [_finish(p) for p in procs]
    (a,), (b,) = runs.list_runs(tmp / "p0"), runs.list_runs(tmp / "p1")
    return a, b, outputs


def test_two_processes_of_one_command_give_identical_codes(two_processes):
    a, b, outputs = two_processes
    ca, cb = _codes(a), _codes(b)
    assert ca.dtype == np.uint8 and ca.shape == cb.shape and ca.shape[1] == 4
    assert np.array_equal(ca, cb)
    assert _losses(a) == _losses(b) and len(_losses(a)) == 2  # every logged loss, to the last bit
    assert outputs[0].splitlines()[-1] == outputs[1].splitlines()[-1]  # the printed metrics
    for run in (a, b):  # the thread count is recorded in the run's config
        assert runs.read_config(run)["threads"] == 2


def test_runs_in_one_process_equal_the_command(two_processes, tmp_path):
    """The first training of a process and the later ones give the command's codes (docs/bench.md said they
    differed: the thread count changed after the first evaluation, see the next tests)."""
    import coophash.pipeline as pipeline
    from coophash.index import _kernels

    a, _, _ = two_processes
    cfg = runs.read_run_config(a)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), _kernels.numba_threads())
    try:
        for i in range(2):
            pipeline.train(cfg.replace(out=str(tmp_path)), tmp_path / f"run{i}")
            assert np.array_equal(_codes(tmp_path / f"run{i}"), _codes(a))
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        _kernels.set_numba_threads(before[3])


def test_the_thread_count_is_recorded_when_not_given(tmp_path):
    _finish(_start(tmp_path, threads_flag=False))
    (run,) = runs.list_runs(tmp_path)
    recorded = runs.read_config(run)["threads"]
    # torch's own default in a fresh process with the same environment (this process's count may have been changed)
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True)
    assert isinstance(recorded, int) and recorded == int(default.stdout) >= 1


def test_make_reproducible_fixes_threads_and_switches_deterministic_kernels():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(False)
        cfg = make_reproducible(TrainConfig(threads=None))
        assert cfg.threads == torch.get_num_threads() == before[0]
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        cfg1 = make_reproducible(TrainConfig(threads=1))
        assert cfg1.threads == 1 and torch.get_num_threads() == 1
        same = TrainConfig(threads=1)
        assert make_reproducible(same) is same  # nothing to fill in: the config itself
        bad = TrainConfig()
        bad.threads = 0  # past TrainConfig's own check, as a hand-built config could be
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            make_reproducible(bad)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def test_index_backward_is_the_op_that_needed_it():
    """The op behind the spread: with 2 threads its gradient is identical over reruns in deterministic mode."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(True, warn_only=True)
        u = torch.randn(64, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
        i, j = torch.triu_indices(64, 64, 1)
        g = torch.randn(len(i), 32, generator=torch.Generator().manual_seed(1))

        def grad():
            u.grad = None
            (u[i] * u[j]).backward(g)
            return u.grad.clone()

        first = grad()
        assert all(torch.equal(first, grad()) for _ in range(20))
        # and it is the formula's gradient: sum over pairs containing the row
        ref = torch.zeros_like(u)
        for p in range(len(i)):
            ref[i[p]] += g[p] * u.detach()[j[p]]
            ref[j[p]] += g[p] * u.detach()[i[p]]
        assert torch.allclose(first, ref, atol=1e-4)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def test_check_device_names_what_is_missing():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda is not available on this machine"):
            check_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_threads_stay_out_of_the_suite_cache_key():
    """Recording the thread count does not change cache keys: cached results stay valid."""
    assert "threads" in EXECUTION_FIELDS
    cfg = TrainConfig()
    assert config_key(cfg) == config_key(cfg.replace(threads=2)) == config_key(cfg.replace(threads=1))
    saved = yaml.safe_load(yaml.safe_dump(cfg.replace(threads=2).to_dict()))
    assert json.dumps({k: v for k, v in saved.items() if k not in EXECUTION_FIELDS}, sort_keys=True) == \
        json.dumps({k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_FIELDS}, sort_keys=True)


def test_the_thread_count_holds_after_the_first_evaluation(tmp_path):
    """numba's OpenMP launches (the Hamming search of each validation) must not reset torch's thread count.

    They used to: with ``threads: 1`` the first epoch ran on one thread and the rest on all cores.
    """
    import coophash.pipeline as pipeline

    from coophash.index import _kernels

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), _kernels.numba_threads())
    seen = set()
    try:
        cfg = TrainConfig(dataset="digits", bits=32, epochs=2, batch_size=128, label_fraction=0.5, threads=1,
                          protocol_args={"query_per_class": 10, "val_per_class": 10})
        pipeline.train(cfg, tmp_path / "run", progress=lambda p: seen.add((p.epoch, torch.get_num_threads())))
        assert seen == {(0, 1), (1, 1)}
        assert runs.read_config(tmp_path / "run")["threads"] == 1
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        _kernels.set_numba_threads(before[3])
