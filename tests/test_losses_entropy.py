"""The maximum-entropy terms (coophash.losses.entropy) against slow loops from their equations."""
from __future__ import annotations

import math

import pytest
import torch

from coophash.losses.entropy import (
    MaxEntropyLoss,
    bernoulli_entropy,
    bernoulli_entropy_from_logits,
    bit_entropy_loss,
    class_entropy_loss,
)
from coophash.nets.output import HashOutput


def h(p: float) -> float:
    """H(p) = −p log p − (1 − p) log(1 − p), nats."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def close(got: torch.Tensor, want: float) -> bool:
    return torch.allclose(got.detach().double(), torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def batch(seed: int, n: int = 6, k: int = 10) -> torch.Tensor:
    return 2 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_elementwise_entropies_match_formula() -> None:
    z = batch(0)
    got = bernoulli_entropy_from_logits(z)
    for i, row in enumerate(z.tolist()):
        for j, v in enumerate(row):
            assert math.isclose(float(got[i, j]), h(sigmoid(v)), rel_tol=1e-9)
    p = torch.sigmoid(z)
    torch.testing.assert_close(bernoulli_entropy(p), got, rtol=1e-9, atol=1e-12)


def test_bit_entropy_loss_from_pre_and_u_matches_loop() -> None:
    pre = batch(1) / 2  # away from tanh's saturation, where the u form clamps p to [eps, 1 − eps]
    ref = -sum(h((1 + math.tanh(a)) / 2) for row in pre.tolist() for a in row) / pre.numel()
    assert close(bit_entropy_loss(pre=pre), ref)
    assert close(bit_entropy_loss(u=torch.tanh(pre)), ref)
    assert close(MaxEntropyLoss("bits")(HashOutput(None, pre, torch.tanh(pre))), ref)


@pytest.mark.parametrize("multi", [False, True])
def test_class_entropy_loss_matches_loop(multi: bool) -> None:
    logits = batch(2, k=5)
    total = 0.0
    for row in logits.tolist():
        if multi:  # mean per-class Bernoulli entropy of the sigmoids
            total += sum(h(sigmoid(v)) for v in row) / len(row)
        else:  # entropy of the softmax posterior
            z = sum(math.exp(v) for v in row)
            total += -sum(math.exp(v) / z * math.log(math.exp(v) / z) for v in row)
    ref = -total / logits.shape[0]
    assert close(class_entropy_loss(logits, multi_label=multi), ref)
    out = HashOutput(None, torch.zeros(6, 2), torch.zeros(6, 2), logits)
    assert close(MaxEntropyLoss("classes", multi_label=multi)(out), ref)


def test_entropy_minimum_and_empty_batches() -> None:
    assert MaxEntropyLoss("classes").minimum(10) == pytest.approx(-math.log(10))
    assert MaxEntropyLoss("classes", multi_label=True).minimum(10) == pytest.approx(-math.log(2))
    assert float(bit_entropy_loss(pre=torch.zeros(3, 4))) == pytest.approx(-math.log(2))
    empty = torch.zeros(0, 4, requires_grad=True)
    assert float(bit_entropy_loss(pre=empty).detach()) == 0.0 and float(class_entropy_loss(empty).detach()) == 0.0
