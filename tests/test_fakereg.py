"""Fake-image regularised hashing: entropy losses, DCGAN shapes, the GAN stage, fakes files, stage 2, one command."""
import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from coophash.cli import cli
from coophash.fakes import FakesError, load_fakes, read_fakes_meta, save_fakes
from coophash.losses.entropy import (
    MaxEntropyLoss,
    bernoulli_entropy,
    bit_entropy_loss,
    class_entropy_loss,
)
from coophash.nets.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_levels
from coophash.nets.output import HashOutput
from coophash.pipeline.gan import (
    FAKES_FILE,
    LOSSES_FILE,
    SAMPLES_FILE,
    gan_config,
    train_gan,
)
from coophash.train import runs
from coophash.train.trainer import Trainer, prepare_data

PNG = b"\x89PNG\r\n\x1a\n"
from conftest import tiny_base_cfg  # noqa: E402


# ------------------------------------------------------------------------------------------ entropy losses
def _ref_bit_loss(u):
    """−mean H((1+u)/2) by explicit loops over Python floats."""
    total, count = 0.0, 0
    for row in u.tolist():
        for v in row:
            p = (1.0 + v) / 2.0
            total += -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))
            count += 1
    return -total / count


def _ref_class_loss(logits):
    """−mean softmax entropy by explicit loops."""
    total = 0.0
    rows = logits.tolist()
    for row in rows:
        m = max(row)
        z = sum(math.exp(v - m) for v in row)
        ps = [math.exp(v - m) / z for v in row]
        total += -sum(p * math.log(p) for p in ps)
    return -total / len(rows)


def test_bit_entropy_matches_reference_loop():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(7, 12, generator=g, dtype=torch.float64) * 2
    u = torch.tanh(pre)
    ref = _ref_bit_loss(u)
    assert float(bit_entropy_loss(u=u)) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert float(bit_entropy_loss(pre=pre)) == pytest.approx(ref, rel=1e-9, abs=1e-12)  # the stable form agrees
    assert float(MaxEntropyLoss("bits")(HashOutput(None, pre, u))) == pytest.approx(ref, rel=1e-9)
    # element-wise entropy against the formula
    p = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    want = [-(q * math.log(q) + (1 - q) * math.log(1 - q)) for q in p.tolist()]
    assert bernoulli_entropy(p).tolist() == pytest.approx(want, rel=1e-12)


def test_bit_entropy_is_maximal_at_one_half():
    k = 16
    at_half = float(bit_entropy_loss(u=torch.zeros(5, k)))
    assert at_half == pytest.approx(-math.log(2.0), rel=1e-6)  # −K log 2 / K
    assert MaxEntropyLoss("bits").minimum(k) == pytest.approx(-math.log(2.0))
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        u = torch.tanh(torch.randn(5, k, generator=g))
        assert float(bit_entropy_loss(u=u)) > at_half
    # saturated outputs (u = ±1) are the least entropic and stay finite
    sat = float(bit_entropy_loss(u=torch.ones(3, k)))
    assert math.isfinite(sat) and sat > -1e-3
    assert float(bit_entropy_loss(pre=torch.full((3, k), 30.0))) == pytest.approx(0.0, abs=1e-9)


def test_bit_entropy_gradient_pushes_confident_codes_toward_one_half():
    u = torch.tensor([[0.9, -0.8, 0.3, -0.05]], requires_grad=True)
    loss = bit_entropy_loss(u=u)
    loss.backward()
    # gradient descent moves each u toward 0 (p toward 0.5): the gradient has the sign of u
    assert torch.all(torch.sign(u.grad) == torch.sign(u.detach()))
    stepped = u.detach() - 0.1 * u.grad
    assert torch.all(stepped.abs() < u.detach().abs())
    # through the pre-activation too, including far into tanh's saturation (the stable form keeps a gradient)
    pre = torch.tensor([[4.0, -12.0, 0.5]], requires_grad=True)
    bit_entropy_loss(pre=pre).backward()
    assert torch.all(torch.sign(pre.grad) == torch.sign(pre.detach()))
    assert torch.all(pre.grad.abs() > 0)
    # and a step lowers the loss
    with torch.no_grad():
        before = float(bit_entropy_loss(u=u))
        after = float(bit_entropy_loss(u=stepped))
    assert after < before


def test_class_entropy_matches_reference_and_is_maximal_at_uniform():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    assert float(class_entropy_loss(logits)) == pytest.approx(_ref_class_loss(logits), rel=1e-9)
    uniform = float(class_entropy_loss(torch.zeros(4, 10)))
    assert uniform == pytest.approx(-math.log(10), rel=1e-6)
    assert MaxEntropyLoss("classes").minimum(10) == pytest.approx(-math.log(10))
    assert float(class_entropy_loss(logits)) > uniform
    # gradient step moves a confident posterior toward uniform
    lg = torch.tensor([[5.0, 0.0, -1.0]], requires_grad=True)
    class_entropy_loss(lg).backward()
    assert lg.grad[0, 0] > 0  # the confident class's logit goes down
    stepped = lg.detach() - 0.5 * lg.grad
    assert torch.softmax(stepped, 1).max() < torch.softmax(lg.detach(), 1).max()
    # multi-label: mean per-class Bernoulli entropy of the sigmoids
    ml = float(class_entropy_loss(torch.zeros(2, 5), multi_label=True))
    assert ml == pytest.approx(-math.log(2.0), rel=1e-6)
    with pytest.raises(ValueError, match="category head"):
        MaxEntropyLoss("classes")(HashOutput(None, torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="mode"):
        MaxEntropyLoss("nope")


# ------------------------------------------------------------------------------------------ DCGAN shapes
@pytest.mark.parametrize("size", [8, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("conditional", [False, True])
def test_dcgan_shapes(size, channels, conditional):
    torch.manual_seed(0)
    n_cls = 10 if conditional else None
    g = DCGANGenerator(latent_dim=16, channels=channels, image_size=size, width=8, n_classes=n_cls)
    d = DCGANDiscriminator(channels=channels, image_size=size, width=8, n_classes=n_cls)
    y = torch.eye(10)[[0, 3, 9]] if conditional else None
    with torch.no_grad():
        x = g(torch.randn(3, 16), y)
    assert x.shape == (3, channels, size, size)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    logit = d(x, y)
    assert logit.shape == (3,)
    assert d.features(x).shape == (3, d.num_features)
    if conditional:
        with pytest.raises(ValueError, match="labels"):
            g(torch.randn(3, 16))
        with pytest.raises(ValueError, match="labels"):
            d(x)
    with pytest.raises(ValueError, match="expected images"):
        d(torch.zeros(3, channels, size + 2, size + 2), y)


def test_dcgan_levels():
    assert dcgan_levels(28) == (2, 7)
    assert dcgan_levels(32) == (3, 4)
    assert dcgan_levels(8) == (1, 4)
    assert dcgan_levels(64) == (4, 4)


# ------------------------------------------------------------------------------------------ fakes files
def test_fakes_roundtrip_and_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.eye(10)[[1, 2, 3, 4, 5]]
    p = save_fakes(tmp_path / "f.safetensors", x, labels, source="unit", extra_meta={"seed": 4})
    f = load_fakes(p, channels=1, image_size=8, n_classes=10)
    assert len(f) == 5 and f.shape == (1, 8, 8) and f.images.dtype == torch.uint8
    assert torch.allclose(f.as_float(), x, atol=1 / 127.5)  # uint8 quantisation error at most half a level
    assert torch.equal(f.labels.float(), labels)
    meta = read_fakes_meta(p)
    assert meta["channels"] == "1" and meta["height"] == "8" and meta["source"] == "unit" and meta["seed"] == "4"
    p16 = save_fakes(tmp_path / "h.safetensors", x, dtype="float16")
    assert torch.allclose(load_fakes(p16).as_float(), x, atol=1e-3)
    with pytest.raises(FakesError) as e:
        load_fakes(p, channels=3, image_size=8)
    msg = str(e.value)
    assert str(p) in msg and "(1, 8, 8)" in msg and "(3, 8, 8)" in msg
    with pytest.raises(FakesError) as e:
        load_fakes(p, channels=1, image_size=28)
    assert "(1, 28, 28)" in str(e.value) and "(1, 8, 8)" in str(e.value)
    with pytest.raises(FakesError, match="not found"):
        load_fakes(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FakesError):
        load_fakes(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------------ GAN stage
_base_cfg = tiny_base_cfg


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan")
    gcfg = gan_config(_base_cfg(tmp), {"gan_width": 8, "gan_latent_dim": 16, "n_fakes": 300}, epochs=1)
    return gcfg, train_gan(gcfg, tmp / "gan")


def test_gan_stage_writes_fakes_grid_and_curves(gan_run):
    gcfg, res = gan_run
    assert gcfg.label_fraction == 1.0 and gcfg.augment == "none"  # unconditional: every train image
    assert res.fakes.name == FAKES_FILE and res.fakes.parent == res.run_dir
    f = load_fakes(res.fakes, channels=1, image_size=8)
    assert len(f) == 300 and f.labels is None
    assert f.meta["source"] == str(res.run_dir) and f.meta["conditional"] == "false"
    assert int(f.meta["gan_epochs"]) == 1 and len(f.meta["train_split_sha1"]) == 40
    assert (res.run_dir / SAMPLES_FILE).read_bytes()[:8] == PNG
    assert (res.run_dir / LOSSES_FILE).read_bytes()[:8] == PNG
    recs = [r for r in runs.read_metrics(res.run_dir / runs.METRICS) if "epoch" in r and not r.get("final")]
    assert len(recs) == 1
    for key in ("discriminator/total", "generator/total", "discriminator/real", "discriminator/fake"):
        assert math.isfinite(recs[0][key])
    # the fakes come from the generator of the last checkpoint
    w = load_file(str(res.run_dir / runs.LAST))
    assert any(k.startswith("module/generator/") for k in w)


def test_gan_phases_train_only_their_network(tmp_path):
    gcfg = gan_config(_base_cfg(tmp_path), {"gan_width": 8, "gan_latent_dim": 16}, epochs=1)
    ds, mf = prepare_data(gcfg)
    tr = Trainer(gcfg, tmp_path / "g", ds, mf)
    m = tr.method
    g0 = [p.detach().clone() for p in m.generator.parameters()]
    d0 = [p.detach().clone() for p in m.discriminator.parameters()]
    lab, unl = tr.schedule.epoch(0)
    ctx = tr._batch(lab[0], unl[0])
    phases = m.phases()
    assert [p.name for p in phases] == ["discriminator", "generator"]
    # run only the discriminator phase: the generator must not move
    tr.method.phases = lambda: phases[:1]  # type: ignore[method-assign]
    tr._step(ctx, 0)
    assert all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, m.discriminator.parameters()))
    d1 = [p.detach().clone() for p in m.discriminator.parameters()]
    tr.method.phases = lambda: phases[1:]  # type: ignore[method-assign]
    ctx = tr._batch(lab[1], unl[1])
    ctx.update(gan_n=ctx["x_all"].shape[0], gan_labels=None)
    tr._step(ctx, 1)
    assert all(torch.equal(a, b) for a, b in zip(d1, m.discriminator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters()))


def test_conditional_gan_writes_labels(tmp_path):
    gcfg = gan_config(_base_cfg(tmp_path), {"gan_width": 8, "gan_latent_dim": 8, "gan_conditional": True,
                                            "n_fakes": 40}, epochs=1)
    assert gcfg.label_fraction == 0.5  # conditional GANs keep the labeled subset
    res = train_gan(gcfg, tmp_path / "cg")
    f = load_fakes(res.fakes, channels=1, image_size=8, n_classes=10)
    assert f.labels is not None and f.labels.shape == (40, 10) and bool((f.labels.sum(1) == 1).all())
    assert f.meta["conditional"] == "true"


# ------------------------------------------------------------------------------------------ stage 2
def _stage2_cfg(tmp_path, fakes, **margs):
    ma = {"fakes": str(fakes), "fake_batch_size": 16, **margs}
    return _base_cfg(tmp_path, method="fakereg", loss="dpsh", epochs=1, batch_size=32, method_args=ma)


def test_stage2_with_fakes_file(gan_run, tmp_path):
    _, res = gan_run
    cfg = _stage2_cfg(tmp_path, res.fakes, fake_weight=0.5)
    out = Trainer(cfg, tmp_path / "s2").fit()
    assert 0.0 <= out["map@all"] <= 1.0
    rec = next(r for r in runs.read_metrics(tmp_path / "s2" / runs.METRICS) if r.get("epoch") == 1)
    assert rec["hash/fake_maxent"] < 0 and rec["hash/fake_maxent"] >= 0.5 * -math.log(2) - 1e-6
    assert 0.0 < rec["fakereg/fake_bit_entropy"] <= math.log(2) + 1e-6


def test_stage2_regulariser_raises_fake_entropy(gan_run, tmp_path):
    """A strong λ must leave the fakes' codes more uncertain than λ = 0 does (the regulariser works)."""
    _, res = gan_run
    ents = {}
    for lam in (0.0, 5.0):
        cfg = _stage2_cfg(tmp_path, res.fakes, fake_weight=lam)
        tr = Trainer(cfg, tmp_path / f"s2-{lam}")
        tr.fit()
        fakes = load_fakes(res.fakes).as_float()
        tr.method.train(False)
        with torch.no_grad():
            u = tr.method.encode(fakes)
        ents[lam] = -float(bit_entropy_loss(u=u))
    assert ents[5.0] > ents[0.0] + 0.05, ents


def test_fake_weight_zero_reproduces_the_supervised_baseline(tmp_path):
    base = _base_cfg(tmp_path, loss="dpsh", batch_size=32)
    a = Trainer(base, tmp_path / "sup").fit()
    cfg = base.replace(method="fakereg", method_args={"fakes": str(tmp_path / "unused.safetensors"),
                                                      "fake_weight": 0.0})
    b = Trainer(cfg, tmp_path / "fr0").fit()
    assert a["map@all"] == b["map@all"]


def test_stage2_wrong_fakes_shape_is_a_clear_error(tmp_path):
    bad = save_fakes(tmp_path / "bad.safetensors", torch.zeros(10, 3, 8, 8))
    cfg = _stage2_cfg(tmp_path, bad)
    with pytest.raises(FakesError) as e:
        Trainer(cfg, tmp_path / "bad").fit()
    assert str(bad) in str(e.value) and "(3, 8, 8)" in str(e.value) and "(1, 8, 8)" in str(e.value)
    bad28 = save_fakes(tmp_path / "bad28.safetensors", torch.zeros(10, 1, 28, 28))
    r = CliRunner().invoke(cli, ["train", "--method", "fakereg", "--fakes", str(bad28), "--dataset", "digits",
                                 "--epochs", "1", "--out", str(tmp_path / "cli"), "--quiet",
                                 "--set", "protocol_args.query_per_class=10",
                                 "--set", "protocol_args.val_per_class=10"])
    assert r.exit_code != 0
    assert "(1, 28, 28)" in r.output and "(1, 8, 8)" in r.output and "bad28.safetensors" in r.output


def test_classes_entropy_option_trains(gan_run, tmp_path):
    _, res = gan_run
    cfg = _stage2_cfg(tmp_path, res.fakes, fake_entropy="classes", fake_weight=0.5)
    out = Trainer(cfg, tmp_path / "cls").fit()
    assert 0.0 <= out["map@all"] <= 1.0
    rec = next(r for r in runs.read_metrics(tmp_path / "cls" / runs.METRICS) if r.get("epoch") == 1)
    assert rec["hash/cls"] > 0 and rec["hash/fake_maxent"] >= 0.5 * -math.log(10) - 1e-6


# ------------------------------------------------------------------------------------------ CLI
def test_gan_command(tmp_path):
    r = CliRunner().invoke(cli, ["gan", "--dataset", "digits", "--epochs", "1", "--width", "8", "--latent-dim", "8",
                                 "--n-fakes", "50", "--out", str(tmp_path), "--quiet", "--seed", "1",
                                 "--set", "protocol_args.query_per_class=10",
                                 "--set", "protocol_args.val_per_class=10"])
    assert r.exit_code == 0, r.output
    run = next(p for p in tmp_path.iterdir() if p.name.startswith("00000-gan-digits-s1"))
    assert len(load_fakes(run / FAKES_FILE, channels=1, image_size=8)) == 50
    assert (run / SAMPLES_FILE).exists() and (run / LOSSES_FILE).exists()
    assert "fakes.safetensors" in r.output


def test_one_command_path_trains_the_gan_then_reuses_it(tmp_path):
    args = ["train", "--method", "fakereg", "--dataset", "digits", "--epochs", "1", "--batch-size", "32",
            "--bits", "16", "--gan-epochs", "1", "--gan-width", "8", "--gan-latent-dim", "8", "--fake-batch-size",
            "16", "--out", str(tmp_path), "--quiet", "--set", "protocol_args.query_per_class=10",
            "--set", "protocol_args.val_per_class=10"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "map@all=" in r.output
    gans = list((tmp_path / "gans").iterdir())
    assert len(gans) == 1
    fakes = gans[0] / FAKES_FILE
    assert fakes.exists() and (gans[0] / SAMPLES_FILE).exists()
    stamp = fakes.stat().st_mtime_ns
    first = json.loads(next(tmp_path.glob("00000-*/results.json")).read_text())
    # the same command again reuses the GAN stage and reproduces the result exactly
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert fakes.stat().st_mtime_ns == stamp
    second = json.loads(next(tmp_path.glob("00001-*/results.json")).read_text())
    assert first["map@all"] == second["map@all"]
    # and equals stage 2 run on that fakes file by hand
    r = CliRunner().invoke(cli, args + ["--fakes", str(fakes)])
    assert r.exit_code == 0, r.output
    third = json.loads(next(tmp_path.glob("00002-*/results.json")).read_text())
    assert first["map@all"] == third["map@all"]


def test_gan_stage_lock_is_exclusive_across_file_handles(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    from coophash.pipeline import stage_lock

    folder = tmp_path / "gans" / "abc"
    with stage_lock(folder):
        with open(tmp_path / "gans" / "abc" / ".lock", "a+b") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / "gans" / "abc" / ".lock", "a+b") as other:  # released on exit
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
