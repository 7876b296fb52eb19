"""CoopHash's objectives (DESIGN.md §1): every term the descriptor and the generator optimise, as formulas.

Descriptor (one step, ``x̃`` the Langevin-revised samples, detached; ``r`` the cooperation ramp in [0, 1]):

``L_D = r·w_ebm·([mean f(x̃) − mean f(x_real)] + γ·(mean f(x̃)² + mean f(x_real)²))
+ λ_h·(L_base(real labeled) + r·λ_t·triplet(x, x̃⁺, x̃⁻) + r·λ_g·L_base(real ∪ revised))
+ λ_c·L_cls(real labeled) + λ_q·mean ‖u − (2b − 1)‖²/K``

Terms (logged as ``descriptor/<name>``): ``hash``, ``cls``, ``quant``, and once cooperation runs ``ebm``,
``stabiliser``, ``triplet``, ``gen_hash``. The triplet and ``gen_hash`` use a revised pair only where a gate
gives both its conditioning labels at least ``gate_confidence`` probability: by default the descriptor's own
category head on the revised rows; the caller may pass its own confidences (``GeneratedRows.gate_conf``, e.g.
an EMA classifier on a strong view that revision never wrote to).  The pass rate is ``diag_gate_pass``.

The density negatives are every generated row: the revised pairs and, after them, ``GeneratedRows.extra``
persistent chains (a replay buffer) that enter only the density contrast and stabiliser.  The contrast has
three forms (``DescriptorWeights.contrast``), with ``d = mean f(x̃) − mean f(x_real)``:

* ``linear`` (CoopNets' maximum-likelihood gradient): ``d``;
* ``softplus`` (IGEBM's most stable choice): ``softplus(d)``, of the *mean* difference because the real and
  generated rows are not paired (their counts differ); its gradient is the linear one times ``sigmoid(d)``,
  so it fades once real images out-score generated ones by a margin of a few nats;
* ``logistic``: real-vs-generated logistic regression with logit ``f``,
  ``mean softplus(−f(x_real)) + mean softplus(f(x̃))``.

Pseudo-labels (FixMatch, :mod:`coophash.losses.semi`, active from the first step, independent of the ramp):
the category head's confident predictions on the weak views of unlabeled rows (detached) teach their strong
views, ``pseudo = w_p·consistency CE``, and label them for the hashing loss,
``pseudo_hash = λ_h·w_ph·L_base([labeled real; strong views], [y; pseudo-labels])`` over the kept rows
``[labeled; confident]``, *added* to the plain ``hash`` term (so the labeled pairs keep their own weight and
gain pairs with the pseudo-labeled views).  ``diag_pseudo_rate`` is the fraction of confident unlabeled rows.

Generator (logged as ``generator/<name>``): the ELBO of ``x̃`` with ``z = μ + σ·ε`` from ``q(z|x̃)``,
``rec = mean_i ‖x̃_i − G(z_i, y_i)‖²/(2σ_g²)`` and ``kl = β·mean_i KL(N(μ_i, σ_i²) ‖ N(0, I))``, or (CoopNets)
``rec_known``, the same reconstruction from the z that generated ``x̃``; optionally ``mode_seeking`` (Mao et al.
2019, MSGAN), ``w·mean_i 1/(r_i + ε)`` with ``r_i = mean|G(z_i, y_i) − G(z'_i, y_i)| / mean|z_i − z'_i|``: two
latents of one label must give images as far apart as the latents are, against a generator that draws one
prototype per class.

Names starting with ``diag_`` are diagnostics, never part of a total (:func:`coophash.losses.base.sum_terms`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

import torch.nn.functional as F

from coophash.nets.descriptor import DescriptorOutput, log_p_y_given_x

from .base import HashOutput, LossOutput, quantisation_error, sum_terms
from .classification import class_loss
from .distributed import global_triplet_loss
from .semi import consistency_loss, pseudo_labels

__all__ = [
    "CONTRASTS",
    "DescriptorWeights",
    "GeneratedRows",
    "PseudoViews",
    "pseudo_label_terms",
    "descriptor_objective",
    "energy_contrast",
    "energy_stabiliser",
    "confidence_gate",
    "gaussian_reconstruction",
    "gaussian_kl",
    "elbo_terms",
    "known_latent_terms",
    "mode_seeking_term",
]

#: A supervised hashing loss: ``(HashOutput, labels, labeled) -> LossOutput`` (a :class:`HashLoss`).
BaseLoss = Callable[..., LossOutput]


# -- formulas -----------------------------------------------------------------------------------------


#: The forms of the density contrast (see the module docstring).
CONTRASTS = ("linear", "softplus", "logistic")


def energy_contrast(f_gen: Tensor, f_real: Tensor, weight: float, form: str = "linear") -> Tensor:
    """The density contrast; lowering it raises the density of real images over generated ones.

    ``linear``: ``weight·(mean f(x̃) − mean f(x_real))``; ``softplus``: ``weight·softplus(mean f(x̃) −
    mean f(x_real))``; ``logistic``: ``weight·(mean softplus(−f(x_real)) + mean softplus(f(x̃)))``.
    """
    if form == "linear":
        return weight * (f_gen.mean() - f_real.mean())
    if form == "softplus":
        return weight * F.softplus(f_gen.mean() - f_real.mean())
    if form == "logistic":
        return weight * (F.softplus(-f_real).mean() + F.softplus(f_gen).mean())
    raise ValueError(f"energy_contrast: form must be one of {CONTRASTS}, got {form!r}")


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


def mode_seeking_term(x1: Tensor, x2: Tensor, z1: Tensor, z2: Tensor, weight: float,
                      eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """MSGAN's mode-seeking term, ``weight·mean_i 1/(r_i + eps)`` with ``r_i = mean|x1_i − x2_i| / mean|z1_i −
    z2_i|`` (means over pixels and latent dimensions; ``x1_i, x2_i`` generated with one label from ``z1_i, z2_i``),
    and the mean ratio (detached, a diagnostic).  Lowering it spreads the images of one label apart."""
    d_img = (x1 - x2).abs().flatten(1).mean(dim=1)
    d_lat = (z1 - z2).abs().flatten(1).mean(dim=1).detach()
    ratio = d_img / d_lat
    return weight * (1.0 / (ratio + eps)).mean(), ratio.mean().detach()


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
    contrast: str = "linear"  # one of CONTRASTS
    pseudo: float = 0.0  # w_p, consistency CE on strong views
    pseudo_hash: float = 0.0  # w_ph, base loss on labeled ∪ pseudo-labeled strong views
    pseudo_threshold: float = 0.95  # τ

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, got {self.contrast!r}")


@dataclass
class GeneratedRows:
    """Where the generated samples sit in the descriptor's batch: rows ``start:`` of the output.

    Rows ``start : start+n`` are x̃⁺, the next ``n`` x̃⁻ (anchored on the first ``n`` labeled rows), and an
    optional further ``n`` a second positive; ``labels`` (n_gen, C) are their conditioning labels.  The last
    ``extra`` rows are further density negatives (replay-buffer chains) outside every hash term; ``n`` may be
    0 (chains only).  ``density_real``: how many leading real rows enter the density term (None: all ``start``).
    ``gate_conf``: per pair row, the probability the gate gives its conditioning labels (None: the descriptor's
    own category head on the revised rows).
    """

    start: int
    n: int
    labels: Tensor
    extra: int = 0
    density_real: Optional[int] = None
    gate_conf: Optional[Tensor] = None


@dataclass
class PseudoViews:
    """Unlabeled rows for pseudo-labelling: their weak views are rows ``start:end`` of the descriptor's output
    (their logits give the pseudo-labels, detached), ``strong`` the descriptor's output on their strong views."""

    start: int
    end: int
    strong: DescriptorOutput


def descriptor_objective(
    out: DescriptorOutput,
    y_lab: Tensor,
    labeled: Tensor,
    base_loss: BaseLoss,
    weights: DescriptorWeights,
    multi_label: bool,
    generated: Optional[GeneratedRows] = None,
    ramp: float = 0.0,
    pseudo: Optional[PseudoViews] = None,
) -> LossOutput:
    """The descriptor's named terms and total from its output on [labeled real; unlabeled real; generated] rows.

    The first ``len(y_lab)`` rows of ``out`` are the labeled real images; without ``generated`` only the
    supervised terms (``hash``, ``cls``, ``quant``) are formed, and the pseudo-label terms with ``pseudo``.
    """
    w = weights
    n_lab = y_lab.shape[0]
    u_lab = out.u[:n_lab]
    hout = out.hash_output(slice(0, n_lab))
    terms: dict[str, Tensor] = {}
    terms["hash"] = w.hash * base_loss(hout, y_lab, labeled).total
    terms["cls"] = w.cls * class_loss(out.logits[:n_lab], y_lab, multi_label)
    terms["quant"] = w.quant * quantisation_error(u_lab)
    if pseudo is not None:
        weak = out.logits[pseudo.start : pseudo.end]
        terms.update(pseudo_label_terms(weak, pseudo.strong.hash_output(), hout, y_lab, labeled, base_loss, w,
                                        multi_label))
    if generated is not None:
        terms.update(_cooperative_terms(out, u_lab, y_lab, base_loss, w, multi_label, generated, ramp))
    return LossOutput(total=sum_terms(terms), terms=terms)


def pseudo_label_terms(
    weak_logits: Tensor,
    strong: HashOutput,
    lab: HashOutput,
    y_lab: Tensor,
    labeled: Tensor,
    base_loss: BaseLoss,
    w: DescriptorWeights,
    multi_label: bool,
) -> dict[str, Tensor]:
    """``pseudo`` (w_p·consistency CE), ``pseudo_hash`` (λ_h·w_ph·base loss on labeled ∪ strong views) and
    ``diag_pseudo_rate``; the pseudo-labels come from the detached ``weak_logits`` (:mod:`.semi`)."""
    targets, confident = pseudo_labels(weak_logits.detach(), w.pseudo_threshold, multi_label)
    terms: dict[str, Tensor] = {}
    if w.pseudo > 0:
        assert strong.logits is not None
        terms["pseudo"] = w.pseudo * consistency_loss(strong.logits, targets.to(strong.logits.dtype), confident,
                                                      multi_label)
    if w.pseudo_hash > 0:
        union = _cat_outputs(lab, strong)
        labels = torch.cat([y_lab, targets.to(y_lab.dtype)])
        terms["pseudo_hash"] = w.hash * w.pseudo_hash * base_loss(union, labels, torch.cat([labeled, confident])).total
    terms["diag_pseudo_rate"] = confident.float().mean() if confident.numel() else torch.zeros(())
    return terms


def _cat_outputs(a: HashOutput, b: HashOutput) -> HashOutput:
    """The rows of ``a`` followed by those of ``b`` (features / logits kept where both have them)."""
    def cat(x: Optional[Tensor], y: Optional[Tensor]) -> Optional[Tensor]:
        return None if x is None or y is None else torch.cat([x, y])

    return HashOutput(features=cat(a.features, b.features), pre=torch.cat([a.pre, b.pre]),
                      u=torch.cat([a.u, b.u]), logits=cat(a.logits, b.logits))


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
    n_real = gen.start if gen.density_real is None else gen.density_real
    f_real, f_gen = out.f[:n_real], out.f[start:]
    scale = r * w.ebm
    terms = {
        "ebm": energy_contrast(f_gen, f_real, scale, w.contrast),
        "stabiliser": energy_stabiliser(f_gen, f_real, scale * w.gamma),
    }
    pair = _pair_terms(out, u_lab, y_lab, base_loss, w, multi_label, gen, r) if n > 0 else {}
    terms.update({k: v for k, v in pair.items() if not k.startswith("diag_")})
    terms["diag_energy_gap"] = (f_real.mean() - f_gen.mean()).detach()
    terms["diag_f_real"] = f_real.mean().detach()
    terms.update({k: v for k, v in pair.items() if k.startswith("diag_")})
    terms["diag_ramp"] = torch.tensor(r)
    return terms


def _pair_terms(
    out: DescriptorOutput,
    u_lab: Tensor,
    y_lab: Tensor,
    base_loss: BaseLoss,
    w: DescriptorWeights,
    multi_label: bool,
    gen: GeneratedRows,
    r: float,
) -> dict[str, Tensor]:
    """The generated pairs' terms: gated triplet, gated base loss on real ∪ revised, gate and head diagnostics."""
    start, n = gen.start, gen.n
    end = out.u.shape[0] - gen.extra
    u_gen = out.u[start:end]
    u_pos, u_neg = u_gen[:n], u_gen[n : 2 * n]
    logits_gen = out.logits[start:end]
    with torch.no_grad():
        conf = log_p_y_given_x(logits_gen, gen.labels, multi_label).exp()
        if multi_label:
            hit = ((logits_gen > 0).float() == gen.labels).all(dim=1).float()
        else:
            hit = (logits_gen.argmax(dim=1) == gen.labels.argmax(dim=1)).float()
    gate = confidence_gate(conf if gen.gate_conf is None else gen.gate_conf, n, w.gate_confidence)
    terms: dict[str, Tensor] = {}
    if w.triplet > 0:
        margin = w.triplet_margin
        anchors = u_lab[:n]
        trip = global_triplet_loss(anchors, u_pos, u_neg, margin, gate=gate)  # over every rank's pairs
        if u_gen.shape[0] > 2 * n:
            trip = trip + global_triplet_loss(anchors, u_gen[2 * n :], u_neg, margin, gate=gate)
        terms["triplet"] = w.hash * r * w.triplet * trip
    if w.gen_hash > 0:
        terms["gen_hash"] = w.hash * r * w.gen_hash * _real_and_revised_loss(out, y_lab, base_loss, gen, gate)
    terms["diag_gen_cls_acc"] = hit.mean()
    terms["diag_gen_conf"] = conf.mean()
    terms["diag_gate_pass"] = gate.mean()
    return terms


def _real_and_revised_loss(
    out: DescriptorOutput, y_lab: Tensor, base_loss: BaseLoss, gen: GeneratedRows, gate: Tensor
) -> Tensor:
    """The base loss on labeled real rows plus the gated-in revised rows (labeled by their conditioning)."""
    n_lab, n_real = y_lab.shape[0], gen.start
    n_gen = out.u.shape[0] - gen.extra - gen.start
    dev = out.u.device
    keep = torch.cat([torch.ones(n_lab, dtype=torch.bool, device=dev), gate.bool().repeat(n_gen // gen.n)])
    rows = torch.cat([torch.ones(n_lab, dtype=torch.bool, device=dev),
                      torch.zeros(n_real - n_lab, dtype=torch.bool, device=dev),
                      torch.ones(n_gen, dtype=torch.bool, device=dev),
                      torch.zeros(gen.extra, dtype=torch.bool, device=dev)])
    aug_out = out.hash_output(slice(0, None)).select(rows)
    return base_loss(aug_out, torch.cat([y_lab, gen.labels]), keep).total
