"""Over-fitting made visible (issue 12): per-epoch training-sample mAP beside validation mAP, ``curves.png``,
training unchanged by it, cache keys unchanged at its default, and each pipeline stage's time on its own."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coophash import pipeline
from coophash.bench import config_key
from coophash.config import TrainConfig, load_config
from coophash.metrics import evaluate
from coophash.pipeline import Stage, run_stages
from coophash.pipeline.gan import gan_key
from coophash.pipeline.stages import STAGES_FILE
from coophash.plots import plot_map_curves
from coophash.train import runs
from coophash.train.encoding import encode_indices
from coophash.train.trainer import CURVES, TRAIN_MAP_SAMPLE, Trainer, prepare_data, train_map_sample

TINY_PROTOCOL = {"query_per_class": 10, "val_per_class": 10}


def _cfg(tmp_path, **kw):
    d = {"dataset": "digits", "protocol_args": TINY_PROTOCOL, "bits": 16, "epochs": 3, "batch_size": 32, "seed": 3,
         "label_fraction": 0.5, "out": str(tmp_path), "checkpoint_every": 7, "loss": "dpsh"}
    d.update(kw)
    return TrainConfig.from_dict(d)


def _epochs(run_dir):
    return [r for r in runs.read_metrics(run_dir / runs.METRICS) if "epoch" in r and not r.get("final")]


@pytest.fixture(scope="module")
def on_off(tmp_path_factory):
    """The same tiny run with training-sample mAP on (every epoch) and off."""
    tmp = tmp_path_factory.mktemp("onoff")
    out = {}
    for every in (1, 0):
        cfg = _cfg(tmp, train_map_every=every)
        trainer = Trainer(cfg, tmp / f"every{every}")
        out[every] = (trainer, trainer.fit())
    return out


def test_train_map_is_logged_every_epoch_in_unit_range(on_off):
    trainer, _ = on_off[1]
    recs = _epochs(trainer.run_dir)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert 0.0 <= r["train_map"] <= 1.0 and 0.0 <= r["val_map"] <= 1.0
    assert len({r["train_map"] for r in recs}) > 1  # it follows training
    assert all("train_map" not in r for r in _epochs(on_off[0][0].run_dir))


def test_train_map_every_and_last_epoch(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, train_map_every=2)
    Trainer(cfg, tmp_path / "r").fit()
    assert ["train_map" in r for r in _epochs(tmp_path / "r")] == [False, True, True]  # epoch 2 and the last


def test_training_with_and_without_train_map_is_identical(on_off):
    (t_on, res_on), (t_off, res_off) = on_off[1], on_off[0]
    for name in (runs.LAST, runs.BEST):
        a, b = load_file(str(t_on.run_dir / name)), load_file(str(t_off.run_dir / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert res_on == res_off
    assert json.loads((t_on.run_dir / "results.json").read_text()) == json.loads(
        (t_off.run_dir / "results.json").read_text())
    strip = ("seconds", "train_map")
    assert [{k: v for k, v in r.items() if k not in strip} for r in _epochs(t_on.run_dir)] == [
        {k: v for k, v in r.items() if k not in strip} for r in _epochs(t_off.run_dir)]


def test_train_map_equals_a_reference_computed_by_hand(on_off):
    """The last epoch's value: the sample's codes against the training set minus the sample (last weights)."""
    trainer, _ = on_off[1]
    from coophash.train.checkpoint import load_checkpoint

    load_checkpoint(trainer.run_dir / runs.LAST, modules=trainer.method.modules(), restore_rng=False)
    sample = trainer.train_sample
    mf = trainer.manifest
    database = np.array([i for i in mf.train if i not in set(sample.tolist())], dtype=np.int64)
    trainer.method.train(False)
    q = encode_indices(trainer.method.encode, trainer.ds, sample, trainer.device)
    db = encode_indices(trainer.method.encode, trainer.ds, database, trainer.device)
    ref = evaluate(q, db, trainer.ds.labels[torch.from_numpy(sample)].numpy(),
                   trainer.ds.labels[torch.from_numpy(database)].numpy(), 16, topk=())["map@all"]
    assert _epochs(trainer.run_dir)[-1]["train_map"] == pytest.approx(ref, abs=1e-12)


def test_sample_is_labeled_seeded_and_leaves_global_generators_alone(tmp_path):
    cfg = _cfg(tmp_path)
    _, mf = prepare_data(cfg)
    state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = train_map_sample(mf, 3)
    assert np.array_equal(np.random.get_state()[1], state[0]) and torch.equal(torch.get_rng_state(), state[1])
    assert np.array_equal(a, train_map_sample(mf, 3))
    assert set(a.tolist()) <= set(np.asarray(mf.labeled).tolist())
    assert len(a) == min(TRAIN_MAP_SAMPLE, len(mf.labeled), len(mf.train) // 2) and len(a) > 0
    small = train_map_sample(mf, 3, size=20)
    assert len(small) == 20 and not np.array_equal(small, train_map_sample(mf, 4, size=20))


def test_curves_png_written_at_the_end_of_fit(on_off, tmp_path):
    trainer, _ = on_off[1]
    png = trainer.run_dir / CURVES
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (on_off[0][0].run_dir / CURVES).exists()  # validation alone still draws
    assert plot_map_curves([{"epoch": 1, "loss": 0.3}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_cache_keys_and_config_files_unchanged_at_the_default(tmp_path):
    cfg = _cfg(tmp_path)
    assert "train_map_every" not in cfg.to_dict()
    off = cfg.replace(train_map_every=0)
    assert off.to_dict()["train_map_every"] == 0 and off.train_map_every == 0
    assert config_key(cfg.replace(train_map_every=1)) == config_key(cfg)
    assert config_key(off) != config_key(cfg)
    gcfg = cfg.replace(method="gan")
    assert gan_key(gcfg.replace(train_map_every=1)) == gan_key(gcfg)
    # a key written before the field existed: the hash of a dict without it
    import hashlib

    d = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "threads", "amp")}
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    assert config_key(cfg).endswith(digest)
    # a run folder's config without the field (older runs) still loads as complete
    runs.write_config(tmp_path / "run", cfg.to_dict())
    assert load_config(tmp_path / "run" / runs.CONFIG, complete=True).train_map_every == 1
    with pytest.raises(ValueError, match="train_map_every"):
        TrainConfig.from_dict({"train_map_every": -1})


def test_a_stage_time_is_its_own(tmp_path, monkeypatch):
    """An earlier stage's time (here an ``after`` hook that takes 1,000 s of the clock) is never in the next
    stage's first epoch. The hook moves a clock offset rather than sleeping, so a loaded machine cannot blur it."""
    real, offset = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])
    first = Stage("first", _cfg(tmp_path, epochs=1, train_map_every=0), tmp_path / "a",
                  after=lambda trainer: offset.__setitem__(0, offset[0] + 1000.0))
    second = Stage("second", _cfg(tmp_path, epochs=2, train_map_every=0), tmp_path / "b")
    results = run_stages([first, second])
    assert results[0].wall_seconds >= 1000.0
    secs = [r["seconds"] for r in _epochs(tmp_path / "b")]
    assert 0 < secs[0] < 1000.0  # the hook's 1,000 s are the first stage's, not the second's first epoch
    table = results[-1].stage_seconds
    assert list(table) == ["first", "second"]
    assert table["first"]["train_seconds"] == pytest.approx(sum(r["seconds"] for r in _epochs(tmp_path / "a")))
    assert table["second"]["train_seconds"] == pytest.approx(sum(secs))
    assert json.loads((tmp_path / "b" / STAGES_FILE).read_text()) == json.loads(json.dumps(table))


def test_one_command_fakereg_reports_the_gan_stage_on_its_own(tmp_path):
    margs = {"gan_epochs": 2, "gan_width": 8, "gan_latent_dim": 8, "fake_batch_size": 16, "fake_weight": 0.5}
    cfg = _cfg(tmp_path, method="fakereg", epochs=1, method_args=margs, train_map_every=0)
    res = pipeline.train(cfg, tmp_path / "run")
    gan_dir = pipeline.plan(cfg, tmp_path / "run")[0].run_dir
    gan_epochs = _epochs(gan_dir)
    assert len(gan_epochs) == 2 and all(r["seconds"] > 0 for r in gan_epochs)  # the GAN's time is in its folder
    table = json.loads((tmp_path / "run" / STAGES_FILE).read_text())
    assert table["gan"]["train_seconds"] == pytest.approx(sum(r["seconds"] for r in gan_epochs))
    assert table["gan"]["epochs"] == 2 and table["fakereg"]["epochs"] == 1 and not table["gan"]["skipped"]
    assert res.stage_seconds == table
    (fake_epoch,) = _epochs(tmp_path / "run")
    assert fake_epoch["seconds"] <= table["fakereg"]["wall_seconds"]


# ------------------------------------------------------------------------------------------ benchmarks/overfit.yaml
OVERFIT_SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "overfit.yaml"


def test_overfit_suite_plans_both_arms_both_backbones_and_one_change_variants():
    """The issue-12 grid: fakereg-dpsh vs dpsh with resnet18 and wideconv at 32 bits, 100/10/2% labels, 3 seeds,
    one epoch count for every run; at 2% each variant differs from fakereg's former default (fakes mixed) in one
    method argument, but for the ``-own-`` ones, one change from the defaults (fakes in their own pass)."""
    from coophash.methods.base import parse_method_args
    from coophash.methods.fakereg import FakeRegArgs, FakeRegHashing
    from coophash.suite import load_suite, plan_suite

    suite = load_suite(OVERFIT_SUITE)
    plan = plan_suite(suite)
    assert plan.skipped == [] and plan.pending == [] and plan.seeds == [0, 1, 2]
    assert {r.cfg.bits for r in plan.runs} == {32} and len({r.cfg.epochs for r in plan.runs}) == 1
    assert {r.cfg.backbone for r in plan.runs} == {"resnet18", "wideconv"}
    arms = {"dpsh-resnet18", "fakereg-dpsh-resnet18", "dpsh-wideconv", "fakereg-dpsh-wideconv"}
    for name in arms:
        assert sorted({r.cfg.label_fraction for r in plan.runs if r.method == name}) == [0.02, 0.1, 1.0]
    variants = [r for r in plan.runs if r.method not in arms]
    assert {r.cfg.label_fraction for r in variants} == {0.02, 0.1} and len(variants) == 3 * (15 + 6)
    # at 10% labels only resnet18 (the regime where the defaults beat the base loss): the mixed pass, four
    # variants, each one change from the defaults (fakes in their own batch-norm pass), and the control of the
    # class-posterior variant: its category head and cross-entropy without the fakes
    at10 = [r for r in variants if r.cfg.label_fraction == 0.1]
    assert {r.cfg.backbone for r in at10} == {"resnet18"} and len({r.method for r in at10}) == 6
    control = {r.method: r.cfg.method_args for r in at10}["fr-resnet18-own-classhead"]
    assert control == {**FakeRegHashing.config_defaults["method_args"], "fake_entropy": "classes", "fake_weight": 0.0}
    at10 = [r for r in at10 if r.method != "fr-resnet18-own-classhead"]
    variants = [r for r in variants if r.method != "fr-resnet18-own-classhead"]
    # the fakereg arms run the method's defaults (its recipe); the variants are fakereg's former default (fakes
    # mixed into the real batch: FakeRegArgs' field defaults, no method_args) and one change from it each
    recipe = FakeRegHashing.config_defaults["method_args"]
    for r in plan.runs:
        if r.method.startswith("fakereg-"):
            assert r.cfg.method_args == recipe
    default = FakeRegArgs()
    own = parse_method_args(FakeRegHashing, recipe)
    assert {r.method for r in variants if not r.cfg.method_args} == {"fr-resnet18-mixed", "fr-wideconv-mixed"}
    for r in variants:
        assert r.cfg.method == "fakereg" and r.cfg.loss == "dpsh"
        args = parse_method_args(FakeRegHashing, r.cfg.method_args)
        ref = own if "-own-" in r.method else default
        changed = [k for k in vars(ref) if getattr(args, k) != getattr(ref, k)]
        assert len(changed) == (0 if r.method.endswith("-mixed") else 1), (r.method, changed)
    assert {r.method for r in at10 if r.method.startswith("fr-resnet18-own-")} == {
        r.method for r in at10} - {"fr-resnet18-mixed"}
    changed_args = {k for r in variants for k in r.cfg.method_args} - set(recipe)
    assert changed_args == {"fake_entropy", "fake_weight", "gan_conditional", "gan_epochs"}
    assert len(plan.runs) == 3 * (4 * 3 + 15 + 6) and {r.key for r in plan.runs_for("overfitting")} == {
        r.key for r in plan.runs}
    # the suite's configs build: the wide net and resnet18 on mnist5k's 28 px one-channel images
    wide = next(r.cfg for r in plan.runs if r.cfg.backbone == "wideconv")
    assert wide.backbone_args == {"width": 4}
