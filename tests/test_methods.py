"""Every registered method under one test: a few steps, a kill, a resume to the same weights, and encoding.

A new method gets this for free by registering itself; it only has to add a tiny configuration below
(``TINY_ARGS``, optional) when its defaults are too slow for a test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coophash import pipeline
from coophash.api import load_run
from coophash.codes import binarize, pack_bits
from coophash.config import TrainConfig
from coophash.methods import METHODS
from coophash.train import runs
from coophash.train.trainer import Trainer, prepare_data

# Small networks and schedules per method, so that each one trains in a few seconds.
TINY_ARGS: dict[str, dict] = {
    "coophash": dict(coop_warmup_epochs=0.0, coop_ramp_epochs=0.5, coop_pairs=4, langevin_steps=2, coop_ema_encode=0.9,
                     coop_gen_width=8, coop_latent_dim=8),
    "gan": dict(gan_width=8, gan_latent_dim=8, n_fakes=64),
    "semi": dict(semi_threshold=0.5, semi_ema=0.9),  # low tau: a tiny run must reach confident pseudo-labels
    "fakereg": dict(gan_width=8, gan_latent_dim=8, n_fakes=64, gan_epochs=1, fake_batch_size=8),
}
UNLABELED = {"coophash": 8, "semi": 16}


class Killed(Exception):
    pass


def tiny_cfg(tmp_path, method: str) -> TrainConfig:
    return TrainConfig.from_dict(dict(
        method=method, dataset="digits", protocol_args={"query_per_class": 10, "val_per_class": 10}, bits=16,
        epochs=2, batch_size=64, unlabeled_batch_size=UNLABELED.get(method, 0), checkpoint_every=3,
        label_fraction=0.5, out=str(tmp_path), seed=5, method_args=TINY_ARGS.get(method, {}),
    ))


def test_every_method_has_a_tiny_config_that_parses():
    for name, args in TINY_ARGS.items():
        assert name in METHODS, f"TINY_ARGS names an unregistered method {name!r}"
        assert METHODS[name].Args is not None and set(args) <= set(METHODS[name].Args.__dataclass_fields__)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_resumes_and_encodes(tmp_path, method):
    cfg = tiny_cfg(tmp_path, method)
    stages = pipeline.plan(cfg, tmp_path / "full")
    pipeline.run_stages(stages[:-1])  # earlier stages (a GAN for fakereg) once, shared by both runs below
    final = stages[-1].cfg
    ds, mf = prepare_data(final)

    res_full = Trainer(final, tmp_path / "full", ds, mf).fit()
    spe = Trainer(final, tmp_path / "probe", ds, mf).schedule.steps_per_epoch

    def bomb(info):
        if info.global_step == spe + 2:  # mid second epoch, one step after a checkpoint
            raise Killed()

    with pytest.raises(Killed):
        Trainer(final, tmp_path / "killed", ds, mf).fit(step_callback=bomb)
    res_resumed = Trainer(final, tmp_path / "killed", ds, mf).fit(resume=True)

    a, b = load_file(str(tmp_path / "full" / runs.LAST)), load_file(str(tmp_path / "killed" / runs.LAST))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{method}: {k} differs after kill + resume"
    assert res_full["map@all"] == res_resumed["map@all"]

    # encode: the reloaded run gives the same codes as the trained method, shaped (n, ceil(K/8))
    _cfg, method_obj = load_run(tmp_path / "full", which="best")
    x = ds.images(np.asarray(mf.query[:7], dtype=np.int64))
    with torch.no_grad():
        codes = pack_bits(binarize(method_obj.encode(x).float()).numpy())
    assert codes.shape == (7, 2) and codes.dtype == np.uint8
    trained = Trainer(final, tmp_path / "full", ds, mf)
    trained.fit(resume=True)  # nothing left to train: finishes by loading the best checkpoint
    trained.method.train(False)
    with torch.no_grad():
        again = pack_bits(binarize(trained.method.encode(x).float()).numpy())
    assert np.array_equal(codes, again)
