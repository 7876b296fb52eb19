"""The shared trainer: a killed run resumes to the same result; selection uses validation; run folder."""
import json

import numpy as np
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
    assert TrainConfig.from_dict(runs.read_config(run / runs.CONFIG)) == cfg.replace(threads=torch.get_num_threads())
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


# -------------------------------------------------------------------------------------- progress
def test_progress_callback_sees_every_step_and_resumes_where_it_stopped(tmp_path):
    cfg = small_cfg(tmp_path)
    ds, mf = prepare_data(cfg)
    seen = []
    trainer = Trainer(cfg, tmp_path / "run", ds, mf, progress=seen.append, stage="hash")
    spe = trainer.schedule.steps_per_epoch
    trainer.fit()
    assert len(seen) == cfg.epochs * spe
    assert [p.done for p in seen] == list(range(1, cfg.epochs * spe + 1))
    assert all(p.stage == "hash" and p.total == cfg.epochs * spe and p.steps_per_epoch == spe for p in seen)
    assert seen[-1].epoch == cfg.epochs - 1 and seen[-1].step == spe and "hash/total" in seen[-1].values
    assert not hasattr(trainer, "progress")  # set once, at construction

    def bomb(info):
        if info.global_step == spe + 7:
            raise Killed()

    with pytest.raises(Killed):
        Trainer(cfg, tmp_path / "killed", ds, mf).fit(step_callback=bomb)
    again = []
    Trainer(cfg, tmp_path / "killed", ds, mf, progress=again.append).fit(resume=True)
    assert again[0].stage == "train" and again[0].done == spe + 6  # last checkpoint: step spe + 5, then one more
    assert again[-1].done == again[-1].total


# -------------------------------------------------------------------------------------- encoding
def _reference_codes(u):
    """Bits 1[u >= 0] packed LSB-first, one explicit loop per bit (the definition)."""
    n, k = u.shape
    out = np.zeros((n, (k + 7) // 8), dtype=np.uint8)
    for i in range(n):
        for j in range(k):
            if float(u[i, j]) >= 0:
                out[i, j // 8] |= 1 << (j % 8)
    return out


def test_encode_images_and_indices_match_the_definition():
    from coophash.data import load_dataset
    from coophash.train.encoding import encode_images, encode_indices

    ds = load_dataset("digits")
    weight = torch.randn(64, 12, generator=torch.Generator().manual_seed(0))

    def encode_fn(x):
        return x.flatten(1) @ weight

    idx = np.arange(5, 205)
    want = _reference_codes(encode_fn(ds.images(idx)))
    for bs in (1, 7, 512):
        np.testing.assert_array_equal(encode_indices(encode_fn, ds, idx, torch.device("cpu"), bs), want)
        np.testing.assert_array_equal(encode_images(encode_fn, ds.images(idx), torch.device("cpu"), bs), want)
    with pytest.raises(ValueError, match="no items"):
        encode_indices(encode_fn, ds, np.zeros(0, np.int64), torch.device("cpu"))
    from coophash.train.trainer import encode_indices as from_trainer  # the old home stays importable

    assert from_trainer is encode_indices


def test_end_of_epoch_evaluations_share_codes_and_match_fresh_encoding(tmp_path, monkeypatch):
    """Validation and training-sample mAP share one encoding of each image per epoch (each image once), and
    give what separate encodings give."""
    cfg = small_cfg(tmp_path, epochs=1)
    ds, mf = prepare_data(cfg)
    tr = Trainer(cfg, tmp_path / "run", ds, mf)
    fresh_val = tr.evaluate_split("validation", topk=(), radius=2)["map@all"]
    fresh_train = tr.training_map()
    import coophash.train.trainer as trainer_mod

    seen: list[int] = []
    real = trainer_mod.encode_indices

    def counting(fn, dset, indices, device, batch_size=512):
        seen.extend(np.asarray(indices).tolist())
        return real(fn, dset, indices, device, batch_size)

    monkeypatch.setattr(trainer_mod, "encode_indices", counting)
    with tr._shared_codes():
        shared_val = tr.evaluate_split("validation", topk=(), radius=2)["map@all"]
        shared_train = tr.training_map()
    assert len(seen) == len(set(seen))  # nothing encoded twice
    assert set(seen) == set(mf.validation) | set(mf.validation_database) | set(mf.train)
    assert shared_val == pytest.approx(fresh_val, abs=1e-12)
    assert shared_train == pytest.approx(fresh_train, abs=1e-12)
    assert tr._code_cache is None  # outside the block: encoded afresh (weights change between epochs)
    seen.clear()
    tr.training_map()
    assert len(seen) == len(mf.train)
