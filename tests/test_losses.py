"""Tests of the supervised hashing losses against slow loop references written from each paper's formula."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from coophash.losses import (
    LOSSES,
    CSQLoss,
    DPSHLoss,
    DSHLoss,
    GreedyHashLoss,
    HashLoss,
    HashNetLoss,
    HashOutput,
    LossOutput,
    OrthoHashLoss,
    create_loss,
    hadamard,
    list_losses,
    pairwise_similarity,
    straight_through_sign,
    triplet_loss,
)

K = 12  # not a power of two: centres / codes come from the seeded Bernoulli construction
C = 5
N = 9


# ----------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------


def make_labels(n: int, c: int, multi_label: bool, gen: torch.Generator) -> torch.Tensor:
    """Random one-hot (single-label) or multi-hot with at least one positive (multi-label) float64 labels."""
    if not multi_label:
        return torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=gen), c).double()
    y = (torch.rand(n, c, generator=gen) < 0.3).double()
    y[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = 1.0
    return y


def make_batch(
    n: int = N, k: int = K, c: int = C, multi_label: bool = False, seed: int = 0
) -> tuple[torch.Tensor, HashOutput, torch.Tensor]:
    """(pre leaf, HashOutput with u = tanh(pre), labels) in float64."""
    gen = torch.Generator().manual_seed(seed)
    pre = (torch.randn(n, k, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    u = torch.tanh(pre)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64)
    feats = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    return pre, HashOutput(features=feats, pre=pre, u=u, logits=logits), make_labels(n, c, multi_label, gen)


def rows(t: torch.Tensor) -> list[list[float]]:
    """A tensor as nested Python floats (the references below use only these)."""
    return t.detach().double().tolist()


# ----------------------------------------------------------------------------------------------------
# Slow references, straight from the formulas, with explicit loops over pairs / items / bits
# ----------------------------------------------------------------------------------------------------


def ref_similar(ya: list[float], yb: list[float]) -> float:
    """1.0 when the two multi-hot rows share a label."""
    return 1.0 if any(a > 0 and b > 0 for a, b in zip(ya, yb)) else 0.0


def ref_pairs(n: int) -> list[tuple[int, int]]:
    """Pairs i < j."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def softplus(x: float) -> float:
    """log(1 + e^x), stable."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_dsh(u: torch.Tensor, y: torch.Tensor, margin: float, alpha: float) -> dict[str, float]:
    """DSH: ½ s d + ½ (1 − s) max(m − d, 0) and α (‖|u_i| − 1‖₁ + ‖|u_j| − 1‖₁), averaged over pairs."""
    U, Y = rows(u), rows(y)
    con, reg = 0.0, 0.0
    pairs = ref_pairs(len(U))
    for i, j in pairs:
        s = ref_similar(Y[i], Y[j])
        d = sum((U[i][k] - U[j][k]) ** 2 for k in range(len(U[i])))
        con += 0.5 * s * d + 0.5 * (1 - s) * max(margin - d, 0.0)
        reg += alpha * (sum(abs(abs(x) - 1) for x in U[i]) + sum(abs(abs(x) - 1) for x in U[j]))
    return {"contrastive": con / len(pairs), "binary": reg / len(pairs)}


def ref_dpsh(u: torch.Tensor, y: torch.Tensor, eta: float) -> dict[str, float]:
    """DPSH: −mean_pairs (s θ − log(1 + e^θ)), θ = ½ uᵢᵀuⱼ; η mean_i Σ_k (b − u)², b = ±1 with 0 ↦ +1."""
    U, Y = rows(u), rows(y)
    pairs = ref_pairs(len(U))
    lik = 0.0
    for i, j in pairs:
        s = ref_similar(Y[i], Y[j])
        theta = 0.5 * sum(U[i][k] * U[j][k] for k in range(len(U[i])))
        lik += -(s * theta - softplus(theta))
    quant = 0.0
    for row in U:
        quant += sum(((1.0 if x >= 0 else -1.0) - x) ** 2 for x in row)
    return {"likelihood": lik / len(pairs), "quant": eta * quant / len(U)}


def ref_hashnet(pre: torch.Tensor, y: torch.Tensor, beta: float, alpha: float) -> dict[str, float]:
    """HashNet: Σ_pairs w (log(1 + e^{α⟨h_i,h_j⟩}) − α s ⟨h_i,h_j⟩) / |S|, h = tanh(β z), w = |S|/|S_s|."""
    Z, Y = rows(pre), rows(y)
    H = [[math.tanh(beta * z) for z in row] for row in Z]
    pairs = ref_pairs(len(H))
    sims = {p: ref_similar(Y[p[0]], Y[p[1]]) for p in pairs}
    n_sim = sum(sims.values())
    n_dis = len(pairs) - n_sim
    total = 0.0
    for (i, j), s in sims.items():
        ip = alpha * sum(H[i][k] * H[j][k] for k in range(len(H[i])))
        w = len(pairs) / n_sim if s > 0 else len(pairs) / n_dis
        total += w * (softplus(ip) - s * ip)
    return {"pairwise": total / len(pairs)}


def ref_csq(u: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, tie: torch.Tensor, lam: float) -> dict[str, float]:
    """CSQ: mean BCE((u+1)/2, (c+1)/2) with c = sign(Σ label centres) (ties → tie vector); λ mean (|u| − 1)²."""
    U, Y, Cn, T = rows(u), rows(y), rows(centres), tie.tolist()
    bce, quant, count = 0.0, 0.0, 0
    for n, row in enumerate(U):
        for k, x in enumerate(row):
            tot = sum(Cn[c][k] for c in range(len(Cn)) if Y[n][c] > 0)
            target = 1.0 if tot > 0 else (-1.0 if tot < 0 else T[k])
            p, t = (x + 1) / 2, (target + 1) / 2
            bce += -(t * math.log(p) + (1 - t) * math.log(1 - p))
            quant += (abs(x) - 1) ** 2
            count += 1
    return {"centre": bce / count, "quant": lam * quant / count}


def ref_greedyhash(
    pre: torch.Tensor, y: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, alpha: float, multi: bool
) -> dict[str, float]:
    """GreedyHash: CE (or BCE) of W sign(h) + c against y; α mean | |h| − 1 |³."""
    Z, Y, W, B = rows(pre), rows(y), rows(w), bias.tolist()
    cls, pen = 0.0, 0.0
    for n, row in enumerate(Z):
        b = [1.0 if z >= 0 else -1.0 for z in row]
        logits = [sum(W[c][k] * b[k] for k in range(len(b))) + B[c] for c in range(len(W))]
        if multi:
            for c, lg in enumerate(logits):
                cls += (softplus(lg) - Y[n][c] * lg) / len(W)
        else:
            target = Y[n].index(1.0)
            mx = max(logits)
            cls += -(logits[target] - mx - math.log(sum(math.exp(lg - mx) for lg in logits)))
        pen += sum(abs(abs(z) - 1) ** 3 for z in row) / len(row)
    return {"cls": cls / len(Z), "penalty": alpha * pen / len(Z)}


def ref_cos(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two lists."""
    dot = sum(x * z for x, z in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(z * z for z in b)))


def ref_orthohash(
    u: torch.Tensor, y: torch.Tensor, codes: torch.Tensor, s: float, m: float, q: float, multi: bool
) -> dict[str, float]:
    """OrthoHash: CE over s (cos(u, c_j) − m 1[j = y]) (BCE with margin on positives if multi); q mean (1 − cos(u, b))."""
    U, Y, Cd = rows(u), rows(y), rows(codes)
    cls, quant = 0.0, 0.0
    for n, row in enumerate(U):
        logits = [s * (ref_cos(row, Cd[j]) - m * Y[n][j]) for j in range(len(Cd))]
        if multi:
            for j, lg in enumerate(logits):
                cls += (softplus(lg) - Y[n][j] * lg) / len(Cd)
        else:
            target = Y[n].index(1.0)
            cls += -logits[target] + math.log(sum(math.exp(lg) for lg in logits))
        b = [1.0 if x >= 0 else -1.0 for x in row]
        quant += 1 - ref_cos(row, b)
    return {"cls": cls / len(U), "quant": q * quant / len(U)}


def ref_regularisers(u: torch.Tensor, quant_weight: float, balance_weight: float) -> dict[str, float]:
    """quant: w mean (u − (2·1[u≥0] − 1))²; balance: w mean_k (mean_n u_nk)²."""
    U = rows(u)
    n, k = len(U), len(U[0])
    quant = sum((x - (1.0 if x >= 0 else -1.0)) ** 2 for row in U for x in row) / (n * k)
    balance = sum((sum(U[i][b] for i in range(n)) / n) ** 2 for b in range(k)) / k
    return {"quant_reg": quant_weight * quant, "balance_reg": balance_weight * balance}


def assert_matches(result: LossOutput, expected: dict[str, float]) -> None:
    """Every expected term equals the loss's term and the total is their sum."""
    for name, value in expected.items():
        assert name in result.terms, f"missing term {name}"
        got = result.terms[name].detach().double()
        assert torch.allclose(got, torch.tensor(value, dtype=torch.float64), rtol=1e-9, atol=1e-10), (
            name,
            float(got),
            value,
        )
    assert set(result.terms) == set(expected)
    assert math.isclose(result.total.item(), sum(expected.values()), rel_tol=1e-9, abs_tol=1e-10)


# ----------------------------------------------------------------------------------------------------
# Each loss against its reference
# ----------------------------------------------------------------------------------------------------

MULTI = pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])


@MULTI
def test_dsh_matches_reference(multi: bool) -> None:
    for seed in range(3):
        _, out, y = make_batch(multi_label=multi, seed=seed)
        loss = DSHLoss(K, C, multi_label=multi)
        assert_matches(loss(out, y), ref_dsh(out.u, y, margin=2 * K, alpha=0.01))
        loss = DSHLoss(K, C, multi_label=multi, margin=3.0, alpha=0.5)
        assert_matches(loss(out, y), ref_dsh(out.u, y, margin=3.0, alpha=0.5))


@MULTI
def test_dpsh_matches_reference(multi: bool) -> None:
    for seed in range(3):
        _, out, y = make_batch(multi_label=multi, seed=seed)
        assert_matches(DPSHLoss(K, C, multi_label=multi)(out, y), ref_dpsh(out.u, y, eta=0.1))
        assert_matches(DPSHLoss(K, C, multi_label=multi, eta=2.0)(out, y), ref_dpsh(out.u, y, eta=2.0))


@MULTI
def test_hashnet_matches_reference(multi: bool) -> None:
    for seed in range(3):
        pre, out, y = make_batch(multi_label=multi, seed=seed)
        loss = HashNetLoss(K, C, multi_label=multi)
        assert_matches(loss(out, y), ref_hashnet(pre, y, beta=1.0, alpha=10.0 / K))
        for _ in range(7):
            loss.on_step()
        beta = (1 + 0.005 * 7) ** 0.5
        assert_matches(loss(out, y), ref_hashnet(pre, y, beta=beta, alpha=10.0 / K))
        loss = HashNetLoss(K, C, multi_label=multi, alpha=0.3, init_beta=2.0)
        assert_matches(loss(out, y), ref_hashnet(pre, y, beta=2.0, alpha=0.3))


def test_hashnet_uses_pre_not_u() -> None:
    pre, out, y = make_batch(seed=4)
    loss = HashNetLoss(K, C)
    other = HashOutput(features=out.features, pre=pre, u=torch.zeros_like(out.u), logits=None)
    assert torch.equal(loss(out, y).total, loss(other, y).total)


def test_hashnet_only_dissimilar_pairs() -> None:
    pre, out, _ = make_batch(n=4, c=4, seed=5)
    y = torch.eye(4, dtype=torch.float64)  # every pair dissimilar: S1 empty, weights 1
    assert_matches(HashNetLoss(K, 4)(out, y), ref_hashnet(pre, y, beta=1.0, alpha=10.0 / K))


@MULTI
def test_csq_matches_reference(multi: bool) -> None:
    for seed in range(3):
        _, out, y = make_batch(multi_label=multi, seed=seed)
        loss = CSQLoss(K, C, multi_label=multi, seed=seed)
        assert_matches(loss(out, y), ref_csq(out.u, y, loss.centres, loss.tie_break, lam=1e-4))
        loss = CSQLoss(K, C, multi_label=multi, lambda_q=0.5)
        assert_matches(loss(out, y), ref_csq(out.u, y, loss.centres, loss.tie_break, lam=0.5))


def test_csq_multi_label_ties_use_tie_break() -> None:
    loss = CSQLoss(8, 2, multi_label=True, centres="hadamard")  # rows 0 and 1 of H_8 differ in half the bits
    y = torch.tensor([[1.0, 1.0]])
    target = loss.targets(y)[0]
    c0, c1 = loss.centres
    agree = c0 == c1
    assert torch.equal(target[agree], c0[agree])
    assert torch.equal(target[~agree], loss.tie_break[~agree])
    assert int((~agree).sum()) == 4


@MULTI
def test_greedyhash_matches_reference(multi: bool) -> None:
    for seed in range(3):
        pre, out, y = make_batch(multi_label=multi, seed=seed)
        loss = GreedyHashLoss(K, C, multi_label=multi, seed=seed)
        assert_matches(loss(out, y), ref_greedyhash(pre, y, loss.weight, loss.bias, alpha=0.1, multi=multi))
        loss = GreedyHashLoss(K, C, multi_label=multi, alpha=1.5)
        assert_matches(loss(out, y), ref_greedyhash(pre, y, loss.weight, loss.bias, alpha=1.5, multi=multi))


@MULTI
def test_orthohash_matches_reference(multi: bool) -> None:
    for seed in range(3):
        _, out, y = make_batch(multi_label=multi, seed=seed)
        loss = OrthoHashLoss(K, C, multi_label=multi, seed=seed)
        assert_matches(loss(out, y), ref_orthohash(out.u, y, loss.codes, s=8.0, m=0.2, q=0.0, multi=multi))
        loss = OrthoHashLoss(K, C, multi_label=multi, s=3.0, m=0.5, q=0.7)
        assert_matches(loss(out, y), ref_orthohash(out.u, y, loss.codes, s=3.0, m=0.5, q=0.7, multi=multi))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_regularisers_match_reference(name: str) -> None:
    _, out, y = make_batch(seed=6)
    out.u.data[0, :3] = 0.0  # u = 0 must count as bit 1 (target +1), never sign's 0
    base = create_loss(name, K, C, seed=1)(out, y)
    loss = create_loss(name, K, C, seed=1, quant_weight=0.3, balance_weight=2.0)
    result = loss(out, y)
    expected = {k: v.item() for k, v in base.terms.items()}
    expected.update(ref_regularisers(out.u, 0.3, 2.0))
    assert_matches(result, expected)


def test_quant_regulariser_maps_zero_to_plus_one() -> None:
    u = torch.zeros(3, K, requires_grad=True)
    out = HashOutput(None, u, u)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), C).float()
    result = DSHLoss(K, C, quant_weight=1.0)(out, y)
    assert math.isclose(result.terms["quant_reg"].item(), 1.0)  # (0 − 1)², sign would give 0


# ----------------------------------------------------------------------------------------------------
# Labeled / unlabeled rows
# ----------------------------------------------------------------------------------------------------

ALL = pytest.mark.parametrize("name", sorted(LOSSES))


@ALL
@MULTI
def test_unlabeled_rows_are_skipped(name: str, multi: bool) -> None:
    _, out, y = make_batch(n=10, multi_label=multi, seed=7)
    labeled = torch.tensor([True, False, True, True, False, True, False, True, True, False])
    y_garbage = y.clone()
    y_garbage[~labeled] = 0.0  # unlabeled rows carry no (valid) labels
    loss = create_loss(name, K, C, multi_label=multi, seed=3)
    with_mask = loss(out, y_garbage, labeled)
    only_labeled = loss(out.select(labeled), y[labeled])
    assert set(with_mask.terms) == set(only_labeled.terms)
    for key in with_mask.terms:
        assert torch.allclose(with_mask.terms[key], only_labeled.terms[key], rtol=1e-12, atol=1e-12), key
    assert torch.allclose(with_mask.total, only_labeled.total, rtol=1e-12, atol=1e-12)
    full = loss(out, y)  # and the unlabeled rows do matter when labeled
    assert not torch.allclose(full.total, only_labeled.total)


@ALL
def test_regularisers_use_every_row(name: str) -> None:
    _, out, y = make_batch(n=8, seed=8)
    labeled = torch.tensor([True, True, True, False, False, True, False, True])
    loss = create_loss(name, K, C, quant_weight=0.5, balance_weight=0.5)
    result = loss(out, y, labeled)
    expected = ref_regularisers(out.u, 0.5, 0.5)
    for key, value in expected.items():
        assert math.isclose(result.terms[key].item(), value, rel_tol=1e-9)


@ALL
def test_all_unlabeled_gives_connected_zero(name: str) -> None:
    pre, out, y = make_batch(seed=9)
    loss = create_loss(name, K, C)
    result = loss(out, torch.zeros_like(y), torch.zeros(N, dtype=torch.bool))
    assert result.total.item() == 0.0
    assert result.total.grad_fn is not None
    assert set(result.terms) == set(type(loss).term_names)
    result.total.backward()
    assert pre.grad is not None and bool(torch.all(pre.grad == 0))


@pytest.mark.parametrize("name", ["dsh", "dpsh", "hashnet"])
def test_pairwise_losses_with_one_labeled_row_are_zero(name: str) -> None:
    pre, out, y = make_batch(seed=10)
    labeled = torch.zeros(N, dtype=torch.bool)
    labeled[2] = True
    result = create_loss(name, K, C)(out, y, labeled)
    assert result.total.item() == 0.0
    result.total.backward()
    assert pre.grad is not None


def test_all_unlabeled_with_regulariser_keeps_regulariser() -> None:
    _, out, y = make_batch(seed=11)
    result = CSQLoss(K, C, quant_weight=1.0)(out, y, torch.zeros(N, dtype=torch.bool))
    assert result.terms["centre"].item() == 0.0
    assert math.isclose(result.total.item(), ref_regularisers(out.u, 1.0, 0.0)["quant_reg"], rel_tol=1e-9)


# ----------------------------------------------------------------------------------------------------
# Centres, codes and state
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,attr", [(CSQLoss, "centres"), (OrthoHashLoss, "codes")])
def test_codes_are_seeded(cls: type[HashLoss], attr: str) -> None:
    a = getattr(cls(K, C, seed=5), attr)
    b = getattr(cls(K, C, seed=5), attr)
    other = getattr(cls(K, C, seed=6), attr)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert a.shape == (C, K)


@pytest.mark.parametrize("cls,attr", [(CSQLoss, "centres"), (OrthoHashLoss, "codes")])
def test_bernoulli_codes_are_separated(cls: type[HashLoss], attr: str) -> None:
    codes = getattr(cls(24, 10, seed=2), attr)
    dist = 0.5 * (24 - codes @ codes.T)
    dist.fill_diagonal_(float("inf"))
    assert float(dist.min()) >= 24 / 4


def test_hadamard() -> None:
    h = hadamard(16)
    assert torch.equal(h @ h.T, 16 * torch.eye(16))
    with pytest.raises(ValueError):
        hadamard(12)


def test_csq_hadamard_centres() -> None:
    loss = CSQLoss(16, 20)  # 20 <= 2K: rows of H_16 then of -H_16
    h = hadamard(16)
    assert torch.equal(loss.centres, torch.cat([h, -h])[:20])
    dist = 0.5 * (16 - loss.centres @ loss.centres.T)
    dist.fill_diagonal_(float("inf"))
    assert float(dist.min()) >= 8
    assert torch.equal(CSQLoss(16, 40).centres.abs(), torch.ones(40, 16))  # 40 > 2K: Bernoulli
    assert not torch.equal(CSQLoss(16, 40, seed=0).centres, CSQLoss(16, 40, seed=1).centres)
    with pytest.raises(ValueError, match="Hadamard"):
        CSQLoss(12, 5, centres="hadamard")


def test_orthohash_hadamard_codes_are_orthogonal() -> None:
    codes = OrthoHashLoss(16, 10).codes
    assert torch.equal(codes @ codes.T, 16 * torch.eye(10))


def test_hashnet_beta_schedule_and_state() -> None:
    loss = HashNetLoss(K, C)
    assert "beta" in loss.state_dict() and "step" in loss.state_dict()
    assert loss.beta.item() == 1.0
    loss.on_step()
    assert loss.beta.item() > 1.0
    for _ in range(99):
        loss.on_step()
    assert int(loss.step) == 100
    assert math.isclose(loss.beta.item(), (1 + 0.005 * 100) ** 0.5, rel_tol=1e-6)
    resumed = HashNetLoss(K, C)
    resumed.load_state_dict(loss.state_dict())
    assert resumed.beta.item() == loss.beta.item() and int(resumed.step) == 100
    stepped = HashNetLoss(K, C, step_size=200)
    for _ in range(199):
        stepped.on_step()
    assert stepped.beta.item() == 1.0
    stepped.on_step()
    assert math.isclose(stepped.beta.item(), (1 + 0.005 * 200) ** 0.5, rel_tol=1e-6)


@ALL
def test_state_dict_holds_only_tensors_and_saves_with_safetensors(name: str, tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    loss = create_loss(name, K, C, seed=4)
    loss.on_step()
    state = loss.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    path = tmp_path / "loss.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    fresh = create_loss(name, K, C, seed=99)
    fresh.load_state_dict(safetensors_torch.load_file(str(path)))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


# ----------------------------------------------------------------------------------------------------
# GreedyHash's straight-through gradient
# ----------------------------------------------------------------------------------------------------


def test_straight_through_sign() -> None:
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0], requires_grad=True)
    b = straight_through_sign(x)
    assert b.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    upstream = torch.tensor([0.5, -1.0, 2.0, 3.0, -4.0])
    b.backward(upstream)
    assert torch.equal(x.grad, upstream)


@MULTI
def test_greedyhash_gradient_is_straight_through(multi: bool) -> None:
    pre, out, y = make_batch(multi_label=multi, seed=12)
    loss = GreedyHashLoss(K, C, multi_label=multi, alpha=0.0)
    loss(out, y).total.backward()
    # the same classifier applied to the binary codes as a leaf: its gradient is the upstream gradient
    b = torch.where(pre.detach() >= 0, 1.0, -1.0).double().requires_grad_(True)
    logits = b @ loss.weight.double().T + loss.bias.double()
    if multi:
        cls = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    else:
        cls = torch.nn.functional.cross_entropy(logits, y.argmax(dim=1))
    cls.backward()
    assert torch.allclose(pre.grad, b.grad, rtol=1e-12, atol=1e-14)
    assert loss.weight.grad is not None and loss.bias.grad is not None
    assert isinstance(loss.weight, torch.nn.Parameter)
    assert {n for n, _ in loss.named_parameters()} == {"weight", "bias"}


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def test_pairwise_similarity_matches_loop() -> None:
    gen = torch.Generator().manual_seed(13)
    a = make_labels(6, 4, True, gen)
    b = make_labels(5, 4, True, gen)
    s = pairwise_similarity(a, b)
    assert s.shape == (6, 5)
    for i in range(6):
        for j in range(5):
            assert float(s[i, j]) == ref_similar(a[i].tolist(), b[j].tolist())


def test_triplet_loss_matches_loop() -> None:
    gen = torch.Generator().manual_seed(14)
    a, p, n = (torch.tanh(torch.randn(7, K, generator=gen, dtype=torch.float64)) for _ in range(3))
    for distance, fn in (
        ("hamming", lambda x, z: 0.5 * (K - sum(xi * zi for xi, zi in zip(x, z)))),
        ("sqeuclidean", lambda x, z: sum((xi - zi) ** 2 for xi, zi in zip(x, z))),
    ):
        margin = 1.5
        ref = sum(max(fn(x, q) - fn(x, r) + margin, 0.0) for x, q, r in zip(rows(a), rows(p), rows(n))) / 7
        assert math.isclose(triplet_loss(a, p, n, margin, distance=distance).item(), ref, rel_tol=1e-9)
    codes = torch.where(torch.randn(4, K, generator=gen) >= 0, 1.0, -1.0)
    hamming = (codes[0] != codes[1]).sum()
    assert float(triplet_loss(codes[:1], codes[1:2], codes[:1], 0.0)) == float(hamming)


# ----------------------------------------------------------------------------------------------------
# Registry-wide checks and errors
# ----------------------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert list_losses() == sorted(["dsh", "dpsh", "hashnet", "csq", "greedyhash", "orthohash"])
    assert isinstance(create_loss("CSQ", 16, 10), CSQLoss)
    with pytest.raises(KeyError, match="unknown loss .nope.; known: csq, dpsh"):
        create_loss("nope", 16, 10)
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        create_loss("dsh", 16, 10, eta=0.1)


@ALL
@MULTI
@pytest.mark.parametrize("nbits", [16, 12])
def test_registry_forward_backward(name: str, multi: bool, nbits: int) -> None:
    gen = torch.Generator().manual_seed(15)
    pre = torch.randn(16, nbits, generator=gen).requires_grad_(True)  # float32, like training
    out = HashOutput(features=torch.randn(16, 8, generator=gen), pre=pre, u=torch.tanh(pre))
    y = make_labels(16, 10, multi, gen).float()
    loss = create_loss(name, nbits, 10, multi_label=multi, quant_weight=0.1, balance_weight=0.1)
    result = loss(out, y)
    assert isinstance(result, LossOutput) and result.total.dim() == 0
    assert set(type(loss).term_names) <= set(result.terms) and len(result.terms) >= 3
    assert all(torch.isfinite(t) for t in result.terms.values()) and torch.isfinite(result.total)
    assert math.isclose(result.total.item(), sum(result.as_floats()[k] for k in result.terms), rel_tol=1e-5)
    result.total.backward()
    assert pre.grad is not None and bool(torch.isfinite(pre.grad).all()) and float(pre.grad.abs().sum()) > 0
    for p in loss.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    loss.on_step()
    out = HashOutput(features=out.features, pre=pre, u=torch.tanh(pre))
    loss(out, y).total.backward()  # still works after a step


@ALL
def test_saturated_outputs_stay_finite(name: str) -> None:
    pre = (torch.randn(8, 16) * 100).requires_grad_(True)
    out = HashOutput(None, pre, torch.tanh(pre))
    y = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()
    result = create_loss(name, 16, 4)(out, y)
    result.total.backward()
    assert torch.isfinite(result.total) and bool(torch.isfinite(pre.grad).all())


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda out, y, m: (HashOutput(None, out.pre[:, :5], out.u[:, :5]), y, m), "out.u must be"),
        (lambda out, y, m: (out, y[:, :3], m), "labels must be multi-hot"),
        (lambda out, y, m: (out, y.argmax(dim=1), m), "class indices"),
        (lambda out, y, m: (out, y, m.float()), "labeled must be a bool"),
        (lambda out, y, m: (out, y, m[:3]), "labeled must be a bool"),
        (lambda out, y, m: (out, y * 2, m), "0/1"),
        (lambda out, y, m: (out, torch.ones_like(y), m), "exactly one positive"),
    ],
)
def test_clear_errors(mutate: Callable, match: str) -> None:
    _, out, y = make_batch(seed=16)
    labeled = torch.ones(N, dtype=torch.bool)
    out2, y2, m2 = mutate(out, y, labeled)
    with pytest.raises(ValueError, match=match):
        DSHLoss(K, C)(out2, y2, m2)


def test_config_round_trip() -> None:
    loss = create_loss("orthohash", 16, 10, s=4.0, seed=3, quant_weight=0.2, multi_label=True)
    cfg = loss.config()
    again = create_loss("orthohash", **cfg)
    assert again.config() == cfg
    assert torch.equal(again.codes, loss.codes)
