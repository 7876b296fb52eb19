"""CoopHash's multipurpose descriptor: one bottom-up trunk (no batch norm) with four heads.

Heads (DESIGN.md §1): density ``f_θ(x)`` (a scalar; ``p_θ(x) ∝ exp(f_θ(x))·N(x; 0, s²I)``), hash
``u = tanh(W_h φ(x))``, latent ``q_θ(z|x) = N(μ(x), diag σ²(x))`` and category logits ``l(x)``.

The density comes in two forms (``density``):

* ``"separate"``: its own head on the trunk features (JEM's unconditional variant): maximum likelihood on
  unlabeled images reaches the category and hash heads only through the shared trunk;
* ``"tied"`` (JEM, Grathwohl et al. 2019): the density *is* a function of the category logits,
  single-label ``f(x) = log Σ_y exp l_y(x)`` and multi-label ``f(x) = Σ_k softplus(l_k(x))`` (= the log of
  the sum over all 2^C label subsets y of ``exp Σ_k y_k l_k(x)``), so maximum likelihood on unlabeled images
  trains the very logits and trunk features that the classifier and the hash head read.  The label-aware
  revision energy ``f(x) + log p(y|x)`` is then exactly ``l_y(x)`` (single-label; for a multi-hot y in the
  single-label form the mean of its labels' logits) or ``Σ_k y_k l_k(x)`` (multi-label), computed directly
  (:func:`label_energy`).  The separate density head still exists (checkpoints keep one layout) but is unused.

The latent head is its own submodule (:attr:`MultipurposeDescriptor.latent_head`) because it is trained in
the generator's phase on the ELBO, never in the descriptor's; it reads *detached* trunk features so the
generator phase sends no gradient into the trunk.  The density head may have its own hidden layer and its
gradient into the shared trunk can be scaled down (``grad_scale``) without changing its value or its
gradient with respect to the input image (Langevin revision always uses the unscaled energy).  In the tied
form the scale applies the same way, to the trunk features that feed the density's logits: the category
head's own weights get the density's full gradient, the trunk a scaled one.

:class:`CategoryEMA` is an exponential moving average of the trunk and the category head: a classifier that
revision never writes to, used to gate generated pairs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coophash.nets.heads import CategoryHead, HashHead
from coophash.nets.output import HashOutput
from coophash.nets.registry import create_backbone

__all__ = [
    "MultipurposeDescriptor", "DescriptorOutput", "DescriptorEncoder", "LatentHead", "DensityHead", "scale_grad",
    "log_p_y_given_x", "tied_density", "label_energy", "CategoryEMA", "DENSITY_FORMS",
]

#: The density forms of :class:`MultipurposeDescriptor` (see the module docstring).
DENSITY_FORMS = ("separate", "tied")


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        """Return ``x`` unchanged (a view-free copy is not needed)."""
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        """Scale the gradient."""
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` with its backward gradient multiplied by ``scale`` (identity when ``scale == 1``)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _ScaleGrad.apply(x, float(scale))


def log_p_y_given_x(logits: Tensor, y: Tensor, multi_label: bool) -> Tensor:
    """Per-row ``log p(y|x)``: softmax over classes (single-label, mean over the row's labels) or Bernoulli."""
    if multi_label:
        return -F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=1)
    logp = F.log_softmax(logits, dim=1)
    return (logp * y).sum(dim=1) / y.sum(dim=1).clamp_min(1.0)


def tied_density(logits: Tensor, multi_label: bool) -> Tensor:
    """JEM's density from category logits, per row: ``logsumexp_y l_y`` or (multi-label) ``Σ_k softplus(l_k)``."""
    if multi_label:
        return F.softplus(logits).sum(dim=1)
    return torch.logsumexp(logits, dim=1)


def label_energy(logits: Tensor, y: Tensor, multi_label: bool) -> Tensor:
    """The tied form's label-aware energy ``f(x) + log p(y|x)`` computed directly, per row.

    Multi-label: ``Σ_k y_k l_k``.  Single-label: ``Σ_k y_k l_k / Σ_k y_k`` (``l_y`` for a one-hot y; the mean of
    its labels' logits for a multi-hot one, matching :func:`log_p_y_given_x`'s mean over the row's labels).
    """
    s = (logits * y.to(logits.dtype)).sum(dim=1)
    if multi_label:
        return s
    return s / y.to(logits.dtype).sum(dim=1).clamp_min(1.0)


def _kaiming_init(module: nn.Module, negative_slope: float = 0.2) -> None:
    """He-normal (fan-in, leaky ReLU) weights and zero biases for every conv and linear layer of ``module``.

    PyTorch's default init shrinks activations layer after layer in a trunk without normalisation, which
    leaves tanh hash outputs near 0 (a saddle of pairwise losses) and slows training.
    """
    from torch.nn.utils import parametrize

    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
            nn.init.kaiming_normal_(w, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DensityHead(nn.Module):
    """Scalar density ``f_θ`` from trunk features: linear, or with its own hidden layer (``hidden > 0``)."""

    def __init__(self, in_features: int, hidden: int = 0, negative_slope: float = 0.2) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_features, hidden), nn.LeakyReLU(negative_slope), nn.Linear(hidden, 1)
            )
        else:
            self.net = nn.Linear(in_features, 1)

    def forward(self, features: Tensor) -> Tensor:
        """Return ``f_θ`` of shape (N,)."""
        return self.net(features).squeeze(1)


class LatentHead(nn.Module):
    """The inference head ``q(z|x) = N(μ, diag σ²)``: returns ``(μ, log σ)`` of shape (N, d) each."""

    def __init__(self, in_features: int, latent_dim: int, hidden: int = 256, max_log_sigma: float = 2.0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.max_log_sigma = max_log_sigma
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)``; ``log σ`` is clamped to ``[-max, max]`` for numerical safety."""
        mu, log_sigma = self.net(features).chunk(2, dim=1)
        return mu, log_sigma.clamp(-self.max_log_sigma * 3, self.max_log_sigma)


@dataclass
class DescriptorOutput:
    """Everything the descriptor says about a batch: features, hash pre/u, class logits and density f."""

    features: Tensor
    pre: Tensor
    u: Tensor
    logits: Tensor
    f: Tensor

    def hash_output(self, rows: Optional[slice | Tensor] = None) -> HashOutput:
        """The hashing part as a :class:`HashOutput` (optionally only ``rows``), for the supervised losses."""
        out = HashOutput(features=self.features, pre=self.pre, u=self.u, logits=self.logits)
        return out if rows is None else out.select(rows)


class MultipurposeDescriptor(nn.Module):
    """Trunk φ (a registered backbone, default ``smallconv-nobn``) + density, hash, latent and category heads."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        nbits: int,
        n_classes: int,
        latent_dim: int = 64,
        backbone: str = "smallconv-nobn",
        multi_label: bool = False,
        density_hidden: int = 0,
        spectral_norm: bool = False,
        init: str = "kaiming",
        trunk_norm: str = "none",
        density: str = "separate",
        **backbone_kw: object,
    ) -> None:
        super().__init__()
        if init not in ("kaiming", "default"):
            raise ValueError(f"init must be 'kaiming' or 'default', got {init!r}")
        if density not in DENSITY_FORMS:
            raise ValueError(f"density must be one of {DENSITY_FORMS}, got {density!r}")
        self.density_form = density
        if trunk_norm not in ("none", "group", "batch"):
            raise ValueError(f"trunk_norm must be 'none', 'group' or 'batch', got {trunk_norm!r}")
        smallconv_family = backbone.startswith("smallconv")
        if smallconv_family:
            backbone_kw.setdefault("spectral_norm", spectral_norm)
        if trunk_norm == "group":
            # per-sample normalisation (GroupNorm after every conv, LayerNorm after the linear): smallconv's own
            # ``norm="group"`` (the ``smallconv-gn`` backbone), which couples no two images of a batch, so energies
            # stay comparable across batches and Langevin revision of one image does not depend on the others
            if not smallconv_family:
                raise ValueError(f"trunk_norm='group' needs a smallconv trunk (smallconv-nobn), got {backbone!r}")
            backbone_kw["norm"] = "group"
        self.trunk = create_backbone(backbone, in_channels=in_channels, image_size=image_size, **backbone_kw)
        has_bn = any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in self.trunk.modules())
        if has_bn != (trunk_norm == "batch"):
            raise ValueError(
                f"backbone {backbone!r} {'has' if has_bn else 'has no'} batch norm but trunk_norm is "
                f"{trunk_norm!r}: use smallconv-nobn for none/group, a batch-norm trunk (smallconv) for batch"
            )
        if init == "kaiming":
            _kaiming_init(self.trunk)
        nf = int(getattr(self.trunk, "num_features"))
        self.num_features = nf
        self.nbits = nbits
        self.n_classes = n_classes
        self.multi_label = multi_label
        self.density_head = DensityHead(nf, density_hidden)
        self.hash_head = HashHead(nf, nbits)
        self.category_head = CategoryHead(nf, n_classes)
        self.latent_head = LatentHead(nf, latent_dim)

    def descriptor_modules(self) -> list[nn.Module]:
        """The parts trained in the descriptor step (everything but the latent head)."""
        return [self.trunk, self.density_head, self.hash_head, self.category_head]

    @property
    def tied(self) -> bool:
        """True when the density is the logsumexp of the category logits (JEM's form)."""
        return self.density_form == "tied"

    def density_of_features(self, feats: Tensor, logits: Optional[Tensor] = None, grad_scale: float = 1.0) -> Tensor:
        """``f_θ`` from trunk features ``feats = trunk(x)`` (``logits``: the category head's on the same, unscaled
        features, reused by the tied form; ``grad_scale`` scales the density's gradient into the trunk)."""
        if not self.tied:
            return self.density_head(scale_grad(feats, grad_scale))
        if logits is None or grad_scale != 1.0:
            logits = self.category_head(scale_grad(feats, grad_scale))
        return tied_density(logits, self.multi_label)

    def forward(self, x: Tensor, density_grad_scale: float = 1.0) -> DescriptorOutput:
        """All heads but the latent one; ``density_grad_scale`` scales the density gradient into the trunk."""
        feats = self.trunk(x)
        pre = self.hash_head(feats)
        logits = self.category_head(feats)
        return DescriptorOutput(
            features=feats,
            pre=pre,
            u=torch.tanh(pre),
            logits=logits,
            f=self.density_of_features(feats, logits, density_grad_scale),
        )

    def density(self, x: Tensor) -> Tensor:
        """``f_θ(x)`` of shape (N,) (higher = more probable)."""
        return self.density_of_features(self.trunk(x))

    def energy(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The revision target ``f_θ(x) + log p_θ(y|x)`` (label-aware) or ``f_θ(x)`` when ``y`` is None.

        Tied form: ``l_y(x)`` (:func:`label_energy`), equal to ``f + log p(y|x)`` but computed directly.
        """
        feats = self.trunk(x)
        if y is None:
            return self.density_of_features(feats)
        logits = self.category_head(feats)
        if self.tied:
            return label_energy(logits, y, self.multi_label)
        return self.density_head(feats) + log_p_y_given_x(logits, y, self.multi_label)

    def encode(self, x: Tensor) -> Tensor:
        """Continuous hash outputs ``u`` in (-1, 1); the code is ``1[u >= 0]``."""
        return torch.tanh(self.hash_head(self.trunk(x)))

    def infer_latent(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` of ``q(z|x)`` from (detached) trunk features."""
        return self.latent_head(features.detach())


class CategoryEMA(nn.Module):
    """An exponential moving average of a descriptor's trunk and category head: ``logits = head(trunk(x))``.

    It is never a target of revision and never trained by gradient: :meth:`update` moves every parameter
    towards the descriptor's, ``θ_ema ← d·θ_ema + (1 − d)·θ``, and copies the buffers (spectral norm's power
    iteration vectors).  Its parameters are ordinary checkpointed state of the module that holds it.
    """

    def __init__(self, descriptor: MultipurposeDescriptor) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(descriptor.trunk)
        self.category_head = copy.deepcopy(descriptor.category_head)
        for p in self.parameters():
            p.requires_grad_(False)

    def _pairs(self, descriptor: MultipurposeDescriptor) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.trunk, descriptor.trunk), (self.category_head, descriptor.category_head)]

    @torch.no_grad()
    def update(self, descriptor: MultipurposeDescriptor, decay: float) -> None:
        """Move the average towards ``descriptor`` by ``1 − decay``; copy its buffers."""
        for mine, theirs in self._pairs(descriptor):
            for p, q in zip(mine.parameters(), theirs.parameters()):
                p.mul_(decay).add_(q.detach(), alpha=1.0 - decay)
            for b, c in zip(mine.buffers(), theirs.buffers()):
                b.copy_(c)

    def forward(self, x: Tensor) -> Tensor:
        """Category logits (N, C) of the averaged network."""
        return self.category_head(self.trunk(x))


class DescriptorEncoder(nn.Module):
    """The test-time network: trunk + hash head of a descriptor, returning a :class:`HashOutput`."""

    def __init__(self, descriptor: MultipurposeDescriptor) -> None:
        super().__init__()
        self.descriptor = descriptor

    def forward(self, x: Tensor) -> HashOutput:
        """Images -> HashOutput(features, pre, u, logits)."""
        d = self.descriptor
        feats = d.trunk(x)
        pre = d.hash_head(feats)
        return HashOutput(features=feats, pre=pre, u=torch.tanh(pre), logits=d.category_head(feats))

    def encode(self, x: Tensor) -> Tensor:
        """Continuous codes u."""
        return self.descriptor.encode(x)
