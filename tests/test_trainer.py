"""The shared trainer: a killed run resumes to the same result; selection uses validation; run folder."""
import json

import pytest
import torch
from safetensors.torch import load_file

from coophash.config import TrainConfig
from coophash.train import runs
from coophash.train.trainer import Trainer, prepare_data


class Killed(Exception):
    pass


def small_cfg(tmp_path, **kw):
    base = dict(
        dataset="digits",
        protocol_args={"query_per_class": 10, "val_per_class": 10},
        bits=16,
        epochs=2,
        batch_size=32,
        checkpoint_every=5,
        label_fraction=0.5,
        loss="dpsh",
        out=str(tmp_path),
        seed=3,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def _weights(path):
    return load_file(str(path))


@pytest.mark.parametrize("loss", ["dpsh", "hashnet"])
def test_killed_run_resumes_to_identical_result(tmp_path, loss):
    cfg = small_cfg(tmp_path, loss=loss)
    ds, mf = prepare_data(cfg)
    full_dir = tmp_path / "full"
    res_full = Trainer(cfg, full_dir, ds, mf).fit()

    killed_dir = tmp_path / "killed"
    spe = Trainer(cfg, tmp_path / "probe", ds, mf).schedule.steps_per_epoch
    kill_at = spe + 7  # mid second epoch, two steps after a checkpoint at a multiple of 5

    def bomb(info):
        if info.global_step == kill_at:
            raise Killed()

    with pytest.raises(Killed):
        Trainer(cfg, killed_dir, ds, mf).fit(step_callback=bomb)
    assert (killed_dir / runs.LAST).exists()
    # a fresh process would rebuild everything from the folder: do the same
    res_resumed = Trainer(cfg, killed_dir, ds, mf).fit(resume=True)

    a, b = _weights(full_dir / runs.LAST), _weights(killed_dir / runs.LAST)
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("module/"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert res_full["map@all"] == res_resumed["map@all"]
    ma = [r for r in runs.read_metrics(full_dir / runs.METRICS) if "epoch" in r and not r.get("final")]
    mb = [r for r in runs.read_metrics(killed_dir / runs.METRICS) if "epoch" in r and not r.get("final")]
    assert [r["epoch"] for r in mb] == [1, 2]
    for ra, rb in zip(ma, mb):
        assert ra["hash/total"] == pytest.approx(rb["hash/total"], rel=1e-9)


def test_run_folder_contents_and_selection(tmp_path):
    cfg = small_cfg(tmp_path, epochs=2)
    ds, mf = prepare_data(cfg)
    res = Trainer(cfg, tmp_path / "run", ds, mf).fit()
    run = tmp_path / "run"
    for name in (runs.CONFIG, runs.MANIFEST, runs.METRICS, runs.BEST, runs.LAST, "results.json"):
        assert (run / name).exists(), name
    recs = runs.read_metrics(run / runs.METRICS)
    val = [r["val_map"] for r in recs if "val_map" in r]
    assert res["best_val_map"] == pytest.approx(max(val))
    assert res["split"] == "query"
    saved = json.loads((run / "results.json").read_text())
    assert saved["map@all"] == pytest.approx(res["map@all"])
    # the resolved config round-trips
    assert TrainConfig.from_dict(runs.read_config(run / runs.CONFIG)) == cfg
    # learning happened: better than chance (10 classes -> ~0.1)
    assert res["map@all"] > 0.3


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"bitz": 3})
    with pytest.raises(ValueError, match="label_fraction"):
        TrainConfig.from_dict({"label_fraction": 0})
    bad = tmp_path / "c.yaml"
    bad.write_text("- a\n- b\n")
    from coophash.config import load_config

    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)
