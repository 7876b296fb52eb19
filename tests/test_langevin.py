"""Langevin revision: exact stationary moments on a Gaussian, energy goes the right way, no gradient leaks."""
import math

import pytest
import torch

from coophash.methods.langevin import LangevinConfig, frozen, langevin_revise
from coophash.nets.descriptor import MultipurposeDescriptor


def _gaussian(mu: torch.Tensor, tau: float):
    """Log-density f(x) = −‖x − μ‖² / (2τ²) per row."""
    return lambda x: -((x - mu) ** 2).flatten(1).sum(dim=1) / (2 * tau**2)


def test_sgld_matches_the_chain_stationary_moments():
    # x' = x + α∇f + σε on f = −(x−μ)²/(2τ²) is AR(1): x'−μ = a(x−μ) + σε with a = 1 − α/τ²,
    # stationary mean μ and variance σ²/(1 − a²) exactly.
    torch.manual_seed(0)
    mu = torch.tensor([0.3, -0.2])
    tau, alpha, sigma = 0.1, 0.002, 0.02
    cfg = LangevinConfig(steps=120, form="sgld", step_size=alpha, noise_std=sigma, clamp=True)
    x0 = torch.zeros(20000, 2)
    x, stats = langevin_revise(_gaussian(mu, tau), x0, cfg)
    a = 1 - alpha / tau**2
    var = sigma**2 / (1 - a**2)
    torch.testing.assert_close(x.mean(0), mu, atol=4 * math.sqrt(var / 20000) + 1e-4, rtol=0)
    emp = x.var(0)
    assert torch.all((emp / var - 1).abs() < 0.05), (emp, var)
    assert stats.finite and stats.f_end > stats.f_start


def test_coopnets_form_matches_the_tilted_gaussian():
    # CoopNets: x' = x + δ²/2 ∇[f − x²/(2s²)] + δε; target N(m, 1/P) with P = 1/τ² + 1/s², m = (μ/τ²)/P;
    # the discrete chain is AR(1) with a = 1 − δ²P/2, variance δ²/(1 − a²) (→ 1/P as δ → 0).
    torch.manual_seed(1)
    mu = torch.tensor([0.5, -1.0, 0.0])
    tau, s, delta = 0.5, 0.5, 0.2
    cfg = LangevinConfig(steps=150, form="coopnets", delta=delta, s=s)
    x, _ = langevin_revise(_gaussian(mu, tau), torch.zeros(20000, 3), cfg)
    p = 1 / tau**2 + 1 / s**2
    m = (mu / tau**2) / p
    a = 1 - delta**2 * p / 2
    var = delta**2 / (1 - a**2)
    torch.testing.assert_close(x.mean(0), m, atol=4 * math.sqrt(var / 20000) + 1e-4, rtol=0)
    assert torch.all((x.var(0) / var - 1).abs() < 0.05)
    assert abs(var - 1 / p) / (1 / p) < 0.1  # close to the continuous target


def test_no_noise_is_deterministic_gradient_ascent():
    mu = torch.tensor([0.2, 0.1])
    cfg = LangevinConfig(steps=5, step_size=0.001, noise=False)
    x0 = torch.zeros(4, 2)
    x1, s1 = langevin_revise(_gaussian(mu, 0.1), x0, cfg, track=True)
    x2, _ = langevin_revise(_gaussian(mu, 0.1), x0, cfg)
    assert torch.equal(x1, x2)
    assert all(b > a for a, b in zip(s1.history, s1.history[1:]))
    torch.testing.assert_close(x1[0], mu * (1 - 0.9**5))


def _descriptor(seed=0, size=8, channels=1):
    torch.manual_seed(seed)
    return MultipurposeDescriptor(channels, size, nbits=16, n_classes=10, latent_dim=8)


@pytest.mark.parametrize("form,kw", [("sgld", dict(step_size=1.0, noise_std=0.0, noise=False)),
                                     ("coopnets", dict(delta=0.3, s=1.0, noise=False))])
def test_revision_raises_the_log_density_it_is_asked_to_raise(form, kw):
    # (CoopNets revises on f − ‖x‖²/(2s²), the log-density of p ∝ exp(f)·N(0, s²I): measure that one)
    desc = _descriptor()
    torch.manual_seed(5)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    y = torch.eye(10)[torch.randint(0, 10, (16,))]
    fn = lambda v: desc.energy(v, y)  # noqa: E731
    ref = (lambda v: -v.flatten(1).pow(2).sum(1) / 2) if form == "coopnets" else (lambda v: 0.0)  # noqa: E731
    with torch.no_grad():
        before = fn(x0) + ref(x0)
    x, stats = langevin_revise(fn, x0, LangevinConfig(steps=10, form=form, **kw), frozen_modules=[desc])
    with torch.no_grad():
        after = fn(x) + ref(x)
    # the target's energy −f falls on average and for most images
    assert after.mean() > before.mean()
    assert (after > before).float().mean() >= 0.9
    assert stats.displacement > 0


def test_sgld_with_noise_still_lowers_the_energy_on_average():
    desc = _descriptor(seed=2)
    torch.manual_seed(3)
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    fn = desc.density
    with torch.no_grad():
        before = fn(x0).mean()
    x, _ = langevin_revise(fn, x0, LangevinConfig(steps=15, step_size=1.0, noise_std=0.01), frozen_modules=[desc])
    with torch.no_grad():
        assert fn(x).mean() > before
    assert float(x.min()) >= -1 and float(x.max()) <= 1  # clamped


def test_gradients_never_leak_into_descriptor_parameters():
    desc = _descriptor()
    flags = {}
    for i, p in enumerate(desc.parameters()):
        p.requires_grad_(i % 3 != 0)  # a mix, to check each flag is restored
        flags[id(p)] = p.requires_grad
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    y = torch.eye(10)[torch.arange(8)]
    x, _ = langevin_revise(lambda v: desc.energy(v, y), x0, LangevinConfig(steps=3), frozen_modules=[desc])
    assert all(p.grad is None for p in desc.parameters())
    assert all(p.requires_grad == flags[id(p)] for p in desc.parameters())
    assert not x.requires_grad and x.grad_fn is None
    assert not x0.requires_grad


def test_frozen_context_restores_flags_after_an_error():
    desc = _descriptor()
    with pytest.raises(RuntimeError):
        with frozen([desc]):
            assert not any(p.requires_grad for p in desc.parameters())
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in desc.parameters())


def test_bad_config_and_bad_energy_shape():
    with pytest.raises(ValueError, match="form"):
        LangevinConfig(form="hmc")
    with pytest.raises(ValueError, match="one value per image"):
        langevin_revise(lambda v: v.sum(), torch.zeros(3, 2), LangevinConfig(steps=1))


def test_non_finite_gradient_is_reported():
    x, stats = langevin_revise(lambda v: (v * float("nan")).sum(1), torch.zeros(3, 2), LangevinConfig(steps=2))
    assert not stats.finite
