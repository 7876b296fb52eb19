"""CoopHash's objective (coophash.losses.coophash) against slow loops written from DESIGN.md §1's equations."""
from __future__ import annotations

import math

import pytest
import torch

from coophash.losses import DPSHLoss, HashOutput
from coophash.losses.coophash import (
    DescriptorWeights,
    GeneratedRows,
    confidence_gate,
    descriptor_objective,
    elbo_terms,
    energy_contrast,
    energy_stabiliser,
    gaussian_kl,
    gaussian_reconstruction,
    known_latent_terms,
)
from coophash.nets.descriptor import DescriptorOutput

K, C = 8, 4


def rows(t: torch.Tensor) -> list[list[float]]:
    return t.detach().double().tolist()


def close(got: torch.Tensor, want: float) -> bool:
    return torch.allclose(got.detach().double(), torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# -- single formulas ---------------------------------------------------------------------------------------


def test_energy_contrast_and_stabiliser_match_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    f_gen = torch.randn(5, generator=gen, dtype=torch.float64) * 3
    f_real = torch.randn(9, generator=gen, dtype=torch.float64) * 3
    G, R = f_gen.tolist(), f_real.tolist()
    assert close(energy_contrast(f_gen, f_real, 0.7), 0.7 * (mean(G) - mean(R)))
    assert close(energy_stabiliser(f_gen, f_real, 0.02), 0.02 * (mean([v * v for v in G]) + mean([v * v for v in R])))


def test_gaussian_reconstruction_and_kl_match_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1
    x_rec = torch.rand(4, 1, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1
    sigma = 0.3
    per_image = [sum((a - b) ** 2 for a, b in zip(xi.flatten().tolist(), ri.flatten().tolist())) for xi, ri in zip(x, x_rec)]
    rec, mse = gaussian_reconstruction(x, x_rec, sigma)
    assert close(rec, mean(per_image) / (2 * sigma**2))
    assert close(mse, sum(per_image) / x.numel()) and not mse.requires_grad
    mu = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    log_sigma = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.5
    kl_rows = [0.5 * sum(m * m + math.exp(2 * ls) - 1 - 2 * ls for m, ls in zip(mr, lr))
               for mr, lr in zip(mu.tolist(), log_sigma.tolist())]
    assert close(gaussian_kl(mu, log_sigma), mean(kl_rows))
    # against torch.distributions' closed form
    q = torch.distributions.Normal(mu, log_sigma.exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, log_sigma), torch.distributions.kl_divergence(q, p).sum(1).mean())
    terms = elbo_terms(x, x_rec, mu, log_sigma, sigma, beta=2.0, prefix="real_")
    assert list(terms) == ["real_rec", "real_kl", "diag_real_mse"]
    assert close(terms["real_rec"], mean(per_image) / (2 * sigma**2)) and close(terms["real_kl"], 2.0 * mean(kl_rows))
    known = known_latent_terms(x, x_rec, sigma)
    assert list(known) == ["rec_known", "diag_known_mse"] and close(known["rec_known"], mean(per_image) / (2 * sigma**2))


def test_reconstruction_sends_no_gradient_into_the_target() -> None:
    x = torch.zeros(2, 3, requires_grad=True)
    x_rec = torch.ones(2, 3, requires_grad=True)
    gaussian_reconstruction(x, x_rec, 1.0)[0].backward()
    assert x.grad is None and x_rec.grad is not None


def test_confidence_gate() -> None:
    conf = torch.tensor([0.9, 0.2, 0.5, 0.8, 0.9, 0.1, 0.99])  # x̃⁺ of 3 pairs, x̃⁻ of 3 pairs, a second positive
    assert confidence_gate(conf, 3, 0.5).tolist() == [1.0, 0.0, 0.0]
    assert confidence_gate(conf, 3, 0.0).tolist() == [1.0, 1.0, 1.0]


# -- the assembled descriptor objective --------------------------------------------------------------------

N_LAB, N_UNL, N_PAIRS = 5, 2, 2
N_REAL = N_LAB + N_UNL
N_GEN = 3 * N_PAIRS  # x̃⁺, x̃⁻, second positive


def labels(n: int, multi: bool, gen: torch.Generator) -> torch.Tensor:
    if not multi:
        return torch.nn.functional.one_hot(torch.randint(0, C, (n,), generator=gen), C).double()
    y = (torch.rand(n, C, generator=gen) < 0.3).double()
    y[torch.arange(n), torch.randint(0, C, (n,), generator=gen)] = 1.0
    return y


def tiny_batch(multi: bool, seed: int = 0):
    """A DescriptorOutput over [labeled real; unlabeled real; revised] rows, labels and conditioning labels."""
    gen = torch.Generator().manual_seed(seed)
    n = N_REAL + N_GEN
    pre = (torch.randn(n, K, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    out = DescriptorOutput(
        features=torch.randn(n, 5, generator=gen, dtype=torch.float64),
        pre=pre,
        u=torch.tanh(pre),
        logits=(torch.randn(n, C, generator=gen, dtype=torch.float64) * 2).requires_grad_(True),
        f=(torch.randn(n, generator=gen, dtype=torch.float64) * 2).requires_grad_(True),
    )
    y_lab = labels(N_LAB, multi, gen)
    y_neg = 1.0 - y_lab[:N_PAIRS] if multi else torch.roll(y_lab[:N_PAIRS], 1, dims=1)
    y_gen = torch.cat([y_lab[:N_PAIRS], y_neg, y_lab[:N_PAIRS]])
    return out, y_lab, y_gen


def ref_log_p(logits: list[float], y: list[float], multi: bool) -> float:
    """log p(y|x): Σ_c log Bernoulli(y_c; σ(l_c)) (multi-label) or mean over y's labels of log softmax."""
    if multi:
        return sum(-(softplus(lg) - t * lg) for lg, t in zip(logits, y))
    lse = math.log(sum(math.exp(v) for v in logits))
    picked = [lg - lse for lg, t in zip(logits, y) if t > 0]
    return sum(picked) / len(picked)


def ref_class(logits: list[list[float]], y: list[list[float]], multi: bool) -> float:
    total = 0.0
    for lg, t in zip(logits, y):
        if multi:
            total += sum(softplus(v) - ti * v for v, ti in zip(lg, t)) / len(lg)
        else:
            total += -ref_log_p(lg, t, False)
    return total / len(logits)


def ref_triplet(a: list[list[float]], p: list[list[float]], n: list[list[float]], m: float, g: list[float]) -> float:
    def d(x, z):
        return 0.5 * (len(x) - sum(xi * zi for xi, zi in zip(x, z)))

    return sum(gi * max(d(x, q) - d(x, r) + m, 0.0) for x, q, r, gi in zip(a, p, n, g)) / max(1.0, sum(g))


def ref_descriptor(out, y_lab, y_gen, w: DescriptorWeights, r: float, multi: bool, loss) -> dict[str, float]:
    """Every term of L_D by hand (the base loss itself has its own reference test in test_losses.py)."""
    U, L, F = rows(out.u), rows(out.logits), out.f.detach().tolist()
    Y, YG = rows(y_lab), rows(y_gen)
    every = torch.ones(N_LAB, dtype=torch.bool)
    terms = {"hash": w.hash * float(loss(HashOutput(None, out.pre[:N_LAB], out.u[:N_LAB]), y_lab, every).total.detach())}
    terms["cls"] = w.cls * ref_class(L[:N_LAB], Y, multi)
    terms["quant"] = w.quant * mean([(x - (1.0 if x >= 0 else -1.0)) ** 2 for row in U[:N_LAB] for x in row])
    f_real, f_gen = F[:N_REAL], F[N_REAL:]
    terms["ebm"] = r * w.ebm * (mean(f_gen) - mean(f_real))
    terms["stabiliser"] = r * w.ebm * w.gamma * (mean([v * v for v in f_gen]) + mean([v * v for v in f_real]))
    conf = [math.exp(ref_log_p(L[N_REAL + i], YG[i], multi)) for i in range(N_GEN)]
    gate = [1.0 if conf[i] >= w.gate_confidence and conf[N_PAIRS + i] >= w.gate_confidence else 0.0
            for i in range(N_PAIRS)]
    G = U[N_REAL:]
    anchors, pos, neg, pos2 = U[:N_PAIRS], G[:N_PAIRS], G[N_PAIRS : 2 * N_PAIRS], G[2 * N_PAIRS :]
    trip = ref_triplet(anchors, pos, neg, w.triplet_margin, gate) + ref_triplet(anchors, pos2, neg, w.triplet_margin, gate)
    terms["triplet"] = w.hash * r * w.triplet * trip
    keep_gen = [i for i in range(N_GEN) if gate[i % N_PAIRS] > 0]
    sel = list(range(N_LAB)) + [N_REAL + i for i in keep_gen]
    aug = HashOutput(None, out.pre[sel], out.u[sel])
    aug_y = torch.cat([y_lab, y_gen[keep_gen]])
    terms["gen_hash"] = w.hash * r * w.gen_hash * float(loss(aug, aug_y, torch.ones(len(sel), dtype=torch.bool)).total.detach())
    if multi:
        hit = [all((v > 0) == (t > 0) for v, t in zip(L[N_REAL + i], YG[i])) for i in range(N_GEN)]
    else:
        hit = [max(range(C), key=lambda c: L[N_REAL + i][c]) == YG[i].index(1.0) for i in range(N_GEN)]
    diags = {"diag_energy_gap": mean(f_real) - mean(f_gen), "diag_f_real": mean(f_real),
             "diag_gen_cls_acc": mean([float(h) for h in hit]), "diag_gen_conf": mean(conf), "diag_ramp": r}
    return {**terms, **diags}


def gate_threshold(out, y_gen, multi: bool) -> float:
    """A confidence threshold that keeps exactly the pair whose weaker member is more confident."""
    L, YG = rows(out.logits), rows(y_gen)
    conf = [math.exp(ref_log_p(L[N_REAL + i], YG[i], multi)) for i in range(2 * N_PAIRS)]
    weaker = [min(conf[i], conf[N_PAIRS + i]) for i in range(N_PAIRS)]
    assert weaker[0] != weaker[1]
    return max(weaker)


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_descriptor_objective_equals_its_terms_by_hand(multi: bool) -> None:
    out, y_lab, y_gen = tiny_batch(multi)
    loss = DPSHLoss(K, C, multi_label=multi)
    w = DescriptorWeights(hash=0.7, cls=1.3, quant=0.05, ebm=0.9, gamma=0.02, triplet=1.1, triplet_margin=2.0,
                          gen_hash=0.4, gate_confidence=gate_threshold(out, y_gen, multi))
    labeled = torch.ones(N_LAB, dtype=torch.bool)
    res = descriptor_objective(out, y_lab, labeled, loss, w, multi, GeneratedRows(N_REAL, N_PAIRS, y_gen), ramp=0.6)
    want = ref_descriptor(out, y_lab, y_gen, w, 0.6, multi, loss)
    assert list(res.terms) == list(want)  # logged names, in order
    for name, value in want.items():
        if name in ("diag_gen_cls_acc", "diag_ramp"):  # float32 values, as logged
            assert math.isclose(float(res.terms[name]), value, rel_tol=1e-6), (float(res.terms[name]), value)
        else:
            assert close(res.terms[name], value), (name, float(res.terms[name]), value)
    assert close(res.total, sum(v for k, v in want.items() if not k.startswith("diag_")))
    res.total.backward()  # the revised rows' own hash outputs get gradients from the triplet
    assert out.pre.grad[N_REAL:].abs().sum() > 0 and torch.all(out.pre.grad[N_LAB:N_REAL] == 0)


def test_descriptor_objective_before_cooperation_and_switched_off_terms() -> None:
    out, y_lab, y_gen = tiny_batch(False, seed=1)
    loss = DPSHLoss(K, C)
    labeled = torch.ones(N_LAB, dtype=torch.bool)
    w = DescriptorWeights(hash=0.5, cls=2.0, quant=0.1, triplet=0.0, gen_hash=0.0)
    sup = descriptor_objective(out, y_lab, labeled, loss, w, False)
    want = ref_descriptor(out, y_lab, y_gen, w, 0.0, False, loss)
    assert list(sup.terms) == ["hash", "cls", "quant"]
    for name in sup.terms:
        assert close(sup.terms[name], want[name])
    assert close(sup.total, want["hash"] + want["cls"] + want["quant"])
    coop = descriptor_objective(out, y_lab, labeled, loss, w, False, GeneratedRows(N_REAL, N_PAIRS, y_gen), ramp=1.0)
    assert "triplet" not in coop.terms and "gen_hash" not in coop.terms and "ebm" in coop.terms
