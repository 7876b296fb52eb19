"""Checkpoints (safetensors, no pickle, exact resume) and run folders (numbering, config, metrics)."""
from __future__ import annotations

import json
import math
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from coophash.train import runs
from coophash.train.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_weights,
    read_checkpoint_state,
    save_checkpoint,
)


# --------------------------------------------------------------------------------------------------
# helpers


class Net(nn.Module):
    """Small model with BatchNorm (buffers) and dropout (consumes the torch RNG)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CounterLoss(nn.Module):
    """A 'loss' with buffers only: a step counter (like HashNet's beta schedule) and centres (like CSQ)."""

    def __init__(self, bits: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("centers", torch.randn(classes, bits).sign())

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        beta = 1.0 + 0.1 * self.steps.float()
        return (torch.tanh(beta * u) - self.centers[0]).pow(2).mean()


def make_objects(seed: int):
    """Model, loss, Adam on the body, SGD+momentum on the head, StepLR on Adam."""
    torch.manual_seed(seed)
    model, loss = Net(), CounterLoss()
    adam = torch.optim.Adam(model.body.parameters(), lr=1e-2)
    sgd = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(adam, step_size=2, gamma=0.5)
    return model, loss, adam, sgd, sched


def train_steps(model, loss, adam, sgd, sched, n: int) -> None:
    """n steps whose data comes from all three global RNGs (torch, NumPy, Python)."""
    model.train()
    for _ in range(n):
        x = torch.randn(5, 6) * float(np.random.uniform(0.5, 1.5)) + random.random()
        value = loss(model(x))
        adam.zero_grad()
        sgd.zero_grad()
        value.backward()
        adam.step()
        sgd.step()
        sched.step()


def save_all(path, model, loss, adam, sgd, sched, **kw) -> None:
    """Save the objects of make_objects under fixed names."""
    save_checkpoint(path, modules={"model": model, "loss": loss}, optimizers={"adam": adam, "sgd": sgd},
                    schedulers={"lr": sched}, **kw)


def load_all(path, model, loss, adam, sgd, sched, **kw) -> Checkpoint:
    """Load into the objects of make_objects."""
    return load_checkpoint(path, modules={"model": model, "loss": loss}, optimizers={"adam": adam, "sgd": sgd},
                           schedulers={"lr": sched}, **kw)


def assert_same_tree(a, b) -> None:
    """Exact equality of nested state dicts with tensors (values, dtypes, shapes)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (list(a), list(b))
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert type(a) is type(b) and a == b, (a, b)


def params(module: nn.Module) -> dict:
    """Detached copies of a module's state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(autouse=True)
def _restore_global_rngs():
    """Tests reseed the global generators; put them back afterwards."""
    t, n, p = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_rng_state(t)
    np.random.set_state(n)
    random.setstate(p)


# --------------------------------------------------------------------------------------------------
# checkpoints


def test_round_trip_restores_every_state(tmp_path):
    objs = make_objects(0)
    train_steps(*objs, n=3)
    path = tmp_path / "ckpt.safetensors"
    save_all(path, *objs, state={"epoch": 2, "step": 3, "best": 0.5, "cfg": {"bits": 4, "pair": (1, 2)}})

    fresh = make_objects(123)
    assert not torch.equal(fresh[0].head.weight, objs[0].head.weight)
    ckpt = load_all(path, *fresh)
    assert ckpt.state == {"epoch": 2, "step": 3, "best": 0.5, "cfg": {"bits": 4, "pair": (1, 2)}}
    assert isinstance(ckpt.state["cfg"]["pair"], tuple)
    for a, b in zip(objs[:2], fresh[:2]):  # parameters and buffers (BN stats, counter, centres)
        assert_same_tree(a.state_dict(), b.state_dict())
    assert int(fresh[1].steps) == 3 and int(fresh[0].body[1].num_batches_tracked) == 3
    for a, b in zip(objs[2:], fresh[2:]):  # Adam (incl. step tensors), SGD momentum, StepLR
        assert_same_tree(a.state_dict(), b.state_dict())
    assert fresh[2].param_groups[0]["lr"] == objs[2].param_groups[0]["lr"] == 5e-3


def test_resume_continues_bit_identically(tmp_path):
    objs = make_objects(0)
    train_steps(*objs, n=3)
    path = tmp_path / "ckpt.safetensors"
    save_all(path, *objs)
    train_steps(*objs, n=3)
    expected = params(objs[0])

    fresh = make_objects(7)
    load_all(path, *fresh)
    train_steps(*fresh, n=3)
    got = params(fresh[0])
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_resume_without_rng_restore_diverges(tmp_path):
    """Control for the test above: without the RNG states the continuation differs (dropout, data)."""
    objs = make_objects(0)
    train_steps(*objs, n=3)
    path = tmp_path / "ckpt.safetensors"
    save_all(path, *objs)
    train_steps(*objs, n=3)
    fresh = make_objects(7)
    load_all(path, *fresh, restore_rng=False)
    train_steps(*fresh, n=3)
    assert not torch.equal(objs[0].head.weight, fresh[0].head.weight)


def test_rng_round_trip(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    random.gauss(0, 1)  # and in Python's (gauss_next)
    path = tmp_path / "rng.safetensors"
    save_checkpoint(path, modules={})
    expected = (torch.rand(4), np.random.normal(size=3), np.random.rand(3), random.random(), random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    load_checkpoint(path)
    got = (torch.rand(4), np.random.normal(size=3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    np.testing.assert_array_equal(expected[2], got[2])
    assert expected[3:] == got[3:]


def test_rng_false_and_restore_rng(tmp_path):
    path = tmp_path / "norng.safetensors"
    save_checkpoint(path, modules={}, rng=False)
    with safe_open(str(path), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("rng/")]
    with pytest.raises(CheckpointError, match="rng=False"):
        load_checkpoint(path)
    load_checkpoint(path, restore_rng=False)
    load_checkpoint(path, strict=False)


def test_buffer_only_module_round_trip(tmp_path):
    torch.manual_seed(0)
    loss = CounterLoss(bits=8, classes=5)
    loss(torch.randn(2, 8))
    loss(torch.randn(2, 8))
    path = tmp_path / "loss.safetensors"
    save_checkpoint(path, modules={"loss": loss}, rng=False)
    torch.manual_seed(1)
    other = CounterLoss(bits=8, classes=5)
    assert int(other.steps) == 0
    load_checkpoint(path, modules={"loss": other}, restore_rng=False)
    assert int(other.steps) == 2 and other.steps.dtype == torch.long
    assert torch.equal(other.centers, loss.centers)


class WithExtraState(nn.Module):
    """A module whose state dict carries a non-tensor ``_extra_state`` (with a tensor inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.info = {"name": "x", "sizes": (1, 2), "table": torch.zeros(3)}

    def get_extra_state(self) -> dict:
        return self.info

    def set_extra_state(self, state: dict) -> None:
        self.info = state


def test_module_extra_state_round_trip(tmp_path):
    a = WithExtraState()
    a.info = {"name": "y", "sizes": (3, 4), "table": torch.arange(3.0)}
    path = tmp_path / "e.safetensors"
    save_checkpoint(path, modules={"m": a}, rng=False)
    b = WithExtraState()
    load_checkpoint(path, modules={"m": b}, restore_rng=False)
    assert_same_tree(a.state_dict(), b.state_dict())


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    objs = make_objects(0)
    train_steps(*objs, n=2)
    path = tmp_path / "ckpt.safetensors"
    save_all(path, *objs, state={"epoch": 1}, extra_tensors={"codes/db": torch.arange(6, dtype=torch.uint8)})
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # a safetensors header is JSON
    assert header["__metadata__"]["format"] == FORMAT
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]  # neither a pickle nor a torch zip
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("module/model/head.weight").shape == (4, 8)
        assert "module/model/body.1.running_var" in keys
        assert "module/loss/steps" in keys
        assert "optim/adam/state/0/exp_avg" in keys and "optim/adam/state/0/step" in keys
        assert "optim/sgd/state/0/momentum_buffer" in keys
        assert {"rng/torch", "rng/numpy/keys", "extra/codes/db"} <= keys
        meta = f.metadata()
    groups = json.loads(meta["optimizers"])["adam"]["param_groups"]
    assert groups[0]["lr"] == objs[2].param_groups[0]["lr"]
    assert read_checkpoint_state(path) == {"epoch": 1}
    ckpt = load_checkpoint(path, restore_rng=False)
    assert torch.equal(ckpt.extra_tensors["codes/db"], torch.arange(6, dtype=torch.uint8))


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    lin = nn.Linear(4, 4, bias=False)
    path = tmp_path / "x.safetensors"
    save_checkpoint(path, modules={"a": lin}, extra_tensors={"t": base.t(), "same": base, "view": base[1]},
                    rng=False)
    ex = load_checkpoint(path, restore_rng=False).extra_tensors
    assert torch.equal(ex["t"], base.t()) and torch.equal(ex["view"], base[1])


def test_scheduler_state_with_infinities_and_tuples(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    plateau.step(1.0)
    path = tmp_path / "p.safetensors"
    save_checkpoint(path, modules={}, optimizers={"o": opt}, schedulers={"p": plateau},
                    state={"best": float("-inf"), "nan": float("nan"), "__tuple__": 1, 3: "int key"})
    opt2 = torch.optim.Adam(model.parameters(), lr=0.3)
    plateau2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2)
    state = load_checkpoint(path, optimizers={"o": opt2}, schedulers={"p": plateau2}).state
    assert_same_tree(plateau.state_dict(), plateau2.state_dict())
    assert plateau2.mode_worse == math.inf and opt2.param_groups[0]["betas"] == (0.8, 0.9)
    assert state["best"] == -math.inf and math.isnan(state["nan"])
    assert state["__tuple__"] == 1 and state[3] == "int key"
    meta = safe_open(str(path), "pt").metadata()
    for key in ("modules", "optimizers", "schedulers", "rng", "state"):  # strict JSON: no NaN/Infinity
        json.loads(meta[key], parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_non_json_values_are_refused_and_old_file_kept(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, modules={"m": nn.Linear(2, 2)}, state={"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"ckpt\.safetensors.*state\.fn.*function"):
        save_checkpoint(path, modules={"m": nn.Linear(2, 2)}, state={"fn": lambda: 0})
    with pytest.raises(CheckpointError, match="extra_tensors"):
        save_checkpoint(path, modules={}, state={"best": torch.tensor(1.0)})

    class Weird:
        def state_dict(self):
            return {"obj": object()}

    with pytest.raises(CheckpointError, match=r"schedulers\['s'\]\.obj"):
        save_checkpoint(path, modules={}, schedulers={"s": Weird()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


def test_failed_write_leaves_existing_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, modules={"m": nn.Linear(3, 3)}, state={"epoch": 1})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, modules={"m": nn.Linear(3, 3)}, state={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_checkpoint_state(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temp file left


def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, modules={"model": nn.Linear(4, 4)}, state={"epoch": 1})
    data = good.read_bytes()
    cases = {
        "missing.safetensors": None,
        "truncated.safetensors": data[: len(data) // 2],
        "header_cut.safetensors": data[:20],
        "random.safetensors": np.random.default_rng(0).bytes(500),
        "empty.safetensors": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        for fn in (lambda p: load_checkpoint(p, modules={"model": nn.Linear(4, 4)}), read_checkpoint_state,
                   lambda p: load_weights(p, nn.Linear(4, 4))):
            with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
                fn(path)
    assert issubclass(CheckpointError, ValueError)


def test_foreign_safetensors_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"weights\.safetensors.*not a coophash checkpoint"):
        load_checkpoint(path)


def test_missing_module_and_mismatches(tmp_path):
    path = tmp_path / "m.safetensors"
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    save_checkpoint(path, modules={"model": model}, rng=False)
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*no module named 'generator'.*'model'"):
        load_checkpoint(path, modules={"generator": model}, restore_rng=False)
    wider = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    before = params(wider)
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*shape mismatch.*0\.weight.*\(3, 4\).*\(5, 4\)"):
        load_checkpoint(path, modules={"model": wider}, restore_rng=False)
    assert_same_tree(before, params(wider))  # nothing was modified
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"unexpected keys .*'1\.weight'"):
        load_checkpoint(path, modules={"model": other}, restore_rng=False)
    load_checkpoint(path, modules={"model": other, "generator": model}, restore_rng=False, strict=False)
    assert torch.equal(other[0].weight, model[0].weight)
    bigger = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"missing keys '2\.weight', '2\.bias'"):
        load_weights(path, bigger)
    with pytest.raises(CheckpointError, match="no optimizer named 'adam'"):
        load_checkpoint(path, optimizers={"adam": torch.optim.Adam(model.parameters())}, restore_rng=False)


def test_optimizer_with_reordered_params_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "o.safetensors"
    save_checkpoint(path, modules={}, optimizers={"adam": opt}, rng=False)
    reordered = torch.optim.Adam(list(model.parameters())[::-1])
    with pytest.raises(CheckpointError, match=r"o\.safetensors.*optimizer 'adam'.*shape mismatch"):
        load_checkpoint(path, optimizers={"adam": reordered}, restore_rng=False)
    two_groups = torch.optim.Adam([{"params": model[0].parameters()}, {"params": model[1].parameters()}])
    with pytest.raises(CheckpointError, match="param groups of sizes"):
        load_checkpoint(path, optimizers={"adam": two_groups}, restore_rng=False)


def test_load_weights_only(tmp_path):
    objs = make_objects(0)
    train_steps(*objs, n=2)
    path = tmp_path / "best.safetensors"
    save_all(path, *objs, state={"epoch": 2})
    model = make_objects(5)[0]
    rng_before = torch.get_rng_state()
    assert load_weights(path, model) is model
    assert torch.equal(torch.get_rng_state(), rng_before)  # RNG untouched
    assert_same_tree(objs[0].state_dict(), model.state_dict())
    load_weights(path, CounterLoss(), name="loss")


# --------------------------------------------------------------------------------------------------
# run folders


def test_run_dir_numbering(tmp_path):
    root = tmp_path / "runs"
    a = runs.create_run_dir(root, "cifar10 csq/64")
    b = runs.create_run_dir(root, "x")
    c = runs.create_run_dir(root)
    assert [p.name for p in (a, b, c)] == ["00000-cifar10_csq_64", "00001-x", "00002"]
    assert all(p.is_dir() and p.parent == root for p in (a, b, c))
    (root / "00010-old").mkdir()
    (root / "notes").mkdir()
    (root / "00042.txt").write_text("a file, not a run")
    assert runs.create_run_dir(root, "y").name == "00011-y"
    assert [p.name for p in runs.list_runs(root)][-2:] == ["00010-old", "00011-y"]


def test_run_dir_backs_off_when_number_is_taken(tmp_path, monkeypatch):
    """Simulate a rival process creating a folder with the same number between our scan and mkdir."""
    root = tmp_path / "runs"
    runs.create_run_dir(root, "a")
    real_mkdir = os.mkdir
    calls = []

    def racing_mkdir(path, *args, **kwargs):
        if os.fspath(path).endswith("00001-me"):  # our first attempt: the rival gets there first
            real_mkdir(root / "00001-rival")
        calls.append(os.path.basename(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(runs.os, "mkdir", racing_mkdir)
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    path = runs.create_run_dir(root, "me")
    assert path.name == "00002-me"
    assert [c for c in calls if c != "runs"] == ["00001-me", "00002-me"]
    assert not (root / "00001-me").exists()


def test_config_round_trip(tmp_path):
    cfg = {"method": "coophash", "bits": 64, "lr": 1e-3, "betas": (0.9, 0.99), "args": {"b": [1, 2], "a": None},
           "out": tmp_path / "x", "scale": np.float32(0.5)}
    path = runs.write_config(tmp_path, cfg)
    assert path == tmp_path / runs.CONFIG
    text = path.read_text()
    assert text.index("args:") < text.index("bits:") < text.index("method:")  # sorted keys
    back = runs.read_config(tmp_path)
    assert back == {"method": "coophash", "bits": 64, "lr": 1e-3, "betas": [0.9, 0.99],
                    "args": {"a": None, "b": [1, 2]}, "out": str(tmp_path / "x"), "scale": 0.5}
    assert runs.read_config(path) == back
    with pytest.raises(TypeError, match="config.yaml.*config.bad"):
        runs.write_config(tmp_path, {"bad": object()})
    assert runs.read_config(path) == back
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        runs.read_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match=r"list\.yaml.*mapping"):
        runs.read_config(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        runs.read_config(tmp_path / "nope.yaml")


def test_metrics_logger_seals_every_line_and_refuses_damage(tmp_path):
    path = tmp_path / runs.METRICS
    with runs.MetricsLogger(path) as logger:
        logger.log(epoch=1, step=10, loss=torch.tensor(0.5), acc=np.float64(0.25), n=np.int64(3),
                   bad=float("nan"), big=torch.tensor(float("inf")), vec=torch.tensor([1.0, 2.0]))
        logger.log(epoch=2, step=20, loss=0.4)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["format"] == "coophash-metrics"  # header, then records
    first = json.loads(lines[1])
    assert len(first.pop("sha256")) == 64
    assert first == {"epoch": 1, "step": 10, "loss": 0.5, "acc": 0.25, "n": 3, "bad": None, "big": None,
                     "vec": [1.0, 2.0]}
    assert isinstance(first["n"], int)
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]
    assert [r["step"] for r in runs.read_metrics(path)] == [10, 20]

    with runs.MetricsLogger(path) as logger:  # reopening an intact file appends
        logger.log(epoch=3, step=30, loss=0.3)
    assert [r["step"] for r in runs.read_metrics(path)] == [10, 20, 30]

    good = path.read_bytes()
    path.write_bytes(good + b'{"epoch": 4, "step": 40, "lo')  # killed mid-line: reported, not dropped
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 5: the last line is incomplete"):
        runs.read_metrics(path)
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 5"):
        runs.MetricsLogger(path)
    path.write_bytes(good.replace(b'"loss": 0.4', b'"loss": 0.5'))  # a changed value
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 3: checksum mismatch"):
        runs.read_metrics(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: empty metrics file"):
        runs.read_metrics(path)

    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')  # written before checksums: read as it is
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        runs.read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2}\n')
    assert runs.read_metrics(path) == [{"step": 1}, {"step": 2}]
    with runs.MetricsLogger(path) as logger:  # appending seals the old records first
        logger.log(step=3)
    assert runs.read_metrics(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert path.read_text().startswith('{"format": "coophash-metrics"')
    with pytest.raises(ValueError, match="sha256"):
        runs.MetricsLogger(tmp_path / "m2.jsonl").log(sha256="x")
    with pytest.raises(FileNotFoundError, match="missing"):
        runs.read_metrics(tmp_path / "missing.jsonl")


def test_truncate_metrics(tmp_path):
    path = tmp_path / runs.METRICS
    with runs.MetricsLogger(path) as logger:
        for step in (10, 20, 30, 40):
            logger.log(epoch=step // 10, step=step)
        logger.log(final=True)
    assert runs.truncate_metrics(path, after=20) == 3
    assert runs.read_metrics(path) == [{"epoch": 1, "step": 10}, {"epoch": 2, "step": 20}]
    assert path.read_text().endswith("}\n")
    before = path.read_bytes()
    assert runs.truncate_metrics(path, after=100) == 0
    assert path.read_bytes() == before  # nothing dropped: the file is left byte for byte
    assert runs.truncate_metrics(path, 1, key="epoch") == 1
    assert runs.read_metrics(path) == [{"epoch": 1, "step": 10}]
    assert runs.truncate_metrics(tmp_path / "none.jsonl", 3) == 0
    assert not (tmp_path / "none.jsonl").exists()
    with open(path, "a") as f:
        f.write('{"step": 5')
    with pytest.raises(ValueError, match=r"line 3: the last line is incomplete"):  # damage is never cut away
        runs.truncate_metrics(path, after=0)


def test_find_run(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    a = runs.create_run_dir(root, "mnist")
    b = runs.create_run_dir(root, "cifar")
    assert runs.find_run(root, "1") == b
    assert runs.find_run(root, 0) == a
    assert runs.find_run(root, "00001-cifar") == b
    assert runs.find_run(root, str(a)) == a
    monkeypatch.chdir(tmp_path)
    assert runs.find_run("elsewhere", "runs/00000-mnist").resolve() == a.resolve()
    with pytest.raises(FileNotFoundError, match=r"no run matches '7'.*00001-cifar"):
        runs.find_run(root, 7)
    with pytest.raises(FileNotFoundError, match="nothing"):
        runs.find_run(root, "nothing")
    (root / "00001-dup").mkdir()
    with pytest.raises(ValueError, match="ambiguous"):
        runs.find_run(root, 1)


def test_run_folder_file_names():
    assert (runs.CONFIG, runs.MANIFEST, runs.METRICS, runs.BEST, runs.LAST) == (
        "config.yaml", "manifest.json", "metrics.jsonl", "best.safetensors", "last.safetensors")


def test_run_tag_and_new_run_dir(tmp_path):
    from coophash.config import TrainConfig

    cfg = TrainConfig(method="supervised", loss="csq", dataset="digits", bits=16, label_fraction=0.25, seed=3,
                      out=str(tmp_path / "runs"))
    assert runs.run_tag(cfg) == "supervised-csq-digits-16b-lf0.25-s3"
    assert runs.run_tag(cfg.replace(method="gan")) == "gan-digits-s3"
    a = runs.new_run_dir(cfg)
    b = runs.new_run_dir(cfg, tag="demo")
    assert (a.name, b.name) == ("00000-supervised-csq-digits-16b-lf0.25-s3", "00001-demo")
    assert a.parent == tmp_path / "runs" and a.is_dir()


def test_resolve_run(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    a = runs.create_run_dir(root, "mnist")
    b = runs.create_run_dir(root, "cifar")
    (a / runs.LAST).write_bytes(b"x")
    # no best yet: best falls back to last; a checkpoint that does not exist is still named
    assert runs.resolve_run("0", root) == (a, a / runs.LAST)
    assert runs.resolve_run(0, root, which="last") == (a, a / runs.LAST)
    (a / runs.BEST).write_bytes(b"x")
    assert runs.resolve_run("00000-mnist", root) == (a, a / runs.BEST)
    assert runs.resolve_run(a, "elsewhere") == (a, a / runs.BEST)
    assert runs.resolve_run(str(a / runs.LAST), "elsewhere") == (a, a / runs.LAST)
    assert runs.resolve_run("1", root) == (b, b / runs.LAST)
    monkeypatch.chdir(tmp_path)
    assert runs.resolve_run("runs/00001-cifar")[0] == Path("runs/00001-cifar")
    with pytest.raises(FileNotFoundError, match="no run matches '7'"):
        runs.resolve_run(7, root)
    with pytest.raises(ValueError, match="best or last"):
        runs.resolve_run(0, root, which="first")
