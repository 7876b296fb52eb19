"""``fake_bn`` of the fake-image method: fakes normalised with the real batch (mixed) or in a pass of their own.

``separate``: the fakes go through the network in their own forward pass, normalised by their own batch
statistics, and the batch-norm running statistics (the test-time network) see the real images only.
"""
import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from coophash.fakes import save_fakes
from coophash.methods.fakereg import FAKE_BN_MODES, FakeRegArgs, frozen_norm_statistics
from coophash.nets import create_hashing_net
from coophash.train import runs
from coophash.train.trainer import Trainer, prepare_data

from conftest import tiny_base_cfg  # noqa: E402


class Killed(Exception):
    pass


def _bn_buffers(net):
    return {k: v.clone() for k, v in net.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fakes_file(tmp_path_factory):
    """Random 8 px 'fakes' (no GAN needed to test how batch norm sees them)."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("fakes") / "fakes.safetensors"
    return save_fakes(path, torch.rand(200, 1, 8, 8, generator=g) * 2 - 1)


def _cfg(tmp_path, fakes, **margs):
    ma = {"fakes": str(fakes), "fake_batch_size": 16, "fake_weight": 0.5, **margs}
    return tiny_base_cfg(tmp_path, method="fakereg", loss="dpsh", epochs=2, batch_size=32, checkpoint_every=3,
                         method_args=ma)


def test_default_is_todays_mixed_pass_and_bad_values_are_refused(fakes_file, tmp_path):
    assert FakeRegArgs().fake_bn == "mixed" and FAKE_BN_MODES == ("mixed", "separate")
    cfg = _cfg(tmp_path, fakes_file, fake_bn="together")
    ds, mf = prepare_data(cfg)
    with pytest.raises(ValueError, match="fake_bn must be one of"):
        Trainer(cfg, tmp_path / "bad", ds, mf)


def test_frozen_norm_statistics_normalises_by_the_batch_and_leaves_running_stats():
    torch.manual_seed(0)
    net = create_hashing_net("smallconv", nbits=8, n_classes=None, in_channels=1, image_size=8)
    alone = copy.deepcopy(net)
    x, xf = torch.randn(6, 1, 8, 8), torch.randn(5, 1, 8, 8) + 0.7
    before = _bn_buffers(net)
    with frozen_norm_statistics(net):
        out = net(xf)
    after = _bn_buffers(net)
    assert _same(before, after)  # not one running statistic moved, not even the batch counter
    assert torch.equal(out.u, alone(xf).u)  # normalised by the fakes' own batch statistics, as in training mode
    assert not _same(before, _bn_buffers(alone))  # (that plain pass did move its statistics)
    assert all(m.track_running_stats for m in net.modules() if hasattr(m, "track_running_stats"))
    (net(x).u.sum() + out.u.pow(2).sum()).backward()  # gradients through both passes
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(RuntimeError, match="boom"), frozen_norm_statistics(net):
        raise RuntimeError("boom")
    assert all(m.track_running_stats for m in net.modules() if hasattr(m, "track_running_stats"))


@pytest.mark.parametrize("mode", FAKE_BN_MODES)
def test_one_step_running_statistics(fakes_file, tmp_path, mode):
    """separate: after a step the running stats are those of the real batch alone; mixed: of real + fakes."""
    cfg = _cfg(tmp_path, fakes_file, fake_bn=mode)
    ds, mf = prepare_data(cfg)
    tr = Trainer(cfg, tmp_path / mode, ds, mf)
    net = tr.method.net
    lab, unl = tr.schedule.epoch(0)
    ctx = tr._batch(lab[0], unl[0])
    real_only, state = copy.deepcopy(net), torch.get_rng_state()
    idx = torch.randint(0, 200, (16,))  # the draw the step will make
    torch.set_rng_state(state)
    xf = tr.method.fakes().batch(idx, tr.device).to(ctx["x"].dtype)
    mixed = copy.deepcopy(net)
    real_only(ctx["x"])
    mixed(torch.cat([ctx["x"], xf]))
    out = tr.method._hash_step(ctx)
    assert out.terms["fake_maxent"] < 0
    want = real_only if mode == "separate" else mixed
    other = mixed if mode == "separate" else real_only
    assert _same(_bn_buffers(net), _bn_buffers(want))
    assert not _same(_bn_buffers(net), _bn_buffers(other))


def test_both_modes_train_and_differ(fakes_file, tmp_path):
    res, weights = {}, {}
    for mode in FAKE_BN_MODES:
        cfg = _cfg(tmp_path, fakes_file, fake_bn=mode).replace(epochs=1)
        res[mode] = Trainer(cfg, tmp_path / mode).fit()
        rec = next(r for r in runs.read_metrics(tmp_path / mode / runs.METRICS) if r.get("epoch") == 1)
        assert 0.0 <= res[mode]["map@all"] <= 1.0
        assert -math.log(2) * 0.5 - 1e-6 <= rec["hash/fake_maxent"] < 0
        assert 0.0 < rec["fakereg/fake_bit_entropy"] <= math.log(2) + 1e-6
        weights[mode] = load_file(str(tmp_path / mode / runs.LAST))
    assert not _same(weights["mixed"], weights["separate"])


def test_separate_mode_killed_mid_epoch_resumes_to_identical_weights(fakes_file, tmp_path):
    cfg = _cfg(tmp_path, fakes_file, fake_bn="separate")
    ds, mf = prepare_data(cfg)
    full = Trainer(cfg, tmp_path / "full", ds, mf)
    res_full = full.fit()
    spe = full.schedule.steps_per_epoch

    def bomb(info):
        if info.global_step == spe + 2:  # mid second epoch, after a checkpoint
            raise Killed()

    with pytest.raises(Killed):
        Trainer(cfg, tmp_path / "killed", ds, mf).fit(step_callback=bomb)
    res_resumed = Trainer(cfg, tmp_path / "killed", ds, mf).fit(resume=True)
    a, b = load_file(str(tmp_path / "full" / runs.LAST)), load_file(str(tmp_path / "killed" / runs.LAST))
    assert _same(a, b) and any("running_mean" in k for k in a)
    assert res_full["map@all"] == res_resumed["map@all"]


def test_fakereg_defaults_are_the_validated_recipe_fakes_in_their_own_pass():
    """``coophash train --method fakereg`` (and ``Hasher``) run fakes in their own batch-norm pass, the variant of
    benchmarks/overfit.yaml that validated best; a user's own ``fake_bn`` wins; suites take fields literally."""
    from pathlib import Path

    import yaml

    from coophash.api import Hasher
    from coophash.cli.common import build_config
    from coophash.methods.base import METHODS

    recipe = METHODS["fakereg"].config_defaults["method_args"]
    assert recipe == {"fake_bn": "separate"} and FakeRegArgs().fake_bn == "mixed"
    assert build_config(None, {"method": "fakereg"}, []).method_args == recipe
    assert build_config(None, {"method": "fakereg"}, [], {"fake_bn": "mixed", "fake_weight": 0.1}).method_args == {
        "fake_bn": "mixed", "fake_weight": 0.1}
    assert Hasher(method="fakereg")._config("digits").method_args == recipe
    suite = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "overfit.yaml").read_text())
    for name in ("fakereg-dpsh-wideconv", "fakereg-dpsh-resnet18"):  # the benchmarked arms
        entry = next(m for m in suite["methods"] if m["name"] == name)
        assert entry["method_args"] == recipe
