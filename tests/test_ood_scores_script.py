"""benchmarks/ood_scores.py: its four OOD scores against per-image formulas written out."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from coophash.nets.descriptor import MultipurposeDescriptor

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ood_scores.py"


def _script():
    spec = importlib.util.spec_from_file_location("ood_scores", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scores_match_their_formulas_image_by_image() -> None:
    mod = _script()
    torch.manual_seed(0)
    desc = MultipurposeDescriptor(1, 8, nbits=8, n_classes=5, trunk_norm="group", density_hidden=16).eval()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    got = mod.score_batch(desc, x, multi_label=False)
    assert set(got) == set(mod.SCORES)
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        f = desc.density_head(desc.trunk(xi))[0]
        (g,) = torch.autograd.grad(f, xi)
        logits = desc.category_head(desc.trunk(x[i:i + 1]))[0].detach()
        p = [float(torch.exp(v) / torch.exp(logits).sum()) for v in logits]
        torch.testing.assert_close(got["density"][i], -f.detach())
        torch.testing.assert_close(float(got["mass"][i]), float(torch.sqrt((g ** 2).sum())), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(float(got["msp"][i]), -max(p), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(float(got["lse"][i]), -float(torch.log(torch.exp(logits).sum())),
                                   rtol=1e-5, atol=1e-5)


def test_multi_label_scores_use_sigmoids() -> None:
    mod = _script()
    torch.manual_seed(1)
    desc = MultipurposeDescriptor(1, 8, nbits=8, n_classes=4, trunk_norm="group").eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    got = mod.score_batch(desc, x, multi_label=True)
    logits = desc.category_head(desc.trunk(x)).detach()
    torch.testing.assert_close(got["msp"], -torch.sigmoid(logits).max(1).values)
    torch.testing.assert_close(got["lse"], -torch.log1p(torch.exp(logits)).sum(1))
