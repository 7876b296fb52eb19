"""Shared formulas against slow loops from their equations: the (gated) triplet hinge, the quantisation error,
the class loss (softmax CE / sigmoid BCE) and the non-saturating GAN losses."""
from __future__ import annotations

import math

import pytest
import torch

from coophash.losses import (
    class_loss,
    discriminator_loss,
    generator_loss,
    quantisation_error,
    sum_terms,
    triplet_loss,
)

K = 12


def rows(t: torch.Tensor) -> list[list[float]]:
    """A tensor as nested Python floats."""
    return t.detach().double().tolist()


def softplus(x: float) -> float:
    """log(1 + e^x), stable."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def close(got: torch.Tensor, want: float) -> bool:
    """float64 comparison at 1e-9."""
    return torch.allclose(got.detach().double(), torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)


# -- triplet ------------------------------------------------------------------------------------------


def ref_gated_triplet(a, p, n, margin: float, gate: list[float]) -> float:
    """Σ_i g_i max(0, d_H(a_i, p_i) − d_H(a_i, n_i) + m) / max(1, Σ_i g_i), d_H(x, z) = (K − xᵀz)/2."""
    def d(x, z):
        return 0.5 * (len(x) - sum(xi * zi for xi, zi in zip(x, z)))

    num = sum(g * max(d(x, q) - d(x, r) + margin, 0.0) for x, q, r, g in zip(rows(a), rows(p), rows(n), gate))
    return num / max(1.0, sum(gate))


def triplet_batch(seed: int, n: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.tanh(2 * torch.randn(n, K, generator=gen, dtype=torch.float64)).requires_grad_(True)
            for _ in range(3)]


def test_gated_triplet_matches_loop() -> None:
    a, p, n = triplet_batch(0)
    for gate in ([1, 0, 1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0], [1] * 8):
        g = torch.tensor(gate, dtype=torch.float64)
        assert close(triplet_loss(a, p, n, 2.0, gate=g), ref_gated_triplet(a, p, n, 2.0, gate))


def test_all_ones_gate_equals_plain_triplet_bit_for_bit() -> None:
    a, p, n = triplet_batch(1)
    for dtype in (torch.float64, torch.float32):
        a_, p_, n_ = (t.detach().to(dtype) for t in (a, p, n))
        plain = triplet_loss(a_, p_, n_, 3.0)
        gated = triplet_loss(a_, p_, n_, 3.0, gate=torch.ones(8, dtype=dtype))
        assert torch.equal(plain, gated)


def test_gate_all_zero_gives_zero_and_gated_out_rows_get_no_gradient() -> None:
    a, p, n = triplet_batch(2)
    gate = torch.tensor([0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    assert float(triplet_loss(a, p, n, 100.0, gate=torch.zeros(8, dtype=torch.float64)).detach()) == 0.0
    triplet_loss(a, p, n, 100.0, gate=gate).backward()
    assert torch.all(a.grad[gate == 0] == 0) and torch.any(a.grad[1] != 0)
    with pytest.raises(ValueError, match="gate"):
        triplet_loss(a, p, n, 1.0, gate=torch.ones(3))


# -- quantisation and sum of terms ----------------------------------------------------------------------


def test_quantisation_error_matches_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    u = torch.tanh(torch.randn(5, K, generator=gen, dtype=torch.float64))
    u[0, 0] = 0.0  # b(0) = +1
    U = rows(u)
    ref = sum((x - (1.0 if x >= 0 else -1.0)) ** 2 for row in U for x in row) / (5 * K)
    assert close(quantisation_error(u), ref)
    assert float(quantisation_error(torch.zeros(1, 2))) == 1.0


def test_sum_terms_skips_diagnostics() -> None:
    terms = {"a": torch.tensor(1.5), "diag_x": torch.tensor(100.0), "b": torch.tensor(-0.5)}
    assert float(sum_terms(terms)) == 1.0


# -- class loss --------------------------------------------------------------------------------------------


def ref_class_loss(logits: torch.Tensor, y: torch.Tensor, multi: bool, labeled: list[bool] | None = None) -> float:
    """mean over (labeled) rows of −log softmax[argmax y] or mean over rows and classes of BCE(σ(l), y)."""
    L, Y = rows(logits), rows(y)
    keep = [i for i in range(len(L)) if labeled is None or labeled[i]]
    total = 0.0
    for i in keep:
        if multi:
            total += sum(softplus(lg) - t * lg for lg, t in zip(L[i], Y[i])) / len(L[i])
        else:
            target = max(range(len(Y[i])), key=lambda c: Y[i][c])
            mx = max(L[i])
            total += -(L[i][target] - mx - math.log(sum(math.exp(lg - mx) for lg in L[i])))
    return total / len(keep)


@pytest.mark.parametrize("multi", [False, True])
def test_class_loss_matches_loop(multi: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(7, 5, generator=gen, dtype=torch.float64)
    if multi:
        y = (torch.rand(7, 5, generator=gen) < 0.4).double()
    else:
        y = torch.nn.functional.one_hot(torch.randint(0, 5, (7,), generator=gen), 5).double()
    assert close(class_loss(logits, y, multi), ref_class_loss(logits, y, multi))
    labeled = [True, False, True, True, False, True, False]
    got = class_loss(logits, y, multi, labeled=torch.tensor(labeled))
    assert close(got, ref_class_loss(logits, y, multi, labeled))


def test_class_loss_without_labeled_rows_is_a_connected_zero() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    out = class_loss(logits, torch.eye(4)[:3], False, labeled=torch.zeros(3, dtype=torch.bool))
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="one shape"):
        class_loss(logits, torch.eye(3), False)


def test_class_loss_casts_multi_label_targets() -> None:
    logits = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
    assert close(class_loss(logits, y, True), ref_class_loss(logits, y.double(), True))


# -- GAN losses ------------------------------------------------------------------------------------------


def test_gan_losses_match_loop() -> None:
    gen = torch.Generator().manual_seed(5)
    d_real = 3 * torch.randn(9, generator=gen, dtype=torch.float64)
    d_fake = 3 * torch.randn(6, generator=gen, dtype=torch.float64)

    def log_sigmoid(x: float) -> float:
        return -softplus(-x)

    real = sum(-log_sigmoid(v) for v in d_real.tolist()) / 9  # −log D(x)
    fake = sum(-math.log1p(-1 / (1 + math.exp(-v))) for v in d_fake.tolist()) / 6  # −log(1 − D(G(z)))
    d = discriminator_loss(d_real, d_fake)
    assert set(d.terms) == {"real", "fake"}
    assert close(d.terms["real"], real) and close(d.terms["fake"], fake) and close(d.total, real + fake)
    g = generator_loss(d_fake)
    assert set(g.terms) == {"nonsaturating"}
    assert close(g.total, sum(-log_sigmoid(v) for v in d_fake.tolist()) / 6)
    assert g.total is g.terms["nonsaturating"]
