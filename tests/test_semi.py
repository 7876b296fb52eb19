"""Scarce labels: pseudo-labels (losses/semi.py), strong augmentation, the ``semi`` method, method recipes, the
weight EMA that encodes, and CoopHash on a batch-norm trunk (generated images on running statistics only)."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from coophash.api import Hasher
from coophash.config import TrainConfig
from coophash.data.augment import cutout, random_affine, strong_augment
from coophash.losses.semi import consistency_loss, pseudo_labels
from coophash.methods import METHODS, DataInfo, create_method
from coophash.methods.base import apply_method_defaults
from coophash.nets.norm import frozen_norm_statistics


# -- formulas against slow references -------------------------------------------------------------
def _ref_pseudo(logits, tau, multi):
    targets, sure = [], []
    for row in logits.tolist():
        if multi:
            p = [1 / (1 + math.exp(-v)) for v in row]
            t = [1.0 if q >= 0.5 else 0.0 for q in p]
            ok = all(max(q, 1 - q) >= tau for q in p) and sum(t) > 0
        else:
            m = max(row)
            e = [math.exp(v - m) for v in row]
            p = [v / sum(e) for v in e]
            c = max(range(len(p)), key=lambda k: p[k])
            t = [1.0 if k == c else 0.0 for k in range(len(p))]
            ok = p[c] >= tau
        targets.append(t)
        sure.append(ok)
    return torch.tensor(targets), torch.tensor(sure)


def _ref_consistency(logits, targets, sure, multi):
    total = 0.0
    for row, t, s in zip(logits.tolist(), targets.tolist(), sure.tolist()):
        if not s:
            continue
        if multi:
            h = 0.0
            for v, y in zip(row, t):
                p = 1 / (1 + math.exp(-v))
                h -= y * math.log(p) + (1 - y) * math.log(1 - p)
            total += h / len(row)
        else:
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            total += lse - row[t.index(1.0)]
    return total / len(logits)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("tau", [0.0, 0.6, 0.95])
def test_pseudo_labels_and_consistency_match_their_formulas(multi, tau):
    g = torch.Generator().manual_seed(3)
    weak = torch.randn(12, 5, generator=g, dtype=torch.float64) * 3
    strong = torch.randn(12, 5, generator=g, dtype=torch.float64) * 2
    targets, sure = pseudo_labels(weak, tau, multi)
    ref_t, ref_s = _ref_pseudo(weak, tau, multi)
    assert torch.equal(targets, ref_t.float()) and torch.equal(sure, ref_s)
    loss = consistency_loss(strong, targets.double(), sure, multi)
    assert float(loss) == pytest.approx(_ref_consistency(strong, targets, sure, multi), rel=1e-9, abs=1e-12)


def test_consistency_is_normalised_by_all_rows_and_sends_no_gradient_through_unconfident_rows():
    logits = torch.randn(6, 4, requires_grad=True)
    targets = torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    sure = torch.tensor([True, False, True, False, False, False])
    loss = consistency_loss(logits, targets, sure, False)
    loss.backward()
    assert logits.grad[~sure].abs().sum() == 0 and logits.grad[sure].abs().sum() > 0
    both = consistency_loss(logits.detach(), targets, torch.ones(6, dtype=torch.bool), False)
    assert float(loss.detach()) < float(both)  # (1/N) over all six rows, not over the two confident ones


def test_pseudo_labels_reject_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labels(torch.zeros(2, 3), 1.5, False)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        pseudo_labels(torch.zeros(3), 0.5, False)
    with pytest.raises(ValueError, match="do not match"):
        consistency_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, dtype=torch.bool), False)


# -- strong augmentation ----------------------------------------------------------------------------
def test_strong_augment_keeps_shape_range_and_background_and_follows_the_seed():
    x = torch.full((8, 1, 28, 28), -1.0)
    x[:, :, 9:19, 9:19] = 1.0
    torch.manual_seed(0)
    a = strong_augment(x)
    torch.manual_seed(0)
    b = strong_augment(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6
    assert float(a[:, :, 0, 0].max()) == pytest.approx(-1.0)  # corners stay background
    assert not torch.equal(a, x) and not torch.equal(a[0], a[1])  # per-image parameters


def test_identity_affine_and_cutout_geometry():
    x = torch.rand(3, 2, 16, 16) * 2 - 1
    same = random_affine(x, degrees=0.0, translate=0.0, scale=(1.0, 1.0), shear=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    out = cutout(x, size=0.25)
    changed = (out != x).any(dim=1)  # (n, h, w)
    for i in range(3):
        rows = changed[i].any(dim=1).nonzero().flatten()
        cols = changed[i].any(dim=0).nonzero().flatten()
        assert len(rows) <= 4 and len(cols) <= 4  # one square of side 4 (clipped at the border)
        assert torch.all(out[i][:, changed[i]] == -1.0)


# -- the method -------------------------------------------------------------------------------------
def _method(**args):
    cfg = TrainConfig(method="semi", bits=16, unlabeled_batch_size=8, method_args=args)
    return create_method(cfg, DataInfo(n_classes=4, channels=1, image_size=8, n_train=64), torch.device("cpu"))


def _ctx(n_lab=6, n_unl=8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_lab + n_unl, 1, 8, 8, generator=g) * 2 - 1
    y = torch.eye(4)[torch.randint(0, 4, (n_lab + n_unl,), generator=g)]
    lab = torch.zeros(n_lab + n_unl, dtype=torch.bool)
    lab[:n_lab] = True
    return {"x": x[:n_lab], "y": y[:n_lab], "labeled": lab[:n_lab], "x_all": x, "y_all": y, "labeled_all": lab}


def test_semi_step_uses_confident_pseudo_labels_only():
    torch.manual_seed(0)
    m = _method(semi_threshold=0.0)  # every unlabeled row is confident
    out = m.phases()[0].fn(_ctx())
    assert float(out.terms["diag_mask_rate"]) == 1.0 and out.terms["consistency"].item() > 0
    torch.manual_seed(0)
    m = _method(semi_threshold=1.0)  # none is
    out = m.phases()[0].fn(_ctx())
    assert float(out.terms["diag_mask_rate"]) == 0.0 and out.terms["consistency"].item() == 0.0


def test_semi_without_pseudo_hash_gives_the_labeled_base_loss():
    torch.manual_seed(1)
    m = _method(semi_threshold=0.0, semi_pseudo_hash=False, semi_weight=0.0, semi_cls_weight=0.0)
    ctx = _ctx()
    torch.manual_seed(2)
    total = m.phases()[0].fn(ctx).total.item()
    m.net.eval()  # compare without batch-norm's batch statistics: recompute both ways in eval mode
    torch.manual_seed(2)
    total_eval = m.phases()[0].fn(ctx).total.item()
    ref = m.loss(m.net(ctx["x"]), ctx["y"], ctx["labeled"]).total.item()
    assert total_eval == pytest.approx(ref, rel=1e-5)
    assert math.isfinite(total)


def test_semi_rejects_bad_arguments():
    with pytest.raises(ValueError, match="semi_threshold"):
        _method(semi_threshold=2.0)
    with pytest.raises(ValueError, match="semi_weight"):
        _method(semi_weight=-1.0)


# -- method defaults (the recipe a user gets by typing the plain command) ---------------------------
def test_method_defaults_fill_only_fields_the_user_left_open():
    base = TrainConfig(method="semi").to_dict()
    assert apply_method_defaults(base, set())["unlabeled_batch_size"] == METHODS["semi"].config_defaults[
        "unlabeled_batch_size"] > 0
    assert apply_method_defaults(base, {"unlabeled_batch_size"})["unlabeled_batch_size"] == 0
    sup = TrainConfig().to_dict()
    assert apply_method_defaults(sup, set()) == sup
    assert apply_method_defaults({**sup, "method": "nope"}, set())["method"] == "nope"


def test_cli_and_api_apply_the_method_defaults(tmp_path):
    from coophash.cli.common import build_config

    cfg = build_config(None, {"method": "semi"}, [])
    assert cfg.unlabeled_batch_size == 64
    cfg = build_config(None, {"method": "semi", "unlabeled_batch_size": 16}, [])
    assert cfg.unlabeled_batch_size == 16
    cfg = build_config(None, {"method": "semi"}, ["unlabeled_batch_size=8"])
    assert cfg.unlabeled_batch_size == 8
    path = tmp_path / "c.yaml"
    path.write_text("method: semi\nunlabeled_batch_size: 0\n")
    assert build_config(str(path), {}, []).unlabeled_batch_size == 0
    path.write_text("method: semi\n")
    assert build_config(str(path), {}, []).unlabeled_batch_size == 64
    assert Hasher(method="semi")._config("digits").unlabeled_batch_size == 64
    assert build_config(None, {"method": "semi"}, []).method_args == {"semi_ema": 0.999}
    assert build_config(None, {"method": "semi"}, [], {"semi_ema": 0.0}).method_args == {"semi_ema": 0.0}
    assert Hasher(method="semi", unlabeled_batch_size=4)._config("digits").unlabeled_batch_size == 4
    assert Hasher()._config("digits").backbone == "smallconv"
    coop = build_config(None, {"method": "coophash"}, [])  # config.yaml names the trunk CoopHash really builds
    assert (coop.backbone, coop.unlabeled_batch_size) == ("smallconv", 64)
    assert Hasher(method="coophash")._config("digits").backbone == "smallconv"
    # the recipe's method_args fill what the user left open; the user's own values win
    coop = build_config(None, {"method": "coophash"}, [], {"langevin_steps": 3, "coop_pseudo_weight": 0.5})
    recipe = METHODS["coophash"].config_defaults["method_args"]
    assert coop.method_args == {**recipe, "langevin_steps": 3, "coop_pseudo_weight": 0.5}
    assert Hasher(method="coophash")._config("digits").method_args == recipe
    import yaml

    suite_entry = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "scarce.yaml").read_text())
    entry = next(m for m in suite_entry["methods"] if m["name"] == "coop-recipe-ms1")
    assert entry["method_args"] == recipe and entry["backbone"] == "smallconv"  # the benchmarked recipe
    assert entry["unlabeled_batch_size"] == 64 and "epochs" not in entry


def test_config_records_the_trunk_coophash_builds_without_batch_norm(tmp_path, caplog):
    """With coop_trunk_norm none or group CoopHash's trunk is smallconv-nobn: the CLI and the API record it in the
    config (so config.yaml says what was built); an explicit smallconv with those is a one-line usage error; a
    config that names smallconv anyway (older runs, suite entries taken literally) builds smallconv-nobn, saying so."""
    import click

    from coophash.cli.common import build_config
    from coophash.methods.coophash import CoopHash

    gn = {"coop_trunk_norm": "group", "coop_gen_bn": "running"}
    assert build_config(None, {"method": "coophash"}, [], gn).backbone == "smallconv-nobn"
    # the recipe's batch-norm mode for generated images does not apply to a trunk without batch norm
    cfg = build_config(None, {"method": "coophash"}, [], {"coop_trunk_norm": "group"})
    assert cfg.backbone == "smallconv-nobn" and cfg.method_args["coop_gen_bn"] == "running"
    assert cfg.method_args["coop_interval"] == 2  # the rest of the recipe stays
    with pytest.raises(ValueError, match="coop_gen_bn='separate' needs coop_trunk_norm=batch"):
        create_method(Hasher(method="coophash", method_args={"coop_trunk_norm": "group", "coop_gen_bn": "separate"})
                      ._config("digits"), DataInfo(4, 1, 8, 64), torch.device("cpu"))
    assert build_config(None, {"method": "coophash"}, [], {"coop_trunk_norm": "batch"}).backbone == "smallconv"
    assert build_config(None, {"method": "coophash", "backbone": "smallconv-nobn"}, [], gn).backbone == "smallconv-nobn"
    assert Hasher(method="coophash", method_args=gn)._config("digits").backbone == "smallconv-nobn"
    path = tmp_path / "c.yaml"
    path.write_text("method: coophash\nmethod_args: {coop_trunk_norm: none, coop_gen_bn: running}\n")
    assert build_config(str(path), {}, []).backbone == "smallconv-nobn"
    with pytest.raises(click.UsageError, match="backbone 'smallconv' has batch norm but coop_trunk_norm is 'group'"):
        build_config(None, {"method": "coophash", "backbone": "smallconv"}, [], gn)
    with pytest.raises(ValueError, match="use backbone smallconv-nobn"):
        Hasher(method="coophash", backbone="smallconv", method_args=gn)._config("digits")
    # a literal config (no resolution): the descriptor is built without batch norm all the same
    cfg = TrainConfig.from_dict({"method": "coophash", "backbone": "smallconv", "bits": 8,
                                 "method_args": {"coop_trunk_norm": "none"}})
    info = DataInfo(n_classes=3, channels=1, image_size=8, n_train=30)
    with caplog.at_level("WARNING"):
        m = CoopHash(cfg, info, torch.device("cpu"))
    assert "builds smallconv-nobn" in caplog.text
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.desc.modules())


def test_semi_is_listed_by_the_cli():
    from coophash.cli import cli

    res = CliRunner().invoke(cli, ["train", "--help"])
    assert res.exit_code == 0 and "--semi-threshold" in res.output


# -- the weight average that encodes ----------------------------------------------------------------
def test_weight_ema_follows_its_formula_with_warm_up():
    from coophash.nets.ema import WeightEMA, ema_decay_at

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net)
    ref = [p.detach().clone() for p in net.parameters()]
    for t in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        ema.update(net, 0.99)
        d = min(0.99, (1 + t) / (10 + t))
        assert ema_decay_at(0.99, t) == pytest.approx(d)
        ref = [d * r + (1 - d) * p.detach() for r, p in zip(ref, net.parameters())]
    for r, p in zip(ref, ema.net.parameters()):
        assert torch.allclose(r, p, atol=1e-6)
    assert torch.equal(ema.net[1].running_mean, net[1].running_mean) and int(ema.updates) == 5
    assert not any(p.requires_grad for p in ema.net.parameters())


def test_semi_with_ema_encodes_with_the_average():
    torch.manual_seed(0)
    m = _method(semi_threshold=0.0, semi_ema=0.9)
    assert "ema" in m.modules() and m.encoder() is m.ema.net
    phase = m.phases()[0]
    out = phase.fn(_ctx())
    out.total.backward()
    m.opt.step()
    m.on_step(0)
    x = _ctx()["x"]
    m.train(False)
    assert torch.equal(m.encode(x), m.ema.net(x).u) and not torch.equal(m.encode(x), m.net(x).u)
    with pytest.raises(ValueError, match="semi_ema"):
        _method(semi_ema=1.0)


def test_coophash_with_ema_encode_encodes_with_the_average():
    torch.manual_seed(0)
    cfg = TrainConfig(method="coophash", backbone="smallconv-nobn", bits=16, method_args={"coop_ema_encode": 0.5})
    m = create_method(cfg, DataInfo(n_classes=4, channels=1, image_size=8, n_train=64), torch.device("cpu"))
    assert "weight_ema" in m.modules()
    with torch.no_grad():
        for p in m.desc.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    m.on_step(0)
    m.train(False)
    x = _ctx()["x"]
    assert torch.allclose(m.encode(x), m.weight_ema.net.encode(x)) and not torch.allclose(m.encode(x), m.desc.encode(x))
    assert torch.equal(m.encoder()(x).u, m.encode(x))


# -- CoopHash on a batch-norm trunk: generated images never touch the batch statistics --------------
def test_running_statistics_context_freezes_and_restores_batch_norm():
    from coophash.nets.norm import running_statistics

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
    net.train()
    before = net[1].running_mean.clone()
    x = torch.randn(8, 3, requires_grad=True)
    with running_statistics(net):
        y = net[:2](x)
        assert not net[1].training and net[2].training  # only batch norm switches
    y.sum().backward()
    assert torch.equal(net[1].running_mean, before) and x.grad is not None
    assert net[1].training
    one = net[:2].eval()(x[:1])  # per-image: the same as in a batch
    net.train()
    with running_statistics(net):
        assert torch.allclose(net[:2](x)[:1], one)


def test_coophash_batch_norm_trunk_keeps_generated_images_out_of_the_statistics():
    from coophash.nets.norm import batch_norm_layers

    torch.manual_seed(0)
    cfg = TrainConfig(method="coophash", backbone="smallconv", bits=16, unlabeled_batch_size=8, method_args={
        "coop_trunk_norm": "batch", "coop_warmup_epochs": 0.0, "coop_ramp_epochs": 0.0, "coop_pairs": 4,
        "langevin_steps": 2, "coop_gen_width": 8, "coop_latent_dim": 8})
    m = create_method(cfg, DataInfo(n_classes=4, channels=1, image_size=8, n_train=64), torch.device("cpu"))
    m.train(True)
    ctx = _ctx()
    stats = [b.running_mean.clone() for b in batch_norm_layers(m.desc)]
    m.phases()[0].fn(ctx)  # revision: Langevin on running statistics, nothing updated
    assert all(torch.equal(a, b.running_mean) for a, b in zip(stats, batch_norm_layers(m.desc)))
    assert ctx["coop"]["x_tilde"].shape[0] == 8
    import copy

    reference = copy.deepcopy(m.desc)  # the statistics a pass over the real rows alone would leave
    reference.train(True)
    reference(ctx["x_all"])
    out = m.phases()[1].fn(ctx)  # descriptor step: real rows on batch statistics, revised rows on running ones
    assert math.isfinite(out.total.item())
    for mine, ref, old in zip(batch_norm_layers(m.desc), batch_norm_layers(reference), stats):
        assert torch.allclose(mine.running_mean, ref.running_mean) and not torch.equal(mine.running_mean, old)
    with pytest.raises(ValueError, match="batch norm"):
        create_method(cfg.replace(backbone="smallconv-nobn"), DataInfo(4, 1, 8, 64), torch.device("cpu"))


def _batch_norm_coophash(gen_bn: str):
    """(config, CoopHash on the batch-norm trunk in training mode, a batch, running means before any step)."""
    from coophash.nets.norm import batch_norm_layers

    torch.manual_seed(0)
    cfg = TrainConfig(method="coophash", backbone="smallconv", bits=16, unlabeled_batch_size=8, method_args={
        "coop_trunk_norm": "batch", "coop_gen_bn": gen_bn, "coop_warmup_epochs": 0.0, "coop_ramp_epochs": 0.0,
        "coop_pairs": 4, "langevin_steps": 2, "coop_gen_width": 8, "coop_latent_dim": 8})
    m = create_method(cfg, DataInfo(n_classes=4, channels=1, image_size=8, n_train=64), torch.device("cpu"))
    m.train(True)
    return cfg, m, _ctx(), [b.running_mean.clone() for b in batch_norm_layers(m.desc)]


def test_coophash_separate_batch_norm_pass_for_generated_images():
    """coop_gen_bn=separate: chains and revised samples normalise by their own batch, never touch the running
    statistics, and the real rows' outputs are those of a pass over the real rows alone."""
    import copy

    from coophash.nets.norm import batch_norm_layers

    cfg, m, ctx, stats = _batch_norm_coophash("separate")
    m.phases()[0].fn(ctx)  # revision on the chains' own batch statistics: running statistics untouched
    assert all(torch.equal(a, b.running_mean) for a, b in zip(stats, batch_norm_layers(m.desc)))
    x_gen = ctx["coop"]["x_tilde"]
    reference = copy.deepcopy(m.desc).train(True)
    ref_real = reference(ctx["x_all"])  # the real rows alone, on their batch (updates the reference's statistics)
    probe = copy.deepcopy(m.desc).train(True)
    for b in batch_norm_layers(probe):
        b.track_running_stats = False  # batch statistics, nothing stored
    ref_gen = probe(x_gen)
    out = m._forward_real_and_generated(ctx["x_all"], ctx["coop"])
    n = ctx["x_all"].shape[0]
    torch.testing.assert_close(out.f[:n], ref_real.f)
    torch.testing.assert_close(out.f[n:], ref_gen.f)
    torch.testing.assert_close(out.logits[n:], ref_gen.logits)
    for mine, ref in zip(batch_norm_layers(m.desc), batch_norm_layers(reference)):
        assert torch.allclose(mine.running_mean, ref.running_mean) and mine.track_running_stats
    out = m.phases()[1].fn(ctx)
    assert math.isfinite(out.total.item())
    with pytest.raises(ValueError, match="coop_gen_bn='separate' needs coop_trunk_norm=batch"):
        create_method(cfg.replace(backbone="smallconv-nobn", method_args={"coop_gen_bn": "separate"}),
                      DataInfo(4, 1, 8, 64), torch.device("cpu"))


def test_reference_statistics_normalise_like_the_reference_batch_per_image():
    """capture_batch_statistics + reference_statistics: a network normalising by a reference batch's statistics
    gives that batch exactly its training-mode outputs, gives any image the same output alone or in a batch, leaves
    running statistics and modes as they were, and matches batch norm's formula on one layer."""
    from coophash.nets.norm import capture_batch_statistics, reference_statistics

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 36, 5), torch.nn.BatchNorm1d(5))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2), net[1].bias.uniform_(-1, 1), net[5].bias.uniform_(-1, 1)
    x_ref, x = torch.randn(16, 1, 8, 8) * 2 + 1, torch.randn(6, 1, 8, 8)
    probe = copy.deepcopy(net).train(True)
    want = probe(x_ref)  # training mode: the reference batch on its own statistics
    running = [net[1].running_mean.clone(), net[5].running_var.clone()]
    net.train(True)
    with torch.no_grad(), frozen_norm_statistics(net), capture_batch_statistics(net) as stats:
        net(x_ref)
    assert len(stats) == 2 and stats[0][0].shape == (4,) and stats[1][1].shape == (5,)
    with reference_statistics(net, stats):
        assert not net[1].training
        torch.testing.assert_close(net(x_ref), want)
        out = net(x)
        torch.testing.assert_close(net(x[2:3]), out[2:3])  # per image
        h = net[0](x)
        mean, var = stats[0]
        manual = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + net[1].eps)
        torch.testing.assert_close(net[1](h), manual * net[1].weight[None, :, None, None]
                                   + net[1].bias[None, :, None, None])
    assert net[1].training and net[5].training
    assert torch.equal(net[1].running_mean, running[0]) and torch.equal(net[5].running_var, running[1])
    assert net[1].running_mean is not stats[0][0]
    with pytest.raises(ValueError, match="2 batch-norm layers"):
        with reference_statistics(net, stats[:1]):
            pass


def test_coophash_reference_batch_norm_for_generated_images():
    """coop_gen_bn=reference: revision and the descriptor step normalise generated rows by the real batch's
    statistics (per image), the real rows' outputs are those of a pass over them alone, running statistics are
    updated by real rows only."""
    from coophash.nets.norm import batch_norm_layers

    cfg, m, ctx, stats = _batch_norm_coophash("reference")
    ref_stats = m._reference_of(ctx)
    assert len(ref_stats) == len(stats) and all(b.training for b in batch_norm_layers(m.desc))
    m.phases()[0].fn(ctx)  # revision on the real batch's statistics: running statistics untouched
    assert all(torch.equal(a, b.running_mean) for a, b in zip(stats, batch_norm_layers(m.desc)))
    x_gen = ctx["coop"]["x_tilde"]
    reference = copy.deepcopy(m.desc).train(True)
    ref_real = reference(ctx["x_all"])
    out = m._forward_real_and_generated(ctx["x_all"], ctx["coop"])
    n = ctx["x_all"].shape[0]
    torch.testing.assert_close(out.f[:n], ref_real.f)
    from coophash.nets.norm import reference_statistics

    probe = copy.deepcopy(m.desc)
    with reference_statistics(probe.trunk, ref_stats):
        ref_gen = probe(x_gen)
        one = probe(x_gen[:1])
    torch.testing.assert_close(out.f[n:n + x_gen.shape[0]], ref_gen.f)
    torch.testing.assert_close(out.logits[n:n + 1], one.logits)  # per image
    for mine, ref in zip(batch_norm_layers(m.desc), batch_norm_layers(reference)):
        assert torch.allclose(mine.running_mean, ref.running_mean)
    out = m.phases()[1].fn(ctx)
    assert math.isfinite(float(out.total.detach()))
    with m.generated_statistics():  # coophash sample: no real batch, the running statistics
        assert not any(b.training for b in batch_norm_layers(m.desc))
    assert all(b.training for b in batch_norm_layers(m.desc))


def test_sampling_revises_with_the_batch_norm_of_training():
    """coophash sample on a coop_gen_bn=separate run revises on the chains' batch statistics, as training did,
    though the loaded method is in eval mode; running statistics stay untouched and modes are restored."""
    from coophash.methods.coophash_sample import sample_pairs, seeded_rng
    from coophash.nets.norm import batch_norm_layers

    torch.manual_seed(0)
    cfg = TrainConfig(method="coophash", backbone="smallconv", bits=16, method_args={
        "coop_trunk_norm": "batch", "coop_gen_bn": "separate", "langevin_steps": 2, "coop_gen_width": 8,
        "coop_latent_dim": 8})
    m = create_method(cfg, DataInfo(n_classes=4, channels=1, image_size=8, n_train=64), torch.device("cpu"))
    m.train(False)
    stats = [b.running_mean.clone() for b in batch_norm_layers(m.desc)]
    seen = []
    hook = m.desc.trunk.register_forward_hook(
        lambda mod, i, o: seen.append([b.training and not b.track_running_stats for b in batch_norm_layers(mod)]))
    y = torch.eye(4)
    with seeded_rng(0):
        s = sample_pairs(m, y)
    hook.remove()
    assert seen and all(all(flags) for flags in seen)  # every revision pass: batch statistics, nothing stored
    assert all(not b.training and b.track_running_stats for b in batch_norm_layers(m.desc))
    assert all(torch.equal(a, b.running_mean) for a, b in zip(stats, batch_norm_layers(m.desc)))
    assert s["rev_pos"].shape == (4, 1, 8, 8) and not torch.equal(s["rev_pos"], s["gen_pos"])


def test_train_help_names_the_recipe_value_beside_the_option_default():
    from coophash.cli import cli

    res = CliRunner().invoke(cli, ["train", "--help"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert "steps [coophash; default 1; the plain --method coophash uses 2]" in text
    assert "[semi; default 0.0; the plain --method semi uses 0.999]" in text
    assert "--coop-pairs INTEGER labeled anchors per step that get a generated contrastive pair [coophash; default 16]" \
        in text


def test_the_demo_compares_the_methods_a_user_gets_from_the_plain_commands():
    """The main job's scarce-label part trains each method exactly as ``coophash train --method M --label-fraction
    0.02`` would (the recipe), with the demo's budget, seed and folder."""
    from coophash.cli.common import build_config
    from coophash.demo import SCARCE_FRACTION, scarce_configs

    base = TrainConfig(out="somewhere", epochs=3, seed=4)
    got = scarce_configs(base)
    assert [c.method for c in got] == ["supervised", "coophash"]
    for c in got:
        want = build_config(None, {"method": c.method, "label_fraction": SCARCE_FRACTION, "epochs": 3, "seed": 4,
                                   "out": "somewhere"}, [])
        assert c == want
    assert got[1].method_args == METHODS["coophash"].config_defaults["method_args"]
    assert got[1].unlabeled_batch_size == 64 and got[0].unlabeled_batch_size == 0
    assert all(c.label_fraction == 0.02 for c in got)
