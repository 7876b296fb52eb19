"""The suite's evaluations of trained models, and the suite as a layer that uses only public interfaces.

Extra evaluations receive one :class:`coophash.bench.EvalContext` per trained run (no attribute is written
into the trainer); the suite trains through :func:`coophash.pipeline.train` and files a result under the
key of the config it asked for, even when the pipeline trains a stage with a derived config first.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import coophash.bench as bench_mod
from coophash.bench import EvalContext, config_key, run_grid
from coophash.config import TrainConfig
from coophash.suite import EVALS
from coophash.suite.evals import eval_cross_dataset, eval_samples_cross
from coophash.train.encoding import encode_indices
from coophash.train.trainer import Trainer
from coophash.utils.registry import Registry, UnknownName

SRC = Path(__file__).resolve().parents[1] / "src" / "coophash"
TINY = {"dataset": "digits", "protocol": "standard", "epochs": 1, "batch_size": 64, "bits": 16, "eval_batch_size": 64,
        "protocol_args": {"query_per_class": 5, "val_per_class": 5, "train_per_class": 20}}
CROSS = {"dataset": "mnist5k", "dataset_args": {}, "protocol": "standard",
         "protocol_args": {"query_per_class": 3, "val_per_class": 0, "train_per_class": 10}}


def test_evals_are_a_registry_of_the_extra_evaluations():
    assert isinstance(EVALS, Registry)
    assert EVALS.names() == sorted(["cross_dataset", "ood_cross", "ood_unseen", "encode_speed", "samples",
                                    "samples_unseen", "samples_cross"])
    assert EVALS["cross_dataset"] is eval_cross_dataset
    with pytest.raises(UnknownName, match="unknown extra evaluation 'nope'"):
        EVALS.get("nope")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    torch.manual_seed(0)
    return Trainer(TrainConfig.from_dict(TINY), tmp_path_factory.mktemp("run"))


def test_context_encodes_each_item_set_once_and_matches_encode_indices(trainer, monkeypatch):
    calls = []
    real = bench_mod.encode_indices
    monkeypatch.setattr(bench_mod, "encode_indices", lambda *a, **k: calls.append(1) or real(*a, **k))
    ctx = EvalContext(trainer)
    trainer.method.train(False)
    idx = np.asarray(trainer.manifest.query)
    first = ctx.codes(trainer.ds, idx)
    again = ctx.codes(trainer.ds, list(idx))  # same items, another container: cached
    assert len(calls) == 1 and again is first
    ref = encode_indices(trainer.method.encode, trainer.ds, idx, trainer.device, trainer.cfg.eval_batch_size)
    assert np.array_equal(first, ref) and first.dtype == np.uint8 and first.shape == (len(idx), 2)
    ctx.codes(trainer.ds, idx[:3])
    assert len(calls) == 2


def test_evaluations_of_a_run_share_its_codes_and_leave_the_trainer_alone(trainer, monkeypatch):
    calls = []
    real = bench_mod.encode_indices
    monkeypatch.setattr(bench_mod, "encode_indices", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    before = dict(vars(trainer))
    extras = {"cross_dataset": lambda ctx: eval_cross_dataset(ctx, **CROSS),
              "samples_cross": lambda ctx: eval_samples_cross(ctx, **CROSS, n_queries=4, k=5)}
    out = bench_mod._extra_results(trainer, extras)
    # cross-dataset queries and database, then the sampled queries; the database is encoded once
    assert len(calls) == 3
    assert 0.0 <= out["cross_dataset"]["map@all"] <= 1.0 and out["cross_dataset"]["dataset"] == "mnist5k"
    assert out["samples_cross"]["n_database"] == out["cross_dataset"]["n_database"]
    assert len(out["samples_cross"]["query"]) == 4 and all(len(r) == 5 for r in out["samples_cross"]["results"])
    assert dict(vars(trainer)) == before  # no cache or other attribute written into the trainer
    assert trainer.method.net.training  # back in training mode


# ------------------------------------------------------------------------------------------ layering
def _suite_files() -> list[Path]:
    return sorted((SRC / "suite").glob("*.py")) + [SRC / "bench.py"]


@pytest.mark.parametrize("path", _suite_files(), ids=lambda p: p.name)
def test_suite_uses_only_public_interfaces(path):
    """No private name imported from another module, no ``obj._private`` but on ``self``, no ``__dict__``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coophash"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name}:{node.lineno} imports private {private} from {node.module}"
        if isinstance(node, ast.Attribute):
            assert node.attr != "__dict__", f"{path.name}:{node.lineno} reads __dict__"
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                assert isinstance(node.value, ast.Name) and node.value.id == "self", \
                    f"{path.name}:{node.lineno}: private attribute {node.attr} of another object"


# ------------------------------------------------------------------------------------------ pipeline
def test_fakereg_trains_through_the_pipeline_under_the_key_of_the_asked_config(tmp_path, monkeypatch):
    """[gan → fakereg]: the GAN stage goes under cfg.out/gans, the result under the key of the suite's config."""
    cfg = TrainConfig.from_dict({**TINY, "method": "fakereg", "out": str(tmp_path / "shared"),
                                 "method_args": {"gan_epochs": 1}})
    seen = []
    [rec] = run_grid([cfg], tmp_path / "grid", on_start=lambda c: seen.append(c) or None)
    assert seen == [cfg]
    assert rec["key"] == config_key(cfg) and rec["config"] == cfg.to_dict()
    assert "fakes" not in rec["config"]["method_args"]
    assert (tmp_path / "grid" / "results" / f"{config_key(cfg)}.json").is_file()
    assert list((tmp_path / "shared" / "gans").glob("*/fakes.safetensors"))
    assert not (tmp_path / "grid" / "runs" / config_key(cfg)).exists()
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("a cached run must not train"))
    assert run_grid([cfg], tmp_path / "grid") == [json.loads(json.dumps(rec))]
