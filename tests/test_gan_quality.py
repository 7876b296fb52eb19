"""GAN quality as the judge sees it: Fréchet distance, histogram/coverage/confidence, fakes metadata, CLI."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from coophash.cli import cli
from coophash.fakes import FakesError, load_fakes, read_fakes_meta, save_fakes, update_fakes_meta
from coophash.metrics import frechet_distance
from coophash.pipeline.gan import FAKES_FILE, gan_config, train_gan
from coophash.pipeline.gan_quality import (
    COVERAGE_SHARE,
    JUDGE_DIR,
    QUALITY_FILE,
    QUALITY_META_KEY,
    gan_quality,
)
from coophash.pipeline.judge import fit_judge, judge_config
from coophash.train import runs

from conftest import tiny_base_cfg  # noqa: E402


# ------------------------------------------------------------------------------------------ Fréchet distance
def _ref_moments(x):
    """Mean and covariance (denominator n − 1) by explicit loops."""
    n, d = len(x), len(x[0])
    mu = [sum(x[i][j] for i in range(n)) / n for j in range(d)]
    cov = [[sum((x[i][a] - mu[a]) * (x[i][b] - mu[b]) for i in range(n)) / (n - 1) for b in range(d)]
           for a in range(d)]
    return np.array(mu), np.array(cov)


def _ref_frechet(xa, xb):
    """||μa − μb||² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2}), the square root by scipy.linalg.sqrtm."""
    linalg = pytest.importorskip("scipy.linalg")
    mu_a, cov_a = _ref_moments(xa.tolist())
    mu_b, cov_b = _ref_moments(xb.tolist())
    root = linalg.sqrtm(cov_a @ cov_b)
    root = np.real(root)
    dist = sum((mu_a[j] - mu_b[j]) ** 2 for j in range(len(mu_a)))
    return dist + sum(cov_a[j][j] + cov_b[j][j] - 2.0 * root[j][j] for j in range(len(mu_a)))


@pytest.mark.parametrize("n_a, n_b, d", [(40, 50, 3), (30, 30, 6)])
def test_frechet_distance_matches_the_sqrtm_reference(n_a, n_b, d):
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d))
    xa = rng.normal(size=(n_a, d)) @ mix
    xb = rng.normal(size=(n_b, d)) @ mix * 1.5 + 0.7
    assert frechet_distance(xa, xb) == pytest.approx(_ref_frechet(xa, xb), rel=1e-7, abs=1e-9)
    assert frechet_distance(xb, xa) == pytest.approx(frechet_distance(xa, xb), rel=1e-9)
    assert frechet_distance(torch.as_tensor(xa), torch.as_tensor(xb)) == pytest.approx(frechet_distance(xa, xb))


def _orthogonal_design(n, d, scale, shift):
    """n × d features whose sample covariance is exactly diag(scale² · n/(n−1)): Hadamard columns."""
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h[:, 1:d + 1] * np.asarray(scale) + np.asarray(shift)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    n, d = 16, 4
    sa, sb = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 1.0, 0.5, 0.1])
    ma, mb = np.array([0.0, 1.0, -1.0, 2.0]), np.array([1.0, 1.0, 0.0, -2.0])
    xa, xb = _orthogonal_design(n, d, sa, ma), _orthogonal_design(n, d, sb, mb)
    var_a, var_b = sa ** 2 * n / (n - 1), sb ** 2 * n / (n - 1)
    expected = 0.0
    for j in range(d):  # ||μa − μb||² + Σ_j (σa_j − σb_j)²
        expected += (ma[j] - mb[j]) ** 2 + (math.sqrt(var_a[j]) - math.sqrt(var_b[j])) ** 2
    assert frechet_distance(xa, xb) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(xa, xa) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(xa, xa + 3.0) == pytest.approx(9.0 * d, rel=1e-9)  # a shift: its squared length


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="widths"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((5, 2)))


# ------------------------------------------------------------------------------------------ tiny GANs + judge
_base_cfg = tiny_base_cfg


@pytest.fixture(scope="module")
def runs_(tmp_path_factory):
    """An unconditional and a conditional 1-epoch GAN, each judged by a 1-epoch judge; and a twin without quality."""
    tmp = tmp_path_factory.mktemp("ganq")
    base = _base_cfg(tmp)
    g_args = {"gan_width": 8, "gan_latent_dim": 16, "n_fakes": 300}
    gcfg = gan_config(base, g_args, epochs=1)
    ccfg = gan_config(base, {**g_args, "gan_conditional": True}, epochs=1)
    return {
        "gcfg": gcfg,
        "unc": train_gan(gcfg, tmp / "unc", judge_epochs=1),
        "twin": train_gan(gcfg, tmp / "twin", quality=False),
        "cond": train_gan(ccfg, tmp / "cond", judge_epochs=1),
    }


def test_quality_figures_are_consistent(runs_):
    for key in ("unc", "cond"):
        q = runs_[key].quality
        c = q["n_classes"]
        assert c == 10 and q["n_fakes"] == 300 and len(q["histogram"]) == c
        assert sum(q["histogram"]) == 300 and min(q["histogram"]) >= 0
        assert 0 <= q["coverage"] <= c
        assert q["coverage"] == sum(1 for h in q["histogram"] if h >= COVERAGE_SHARE * 300)
        assert 1.0 / c - 1e-9 <= q["mean_confidence"] <= 1.0
        assert q["frechet_distance"] >= 0 and q["frechet_real_halves"] >= 0
        # a 1-epoch GAN's fakes are much further from the real images than real images from each other
        assert q["frechet_real_halves"] < q["frechet_distance"]
        assert q["frechet_n"] == 300 and q["feature_dim"] > 0
        assert q["judge"]["epochs"] == 1 and 0.0 <= q["judge"]["val_accuracy"] <= 1.0
    assert "judge_accuracy" not in runs_["unc"].quality
    assert 0.0 <= runs_["cond"].quality["judge_accuracy"] <= 1.0


def test_fakes_file_keeps_the_figures_and_stays_intact(runs_):
    for key in ("unc", "cond"):
        res = runs_[key]
        f = load_fakes(res.fakes, channels=1, image_size=8)  # the checksum is verified on load
        assert json.loads(f.meta[QUALITY_META_KEY]) == res.quality
        assert json.loads((res.run_dir / QUALITY_FILE).read_text()) == res.quality
        assert (res.run_dir / JUDGE_DIR / runs.LAST).is_file()
    # measuring changes no fake: the twin GAN, trained without the judge, wrote the same tensors
    twin = load_fakes(runs_["twin"].fakes)
    assert runs_["twin"].quality is None and QUALITY_META_KEY not in twin.meta
    assert not (runs_["twin"].run_dir / JUDGE_DIR).exists()
    assert torch.equal(twin.images, load_fakes(runs_["unc"].fakes).images)


def test_quality_is_measured_once_and_the_gan_is_never_retrained(runs_, tmp_path):
    res = runs_["unc"]
    stamps = {p: p.stat().st_mtime_ns for p in (res.fakes, res.run_dir / runs.LAST, res.run_dir / QUALITY_FILE)}
    again = train_gan(runs_["gcfg"], res.run_dir, judge_epochs=1)
    assert again.quality == res.quality
    assert all(p.stat().st_mtime_ns == s for p, s in stamps.items())


def test_a_reused_gan_folder_without_figures_gets_them(runs_, tmp_path):
    """A GAN folder made before quality existed: measured on request, the GAN left as it was."""
    twin = runs_["twin"]
    last = (twin.run_dir / runs.LAST).stat().st_mtime_ns
    before = load_fakes(twin.fakes).images.clone()
    res = train_gan(runs_["gcfg"], twin.run_dir, judge_epochs=1)
    assert (twin.run_dir / runs.LAST).stat().st_mtime_ns == last
    assert res.quality is not None and sum(res.quality["histogram"]) == 300
    f = load_fakes(twin.fakes)
    assert torch.equal(f.images, before) and json.loads(f.meta[QUALITY_META_KEY]) == res.quality


def _ref_histogram_confidence(judge, images):
    """Class counts and mean max-softmax of the judge's predictions, by explicit loops."""
    with torch.no_grad():
        logits = judge.logits(images).double().tolist()
    counts = [0] * len(logits[0])
    total = 0.0
    for row in logits:
        m = max(row)
        z = sum(math.exp(v - m) for v in row)
        probs = [math.exp(v - m) / z for v in row]
        best = max(range(len(row)), key=lambda j: (probs[j], -j))
        counts[best] += 1
        total += probs[best]
    return counts, total / len(logits)


def test_gan_quality_matches_reference_and_scores_real_images_as_real(runs_):
    res = runs_["cond"]
    jdir = res.run_dir / JUDGE_DIR
    trainer = fit_judge(runs.read_run_config(jdir), jdir)  # reloads the finished judge
    judge, ds, mf = trainer.method, trainer.ds, trainer.manifest
    fakes = load_fakes(res.fakes)
    real = ds.images(mf.train)
    rng_state = torch.get_rng_state()
    q = gan_quality(judge, fakes.as_float(), real, 10, fake_labels=fakes.labels, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_state)  # an own generator, never torch's global one
    assert q == gan_quality(judge, fakes.images, ds.pixels(mf.train), 10, fake_labels=fakes.labels, seed=5)
    counts, conf = _ref_histogram_confidence(judge, fakes.as_float())
    assert q["histogram"] == counts and q["mean_confidence"] == pytest.approx(conf, rel=1e-6)
    with torch.no_grad():
        pred = judge.predict(fakes.as_float()).tolist()
    hits = sum(1 for i, p in enumerate(pred) if fakes.labels[i, p] > 0)
    assert q["judge_accuracy"] == pytest.approx(hits / len(pred))
    # real held-out images as "fakes": many classes covered, recognised as their class, close to real
    val = torch.as_tensor(mf.validation)
    as_fakes = gan_quality(judge, ds.images(val), real, 10, fake_labels=ds.labels[val])
    assert as_fakes["coverage"] >= 8 and as_fakes["judge_accuracy"] >= 0.6
    assert as_fakes["frechet_distance"] < q["frechet_distance"]


def test_judge_sees_only_the_split_of_the_gan(runs_):
    jcfg = runs.read_run_config(runs_["unc"].run_dir / JUDGE_DIR)
    gcfg = runs_["gcfg"]
    got, want = jcfg.to_dict(), judge_config(gcfg, epochs=1).to_dict()
    got.pop("threads"), want.pop("threads")  # resolved when the run starts
    assert got == want
    assert jcfg.method == "classifier" and jcfg.label_fraction == 1.0 and jcfg.augment == "none"
    assert jcfg.split_seed == gcfg.seed and jcfg.protocol_args == gcfg.protocol_args


# ------------------------------------------------------------------------------------------ metadata rewrite
def test_update_fakes_meta_keeps_tensors_and_checksum(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = save_fakes(tmp_path / "f.safetensors", torch.rand(6, 1, 8, 8, generator=g) * 2 - 1,
                      torch.eye(3)[[0, 1, 2, 0, 1, 2]], extra_meta={"seed": 4})
    before = load_fakes(path)
    update_fakes_meta(path, {"quality": {"coverage": 3}, "note": "x"})
    after = load_fakes(path)
    assert torch.equal(before.images, after.images) and torch.equal(before.labels, after.labels)
    assert json.loads(after.meta["quality"]) == {"coverage": 3} and after.meta["note"] == "x"
    assert after.meta["seed"] == "4" and after.meta["sha256"] != before.meta["sha256"]
    with pytest.raises(FakesError, match="cannot be changed"):
        update_fakes_meta(path, {"count": "7"})
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(FakesError, match="checksum"):
        read_fakes_meta(path)


# ------------------------------------------------------------------------------------------ CLI
_GAN_ARGS = ["gan", "--dataset", "digits", "--epochs", "1", "--width", "8", "--latent-dim", "8", "--n-fakes", "60",
             "--quiet", "--seed", "1", "--set", "protocol_args.query_per_class=10",
             "--set", "protocol_args.val_per_class=10"]


def test_gan_command_prints_the_quality_line(tmp_path):
    r = CliRunner().invoke(cli, _GAN_ARGS + ["--out", str(tmp_path), "--judge-epochs", "1"])
    assert r.exit_code == 0, r.output
    run = next(tmp_path.glob("00000-gan-digits-s1*"))
    q = json.loads((run / QUALITY_FILE).read_text())
    line = next(s for s in r.output.splitlines() if s.startswith("quality (judge):"))
    assert f"coverage {q['coverage']}/10 classes" in line
    assert f"mean confidence {q['mean_confidence']:.3f}" in line and "Fréchet distance" in line
    assert json.loads(read_fakes_meta(run / FAKES_FILE)[QUALITY_META_KEY]) == q


def test_gan_command_no_quality(tmp_path):
    r = CliRunner().invoke(cli, _GAN_ARGS + ["--out", str(tmp_path), "--no-quality"])
    assert r.exit_code == 0, r.output
    run = next(tmp_path.glob("00000-gan-digits-s1*"))
    assert "quality (judge)" not in r.output
    assert not (run / QUALITY_FILE).exists() and not (run / JUDGE_DIR).exists()
    assert QUALITY_META_KEY not in read_fakes_meta(run / FAKES_FILE)
