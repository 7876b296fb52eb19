"""The stage layer: plans ([gan → fakereg] for fakereg without fakes), shared stages (skip, resume, lock), the judge."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from coophash import pipeline
from coophash.config import TrainConfig
from coophash.fakes import load_fakes, save_fakes
from coophash.methods.base import DataInfo, create_method
from coophash.methods.classifier import Classifier
from coophash.methods.coophash_sample import judge_accuracy
from coophash.methods.gan import GanArgs
from coophash.pipeline import Stage, plan, run_stages
from coophash.pipeline.gan import FAKES_FILE, LOSSES_FILE, SAMPLES_FILE, gan_config, gan_key, gan_stage
from coophash.pipeline.judge import judge_config, train_judge
from coophash.train import runs
from coophash.train.progress import Progress
from coophash.train.trainer import Trainer

TINY_PROTOCOL = {"query_per_class": 10, "val_per_class": 10}
GAN_ARGS = {"gan_epochs": 1, "gan_width": 8, "gan_latent_dim": 8}


def _cfg(tmp_path, **kw):
    d = {"dataset": "digits", "protocol_args": TINY_PROTOCOL, "bits": 16, "epochs": 1, "batch_size": 32, "seed": 3,
         "label_fraction": 0.5, "out": str(tmp_path), "checkpoint_every": 1000, "loss": "dpsh"}
    d.update(kw)
    return TrainConfig.from_dict(d)


def _fakereg_cfg(tmp_path, **margs):
    return _cfg(tmp_path, method="fakereg", method_args={**GAN_ARGS, "fake_batch_size": 16, "fake_weight": 0.5,
                                                         **margs})


def _epoch_records(run_dir):
    recs = [r for r in runs.read_metrics(Path(run_dir) / runs.METRICS) if "epoch" in r and not r.get("final")]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


# ------------------------------------------------------------------------------------------ plans
def test_plan_of_fakereg_without_fakes_is_gan_then_fakereg(tmp_path):
    cfg = _fakereg_cfg(tmp_path)
    before = cfg.to_dict()
    stages = plan(cfg, tmp_path / "run")
    assert [s.name for s in stages] == ["gan", "fakereg"]
    gan, fr = stages
    # every GAN argument, defaults included, shapes the config (and so the folder name gan_key)
    gcfg = gan_config(cfg, dataclasses.asdict(GanArgs(gan_width=8, gan_latent_dim=8)), epochs=1)
    assert gan.cfg == gcfg and gan.cfg.method == "gan" and gan.cfg.label_fraction == 1.0
    assert gan.cfg.epochs == 1 and gan.cfg.augment == "none" and gan.cfg.seed == 3
    assert gan.run_dir == tmp_path / "gans" / gan_key(gcfg)
    assert gan.outputs == (gan.run_dir / FAKES_FILE,) and gan.after is not None
    assert fr.run_dir == tmp_path / "run" and fr.outputs == ()
    assert fr.cfg.method_args["fakes"] == str(gan.run_dir / FAKES_FILE)
    assert fr.cfg.replace(method_args=cfg.method_args) == cfg  # only `fakes` differs
    assert cfg.to_dict() == before and "fakes" not in cfg.method_args  # the caller's config is left as is
    # an explicit gan_dir is used as is
    (g, _f) = plan(_fakereg_cfg(tmp_path, gan_dir=str(tmp_path / "mygan")), tmp_path / "r2")
    assert g.run_dir == tmp_path / "mygan"


def test_plan_is_one_stage_otherwise(tmp_path):
    for cfg in (_fakereg_cfg(tmp_path, fakes=str(tmp_path / "f.safetensors")), _fakereg_cfg(tmp_path, fake_weight=0.0),
                _cfg(tmp_path), _cfg(tmp_path, method="gan")):
        (st,) = plan(cfg, tmp_path / "run")
        assert st.cfg is cfg and st.name == cfg.method and st.run_dir == tmp_path / "run" and not st.outputs


def test_fakereg_without_fakes_outside_the_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs a fakes file.*coophash gan.*pipeline"):
        Trainer(_fakereg_cfg(tmp_path), tmp_path / "run").fit()


# ------------------------------------------------------------------------------------------ running stages
def test_pipeline_train_equals_a_run_on_the_gan_stage_fakes(tmp_path):
    """The one-command path is [gan → fakereg]; its result equals fakereg run by hand on the GAN's fakes file."""
    cfg = _fakereg_cfg(tmp_path)
    seen: list[str] = []

    def progress(p: Progress) -> None:
        if p.step == 1:
            seen.append(p.stage)

    res = pipeline.train(cfg, tmp_path / "one", progress=progress)
    assert seen == ["gan", "fakereg"]  # one epoch of each stage
    assert res.stage.name == "fakereg" and res.trainer is not None and not res.skipped
    gan_dir = plan(cfg, tmp_path / "x")[0].run_dir
    fakes = gan_dir / FAKES_FILE
    assert (gan_dir / SAMPLES_FILE).exists() and (gan_dir / LOSSES_FILE).exists()
    assert len(load_fakes(fakes, channels=1, image_size=8)) == res.trainer.info.n_train
    assert runs.read_config(tmp_path / "one" / runs.CONFIG)["method_args"]["fakes"] == str(fakes)
    by_hand = Trainer(_fakereg_cfg(tmp_path, fakes=str(fakes)), tmp_path / "hand").fit()
    assert res.results == by_hand
    assert _epoch_records(tmp_path / "one") == _epoch_records(tmp_path / "hand")
    # again: the GAN stage is skipped (its fakes are reused, untouched) and the result is the same
    stamp = fakes.stat().st_mtime_ns
    results = run_stages(plan(cfg, tmp_path / "two"))
    assert [r.skipped for r in results] == [True, False] and results[0].trainer is None
    assert results[0].results["split"] == "query"  # the GAN stage's own results.json
    assert fakes.stat().st_mtime_ns == stamp
    assert results[1].results == by_hand


def test_a_finished_shared_stage_is_skipped(tmp_path):
    gcfg = gan_config(_cfg(tmp_path), GAN_ARGS, epochs=1)
    folder = tmp_path / "gan"
    save_fakes(folder / FAKES_FILE, torch.zeros(4, 1, 8, 8))
    (res,) = run_stages([gan_stage(gcfg, folder)])
    assert res.skipped and res.trainer is None and res.results == {}
    assert not (folder / runs.CONFIG).exists()  # nothing trained


def test_a_shared_stage_resumes_its_last_checkpoint(tmp_path):
    """A GAN stage killed after training (before its outputs) picks up its checkpoint instead of retraining."""
    gcfg = gan_config(_cfg(tmp_path), GAN_ARGS, epochs=1)
    folder = tmp_path / "gan"
    Trainer(gcfg, folder).fit()
    recs = _epoch_records(folder)
    last = (folder / runs.LAST).read_bytes()
    (res,) = run_stages([gan_stage(gcfg, folder)])
    assert not res.skipped and res.trainer is not None
    assert _epoch_records(folder) == recs  # no epoch trained again
    assert (folder / runs.LAST).read_bytes() == last
    assert (folder / FAKES_FILE).exists() and (folder / SAMPLES_FILE).exists()


def test_final_stage_gets_the_callers_data_and_resume_flag(tmp_path):
    from coophash.train.trainer import prepare_data

    cfg = _cfg(tmp_path)
    ds, mf = prepare_data(cfg.replace(label_fraction=0.2))
    res = pipeline.train(cfg, tmp_path / "run", dataset=ds, manifest=mf)
    assert res.trainer.manifest is mf and res.trainer.ds is ds
    recs = _epoch_records(tmp_path / "run")
    again = pipeline.train(cfg, tmp_path / "run", dataset=ds, manifest=mf, resume=True)  # finished: nothing to train
    assert again.results == res.results and _epoch_records(tmp_path / "run") == recs and len(recs) == 1


def test_stage_has_no_outputs_by_default(tmp_path):
    st = Stage("x", _cfg(tmp_path), tmp_path)
    assert not st.done() and st.after is None


# ------------------------------------------------------------------------------------------ the judge
def test_the_judge_trains_as_an_ordinary_run(tmp_path):
    cfg = _cfg(tmp_path, seed=5)
    jcfg = judge_config(cfg, epochs=2)
    assert jcfg.method == "classifier" and jcfg.label_fraction == 1.0 and jcfg.augment == "none"
    assert jcfg.seed == 0 and jcfg.split_seed == 5  # the run's split, the judge's own seed
    judge = train_judge(jcfg, tmp_path / "judge")
    assert isinstance(judge, Classifier) and not judge.net.training
    run = tmp_path / "judge"
    assert runs.read_config(run / runs.CONFIG)["method"] == "classifier"
    assert (run / runs.BEST).exists() and json.loads((run / "results.json").read_text())["split"] == "query"
    recs = _epoch_records(run)
    assert len(recs) == 2 and recs[1]["cls/class"] < recs[0]["cls/class"]
    # it recognises held-out real images (query split) far above chance
    from coophash.train.trainer import prepare_data

    ds, mf = prepare_data(jcfg)
    q = torch.as_tensor(mf.query)
    with torch.no_grad():
        acc = float((judge.predict(ds.images(q.numpy())) == ds.labels[q].argmax(1)).float().mean())
    assert acc > 0.6, acc
    # the untrained hash head is a fixed random projection: encode gives codes, training left it as built
    assert judge.encode(ds.images(q[:5].numpy())).shape == (5, 16)


def test_judge_accuracy_leaves_the_callers_random_state_alone(tmp_path):
    cfg = _cfg(tmp_path, method="coophash", bits=16)
    torch.manual_seed(0)
    method = create_method(cfg, DataInfo(n_classes=10, channels=1, image_size=8, n_train=100), torch.device("cpu"))
    judge = create_method(cfg.replace(method="classifier"), DataInfo(10, 1, 8, 100), torch.device("cpu"))
    method.train(False)
    state = torch.get_rng_state()
    a = judge_accuracy(judge, method, n_per_class=2, seed=1, steps=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert sorted(a) == ["judge_acc_gen_neg", "judge_acc_gen_pos", "judge_acc_rev_neg", "judge_acc_rev_pos"]
    assert all(0.0 <= v <= 1.0 for v in a.values())
    assert judge_accuracy(judge, method, n_per_class=2, seed=1, steps=1) == a  # seeded: the same samples
