"""CoopHash's objectives (DESIGN.md §1): every term the descriptor and the generator optimise, as formulas.

Descriptor (one step, ``x̃`` the Langevin-revised samples, detached; ``r`` the cooperation ramp in [0, 1]):

``L_D = r·w_ebm·([mean f(x̃) − mean f(x_real)] + γ·(mean f(x̃)² + mean f(x_real)²))
+ λ_h·(L_base(real labeled) + r·λ_t·triplet(x, x̃⁺, x̃⁻) + r·λ_g·L_base(real ∪ revised))
+ λ_c·L_cls(real labeled) + λ_q·mean ‖u − (2b − 1)‖²/K``

Terms (logged as ``descriptor/<name>``): ``hash``, ``cls``, ``quant``, and once cooperation runs ``ebm``,
``stabiliser``, ``triplet``, ``gen_hash``. The triplet and ``gen_hash`` use a revised pair only where the
category head gives both its conditioning labels at least ``gate_confidence`` probability.

Generator (logged as ``generator/<name>``): the ELBO of ``x̃`` with ``z = μ + σ·ε`` from ``q(z|x̃)``,
``rec = mean_i ‖x̃_i − G(z_i, y_i)‖²/(2σ_g²)`` and ``kl = β·mean_i KL(N(μ_i, σ_i²) ‖ N(0, I))``, or (CoopNets)
``rec_known``, the same reconstruction from the z that generated ``x̃``.

Names starting with ``diag_`` are diagnostics, never part of a total (:func:`coophash.losses.base.sum_terms`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from coophash.nets.descriptor import DescriptorOutput, log_p_y_given_x

from .base import LossOutput, quantisation_error, sum_terms
from .classification import class_loss
from .distributed import global_triplet_loss

__all__ = [
    "DescriptorWeights",
    "GeneratedRows",
    "descriptor_objective",
    "energy_contrast",
    "energy_stabiliser",
    "confidence_gate",
    "gaussian_reconstruction",
    "gaussian_kl",
    "elbo_terms",
    "known_latent_terms",
]

#: A supervised hashing loss: ``(HashOutput, labels, labeled) -> LossOutput`` (a :class:`HashLoss`).
BaseLoss = Callable[..., LossOutput]


# -- formulas -----------------------------------------------------------------------------------------


def energy_contrast(f_gen: Tensor, f_real: Tensor, weight: float) -> Tensor:
    """``weight·(mean f(x̃) − mean f(x_real))``: lowering it raises the density of real images over revised ones."""
    return weight * (f_gen.mean() - f_real.mean())


def energy_stabiliser(f_gen: Tensor, f_real: Tensor, weight: float) -> Tensor:
    """``weight·(mean f(x̃)² + mean f(x_real)²)`` (weight = r·w_ebm·γ): keeps the energies near 0."""
    return weight * (f_gen.pow(2).mean() + f_real.pow(2).mean())


def confidence_gate(conf: Tensor, n: int, threshold: float) -> Tensor:
    """(n,) float 0/1: pair i is kept when ``conf[i] ≥ threshold`` and ``conf[n + i] ≥ threshold`` (x̃⁺ and x̃⁻).

    ``threshold <= 0`` keeps every pair.
    """
    if threshold <= 0:
        return torch.ones(n, device=conf.device)
    return ((conf[:n] >= threshold) & (conf[n : 2 * n] >= threshold)).float()


def gaussian_reconstruction(x: Tensor, x_rec: Tensor, sigma_g: float) -> tuple[Tensor, Tensor]:
    """``mean_i ‖x_i − x_rec_i‖²/(2σ_g²)`` (x detached) and the per-pixel MSE (detached, a diagnostic)."""
    sq = (x.detach() - x_rec).pow(2).flatten(1)
    return sq.sum(dim=1).mean() / (2 * sigma_g**2), sq.mean().detach()


def gaussian_kl(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """``mean_i KL(N(μ_i, diag σ_i²) ‖ N(0, I)) = mean_i ½ Σ_d (μ² + σ² − 1 − 2 log σ)``."""
    return 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(dim=1).mean()


def elbo_terms(
    x: Tensor, x_rec: Tensor, mu: Tensor, log_sigma: Tensor, sigma_g: float, beta: float, prefix: str = ""
) -> dict[str, Tensor]:
    """Negative ELBO of ``x`` as terms ``<prefix>rec``, ``<prefix>kl`` (β-weighted) and ``diag_<prefix>mse``.

    ``x_rec = G(μ + σ·ε, y)`` is the generator's reconstruction from a sample of ``q(z|x) = N(μ, σ²)``.
    """
    rec, mse = gaussian_reconstruction(x, x_rec, sigma_g)
    kl = gaussian_kl(mu, log_sigma)
    return {f"{prefix}rec": rec, f"{prefix}kl": beta * kl, f"diag_{prefix}mse": mse}


def known_latent_terms(x: Tensor, x_rec: Tensor, sigma_g: float) -> dict[str, Tensor]:
    """CoopNets' generator target: ``rec_known``, the reconstruction of ``x̃`` from the z that generated it."""
    rec, mse = gaussian_reconstruction(x, x_rec, sigma_g)
    return {"rec_known": rec, "diag_known_mse": mse}


# -- the descriptor objective -------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriptorWeights:
    """Weights of the descriptor objective (CoopHash's ``coop_*`` arguments); ``triplet_margin`` is in bits."""

    hash: float = 1.0  # λ_h
    cls: float = 1.0  # λ_c
    quant: float = 0.01  # λ_q
    ebm: float = 1.0  # w_ebm
    gamma: float = 0.01  # γ
    triplet: float = 1.0  # λ_t (0: no triplet)
    triplet_margin: float = 8.0
    gen_hash: float = 0.0  # λ_g (0: no base loss on revised samples)
    gate_confidence: float = 0.0


@dataclass
class GeneratedRows:
    """Where the revised samples sit in the descriptor's batch: rows ``start:`` of the output.

    Rows ``start : start+n`` are x̃⁺, the next ``n`` x̃⁻ (anchored on the first ``n`` labeled rows), and an
    optional further ``n`` a second positive; ``labels`` (n_gen, C) are their conditioning labels.
    """

    start: int
    n: int
    labels: Tensor


def descriptor_objective(
    out: DescriptorOutput,
    y_lab: Tensor,
    labeled: Tensor,
    base_loss: BaseLoss,
    weights: DescriptorWeights,
    multi_label: bool,
    generated: Optional[GeneratedRows] = None,
    ramp: float = 0.0,
) -> LossOutput:
    """The descriptor's named terms and total from its output on [labeled real; unlabeled real; revised] rows.

    The first ``len(y_lab)`` rows of ``out`` are the labeled real images; without ``generated`` only the
    supervised terms (``hash``, ``cls``, ``quant``) are formed.
    """
    w = weights
    n_lab = y_lab.shape[0]
    u_lab = out.u[:n_lab]
    hout = out.hash_output(slice(0, n_lab))
    terms: dict[str, Tensor] = {}
    terms["hash"] = w.hash * base_loss(hout, y_lab, labeled).total
    terms["cls"] = w.cls * class_loss(out.logits[:n_lab], y_lab, multi_label)
    terms["quant"] = w.quant * quantisation_error(u_lab)
    if generated is not None:
        terms.update(_cooperative_terms(out, u_lab, y_lab, base_loss, w, multi_label, generated, ramp))
    return LossOutput(total=sum_terms(terms), terms=terms)


def _cooperative_terms(
    out: DescriptorOutput,
    u_lab: Tensor,
    y_lab: Tensor,
    base_loss: BaseLoss,
    w: DescriptorWeights,
    multi_label: bool,
    gen: GeneratedRows,
    r: float,
) -> dict[str, Tensor]:
    """EBM contrast and stabiliser, gated triplet, base loss on real ∪ revised, and the diagnostics."""
    start, n = gen.start, gen.n
    f_real, f_gen = out.f[:start], out.f[start:]
    scale = r * w.ebm
    terms = {
        "ebm": energy_contrast(f_gen, f_real, scale),
        "stabiliser": energy_stabiliser(f_gen, f_real, scale * w.gamma),
    }
    u_gen = out.u[start:]
    u_pos, u_neg = u_gen[:n], u_gen[n : 2 * n]
    logits_gen = out.logits[start:]
    with torch.no_grad():
        conf = log_p_y_given_x(logits_gen, gen.labels, multi_label).exp()
        if multi_label:
            hit = ((logits_gen > 0).float() == gen.labels).all(dim=1).float()
        else:
            hit = (logits_gen.argmax(dim=1) == gen.labels.argmax(dim=1)).float()
    gate = confidence_gate(conf, n, w.gate_confidence)
    if w.triplet > 0:
        margin = w.triplet_margin
        anchors = u_lab[:n]
        trip = global_triplet_loss(anchors, u_pos, u_neg, margin, gate=gate)  # over every rank's pairs
        if u_gen.shape[0] > 2 * n:
            trip = trip + global_triplet_loss(anchors, u_gen[2 * n :], u_neg, margin, gate=gate)
        terms["triplet"] = w.hash * r * w.triplet * trip
    if w.gen_hash > 0:
        terms["gen_hash"] = w.hash * r * w.gen_hash * _real_and_revised_loss(out, y_lab, base_loss, gen, gate)
    terms["diag_energy_gap"] = (f_real.mean() - f_gen.mean()).detach()
    terms["diag_f_real"] = f_real.mean().detach()
    terms["diag_gen_cls_acc"] = hit.mean()
    terms["diag_gen_conf"] = conf.mean()
    terms["diag_ramp"] = torch.tensor(r)
    return terms


def _real_and_revised_loss(
    out: DescriptorOutput, y_lab: Tensor, base_loss: BaseLoss, gen: GeneratedRows, gate: Tensor
) -> Tensor:
    """The base loss on labeled real rows plus the gated-in revised rows (labeled by their conditioning)."""
    n_lab, n_real, n_gen = y_lab.shape[0], gen.start, out.u.shape[0] - gen.start
    dev = out.u.device
    keep = torch.cat([torch.ones(n_lab, dtype=torch.bool, device=dev), gate.bool().repeat(n_gen // gen.n)])
    rows = torch.cat([torch.ones(n_lab, dtype=torch.bool, device=dev),
                      torch.zeros(n_real - n_lab, dtype=torch.bool, device=dev),
                      torch.ones(n_gen, dtype=torch.bool, device=dev)])
    aug_out = out.hash_output(slice(0, None)).select(rows)
    return base_loss(aug_out, torch.cat([y_lab, gen.labels]), keep).total
