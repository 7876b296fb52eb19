"""CoopHash's objective (coophash.losses.coophash) against slow loops written from DESIGN.md §1's equations."""
from __future__ import annotations

import math

import pytest
import torch

from coophash.losses import DPSHLoss, HashOutput
from coophash.losses.coophash import (
    DescriptorWeights,
    GeneratedRows,
    PseudoViews,
    confidence_gate,
    descriptor_objective,
    elbo_terms,
    energy_contrast,
    energy_stabiliser,
    gaussian_kl,
    gaussian_reconstruction,
    known_latent_terms,
    mode_seeking_term,
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


def test_mode_seeking_term_matches_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    x1 = torch.rand(3, 1, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    x2 = torch.rand(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    z1 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    z2 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    ratios = []
    for a, b, u, v in zip(x1.detach().tolist(), x2.tolist(), z1.tolist(), z2.tolist()):
        pa, pb = [p for row in a[0] for p in row], [p for row in b[0] for p in row]
        d_img = sum(abs(p - q) for p, q in zip(pa, pb)) / len(pa)
        d_lat = sum(abs(p - q) for p, q in zip(u, v)) / len(u)
        ratios.append(d_img / d_lat)
    loss, ratio = mode_seeking_term(x1, x2, z1, z2, 0.5, eps=1e-3)
    assert close(loss, 0.5 * mean([1 / (r + 1e-3) for r in ratios])) and close(ratio, mean(ratios))
    assert not ratio.requires_grad
    loss.backward()  # lowering it moves the images of one label apart
    step = x1.detach() - 1e-3 * x1.grad
    assert mode_seeking_term(step, x2, z1, z2, 0.5, eps=1e-3)[0] < loss
    same = mode_seeking_term(x2, x2.clone(), z1, z2, 1.0, eps=1e-3)[0]  # one prototype per label: 1/eps
    assert close(same, 1e3)


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


def ref_contrast(f_gen: list[float], f_real: list[float], form: str) -> float:
    """The density contrast's three forms, from their equations."""
    if form == "linear":
        return mean(f_gen) - mean(f_real)
    if form == "softplus":
        return softplus(mean(f_gen) - mean(f_real))
    assert form == "logistic"
    return mean([softplus(-v) for v in f_real]) + mean([softplus(v) for v in f_gen])


def ref_descriptor(out, y_lab, y_gen, w: DescriptorWeights, r: float, multi: bool, loss, n_dens: int = N_REAL,
                   gate_conf: list[float] | None = None) -> dict[str, float]:
    """Every term of L_D by hand (the base loss itself has its own reference test in test_losses.py).

    Rows after ``N_REAL + N_GEN`` are chains (density negatives only); the first ``n_dens`` real rows enter the
    density; ``gate_conf`` replaces the head's confidences in the gate."""
    U, L, F = rows(out.u), rows(out.logits), out.f.detach().tolist()
    Y, YG = rows(y_lab), rows(y_gen)
    every = torch.ones(N_LAB, dtype=torch.bool)
    terms = {"hash": w.hash * float(loss(HashOutput(None, out.pre[:N_LAB], out.u[:N_LAB]), y_lab, every).total.detach())}
    terms["cls"] = w.cls * ref_class(L[:N_LAB], Y, multi)
    terms["quant"] = w.quant * mean([(x - (1.0 if x >= 0 else -1.0)) ** 2 for row in U[:N_LAB] for x in row])
    f_real, f_gen = F[:n_dens], F[N_REAL:]
    terms["ebm"] = r * w.ebm * ref_contrast(f_gen, f_real, w.contrast)
    terms["stabiliser"] = r * w.ebm * w.gamma * (mean([v * v for v in f_gen]) + mean([v * v for v in f_real]))
    conf = [math.exp(ref_log_p(L[N_REAL + i], YG[i], multi)) for i in range(N_GEN)]
    gc = conf if gate_conf is None else gate_conf
    gate = [1.0 if gc[i] >= w.gate_confidence and gc[N_PAIRS + i] >= w.gate_confidence else 0.0
            for i in range(N_PAIRS)]
    G = U[N_REAL : N_REAL + N_GEN]
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
             "diag_gen_cls_acc": mean([float(h) for h in hit]), "diag_gen_conf": mean(conf),
             "diag_gate_pass": mean(gate), "diag_ramp": r}
    return {**terms, **diags}


def gate_threshold(out, y_gen, multi: bool) -> float:
    """A confidence threshold that keeps exactly the pair whose weaker member is more confident: midway between the
    two pairs' weaker confidences, so a last-bit difference between this float64 reference and the loss's own
    arithmetic (which varies with the CPU's vector kernels) cannot move a pair across it."""
    L, YG = rows(out.logits), rows(y_gen)
    conf = [math.exp(ref_log_p(L[N_REAL + i], YG[i], multi)) for i in range(2 * N_PAIRS)]
    weaker = [min(conf[i], conf[N_PAIRS + i]) for i in range(N_PAIRS)]
    assert abs(weaker[0] - weaker[1]) > 1e-6
    return (weaker[0] + weaker[1]) / 2


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
        if name in ("diag_gen_cls_acc", "diag_gate_pass", "diag_ramp"):  # float32 values, as logged
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


# -- JEM's tied density, the contrast forms, chains, an outside gate, pseudo-labels ----------------------------


def test_tied_density_matches_its_definition_by_enumeration() -> None:
    import itertools

    from coophash.nets.descriptor import tied_density

    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(4, C, generator=gen, dtype=torch.float64) * 3
    for row, got in zip(logits.tolist(), tied_density(logits, multi_label=False).tolist()):
        assert math.isclose(got, math.log(sum(math.exp(v) for v in row)), rel_tol=1e-12)
    # multi-label: log of the sum over every label subset y ∈ {0,1}^C of exp Σ_k y_k l_k
    for row, got in zip(logits.tolist(), tied_density(logits, multi_label=True).tolist()):
        total = sum(math.exp(sum(b * v for b, v in zip(bits, row))) for bits in itertools.product([0, 1], repeat=C))
        assert math.isclose(got, math.log(total), rel_tol=1e-12)


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_label_energy_is_density_plus_log_posterior(multi: bool) -> None:
    from coophash.nets.descriptor import label_energy, tied_density

    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(6, C, generator=gen, dtype=torch.float64) * 2
    y = labels(6, multi, gen)
    if not multi:
        y[5] = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)  # a multi-hot row: mean of its labels' logits
    got = label_energy(logits, y, multi).tolist()
    f = tied_density(logits, multi).tolist()
    for i, (lg, t) in enumerate(zip(logits.tolist(), y.tolist())):
        assert math.isclose(got[i], f[i] + ref_log_p(lg, t, multi), rel_tol=1e-9, abs_tol=1e-12)
        direct = sum(v * ti for v, ti in zip(lg, t)) / (1.0 if multi else sum(t))  # l_y, or Σ_k y_k l_k
        assert math.isclose(got[i], direct, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("form", ["linear", "softplus", "logistic"])
def test_energy_contrast_forms_match_loop(form: str) -> None:
    gen = torch.Generator().manual_seed(2)
    f_gen = torch.randn(5, generator=gen, dtype=torch.float64) * 3
    f_real = torch.randn(9, generator=gen, dtype=torch.float64) * 3 + 1
    assert close(energy_contrast(f_gen, f_real, 0.7, form), 0.7 * ref_contrast(f_gen.tolist(), f_real.tolist(), form))
    # every form lowers when real images score higher
    assert float(energy_contrast(f_gen, f_real + 1, 1.0, form)) < float(energy_contrast(f_gen, f_real, 1.0, form))
    with pytest.raises(ValueError, match="form"):
        energy_contrast(f_gen, f_real, 1.0, "hinge")


def with_chains(out: DescriptorOutput, n_extra: int, seed: int = 5) -> DescriptorOutput:
    """``out`` with ``n_extra`` more rows (buffer chains) at the end."""
    gen = torch.Generator().manual_seed(seed)

    def more(t: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.cat([t, torch.randn(n_extra, *t.shape[1:], generator=gen, dtype=t.dtype) * scale])

    pre = more(out.pre.detach(), 1.5)
    return DescriptorOutput(features=more(out.features, 1.0), pre=pre, u=torch.tanh(pre), logits=more(out.logits.detach(), 2),
                            f=more(out.f.detach(), 2))


@pytest.mark.parametrize("contrast", ["linear", "softplus", "logistic"])
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_objective_with_chains_labeled_density_and_an_outside_gate(multi: bool, contrast: str) -> None:
    out, y_lab, y_gen = tiny_batch(multi, seed=2)
    out = with_chains(out, 3)
    loss = DPSHLoss(K, C, multi_label=multi)
    gate_conf = [0.9, 0.2, 0.8, 0.95, 0.1, 0.1]  # pair 0 passes (0.9, 0.8), pair 1 fails (0.2); 2nd positives ignored
    w = DescriptorWeights(hash=0.7, cls=1.3, quant=0.05, ebm=0.9, gamma=0.02, triplet=1.1, triplet_margin=2.0,
                          gen_hash=0.4, gate_confidence=0.5, contrast=contrast)
    rows_ = GeneratedRows(N_REAL, N_PAIRS, y_gen, extra=3, density_real=N_LAB,
                          gate_conf=torch.tensor(gate_conf, dtype=torch.float64))
    res = descriptor_objective(out, y_lab, torch.ones(N_LAB, dtype=torch.bool), loss, w, multi, rows_, ramp=0.6)
    want = ref_descriptor(out, y_lab, y_gen, w, 0.6, multi, loss, n_dens=N_LAB, gate_conf=gate_conf)
    assert list(res.terms) == list(want) and want["diag_gate_pass"] == 0.5
    for name, value in want.items():
        assert math.isclose(float(res.terms[name]), value, rel_tol=1e-6, abs_tol=1e-9), (name, float(res.terms[name]), value)


def test_objective_with_chains_only() -> None:
    """``coop_chain_init=noise``: no pairs (n = 0), every generated row a density negative, no pair terms."""
    out, y_lab, _ = tiny_batch(False, seed=3)
    loss = DPSHLoss(K, C)
    w = DescriptorWeights(ebm=0.8, gamma=0.05, contrast="logistic", gen_hash=0.5)
    rows_ = GeneratedRows(N_REAL, 0, torch.zeros(0, C, dtype=torch.float64), extra=N_GEN)
    res = descriptor_objective(out, y_lab, torch.ones(N_LAB, dtype=torch.bool), loss, w, False, rows_, ramp=0.5)
    assert list(res.terms) == ["hash", "cls", "quant", "ebm", "stabiliser", "diag_energy_gap", "diag_f_real", "diag_ramp"]
    F = out.f.detach().tolist()
    assert close(res.terms["ebm"], 0.5 * 0.8 * ref_contrast(F[N_REAL:], F[:N_REAL], "logistic"))
    stab = 0.5 * 0.8 * 0.05 * (mean([v * v for v in F[N_REAL:]]) + mean([v * v for v in F[:N_REAL]]))
    assert close(res.terms["stabiliser"], stab)


def strong_views(multi: bool, seed: int) -> DescriptorOutput:
    gen = torch.Generator().manual_seed(seed)
    pre = (torch.randn(N_UNL, K, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    return DescriptorOutput(features=torch.randn(N_UNL, 5, generator=gen, dtype=torch.float64), pre=pre,
                            u=torch.tanh(pre),
                            logits=(torch.randn(N_UNL, C, generator=gen, dtype=torch.float64) * 2).requires_grad_(True),
                            f=torch.zeros(N_UNL, dtype=torch.float64))


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_pseudo_label_terms_match_loop(multi: bool) -> None:
    out, y_lab, _ = tiny_batch(multi, seed=4)
    with torch.no_grad():  # weak views: the first unlabeled row confident, the second not
        out.logits[N_LAB] = torch.tensor([8.0, -8.0, -8.0, 8.0] if multi else [9.0, 0.0, 0.0, 0.0])
        out.logits[N_LAB + 1] = torch.tensor([0.1, -0.2, 0.3, 0.0])
    strong = strong_views(multi, 9)
    loss = DPSHLoss(K, C, multi_label=multi)
    w = DescriptorWeights(hash=0.7, cls=1.3, quant=0.05, pseudo=1.5, pseudo_hash=0.8, pseudo_threshold=0.95)
    labeled = torch.ones(N_LAB, dtype=torch.bool)
    res = descriptor_objective(out, y_lab, labeled, loss, w, multi, pseudo=PseudoViews(N_LAB, N_REAL, strong))
    assert list(res.terms) == ["hash", "cls", "quant", "pseudo", "pseudo_hash", "diag_pseudo_rate"]
    # by hand: targets and confidence of the weak rows, CE of the strong rows averaged over all unlabeled rows
    weak, S = rows(out.logits)[N_LAB:N_REAL], rows(strong.logits)
    targets, conf = [], []
    for lg in weak:
        if multi:
            p = [1 / (1 + math.exp(-v)) for v in lg]
            t = [1.0 if q >= 0.5 else 0.0 for q in p]
            conf.append(min(max(q, 1 - q) for q in p) >= 0.95 and sum(t) > 0)
        else:
            p = [math.exp(v) / sum(math.exp(u) for u in lg) for v in lg]
            t = [1.0 if c == max(range(C), key=lambda k: p[k]) else 0.0 for c in range(C)]
            conf.append(max(p) >= 0.95)
        targets.append(t)
    assert conf == [True, False]
    ce = [ref_class([s], [t], multi) for s, t in zip(S, targets)]
    assert close(res.terms["pseudo"], 1.5 * sum(c * float(k) for c, k in zip(ce, conf)) / N_UNL)
    union = HashOutput(None, torch.cat([out.pre[:N_LAB], strong.pre[:1]]), torch.cat([out.u[:N_LAB], strong.u[:1]]))
    union_y = torch.cat([y_lab, torch.tensor(targets[:1], dtype=y_lab.dtype)])
    want_hash = float(loss(union, union_y, torch.ones(N_LAB + 1, dtype=torch.bool)).total.detach())
    assert close(res.terms["pseudo_hash"], 0.7 * 0.8 * want_hash)
    assert float(res.terms["diag_pseudo_rate"]) == 0.5
    res.total.backward()  # pseudo-labels are targets: no gradient into the weak views' logits
    assert torch.all(out.logits.grad[N_LAB:N_REAL] == 0) and strong.logits.grad[0].abs().sum() > 0
    assert torch.all(strong.logits.grad[1] == 0) and strong.pre.grad[0].abs().sum() > 0
