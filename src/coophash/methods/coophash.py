"""CoopHash: a multipurpose descriptor and a contrastive pair generator learned by variational MCMC teaching.

One training step is three phases of the shared trainer (DESIGN.md §1):

1. ``revise`` (no optimiser): for ``coop_pairs`` real labeled anchors (x, y) draw z and y⁻ (sharing no label
   with y), generate the contrastive pair ``x̂⁺ = G(z, y)``, ``x̂⁻ = G(z, y⁻)`` (optionally ``G(z', y)``) and
   revise it by K Langevin steps on the frozen descriptor's label-aware log-density
   ``f_θ(x) + log p_θ(y|x)`` (:mod:`coophash.methods.langevin`).  Writes ``ctx["coop"]``.
2. ``descriptor`` (trunk, density, hash and category heads, the base loss):
   ``L_D = r·w_ebm·([mean f(x̃) − mean f(x_real)] + γ·mean(f(x̃)² + f(x_real)²))
   + λ_h·(L_base(real labeled) + r·λ_t·triplet(x, x̃⁺, x̃⁻) + r·λ_g·L_base(real ∪ revised))
   + λ_c·L_cls(real labeled) + λ_q·mean ‖u − (2b − 1)‖²/K``
   with revised samples as detached inputs and the ramp ``r`` rising from 0 to 1 over ``coop_ramp_epochs``
   after ``coop_warmup_epochs`` of supervised-only training.  Every training image (labeled or not) enters
   the density term; only labeled ones enter the hash, category and quantisation terms.
3. ``generator`` (generator + latent head): the ELBO of the revised samples
   ``‖x̃ − G(μ + σ·ε, y)‖²/(2σ_g²) + β·KL(q(z|x̃) ‖ N(0, I))``, with ``q`` read from detached trunk features.

Options (all off by default, which is the behaviour above):

* ``coop_density=tied`` (JEM): ``f(x) = logsumexp_y l_y(x)`` of the category logits (multi-label
  ``Σ_k softplus(l_k)``), label-aware revision energy ``l_y(x)`` (:mod:`coophash.nets.descriptor`);
  ``coop_density_grad_scale`` still scales the density's gradient into the trunk features.
* ``coop_buffer_size > 0``: a replay buffer of persistent chains (:mod:`coophash.methods.replay`), a
  checkpointed module.  New chains are generator samples ``G(z, y)`` for labels drawn from the labeled batch; each step
  ``coop_buffer_batch`` chains are drawn (``coop_buffer_reinit`` of them restarted), revised together with the
  pairs by the same K Langevin steps, written back, and enter the density contrast as extra negatives (never a
  hash term).  ``coop_chain_init=noise`` (the "no generator" ablation): chains restart from uniform noise, no
  pairs are generated (so no triplet, gen-hash or generator step); without a buffer ``coop_buffer_batch``
  short chains start from noise each step.
* ``coop_data_noise``: Gaussian noise on the real images of the descriptor's forward pass (training only).
* ``coop_contrast``: linear, softplus or logistic density contrast (:mod:`coophash.losses.coophash`).
* ``coop_pseudo_weight`` / ``coop_pseudo_hash_weight``: pseudo-labels from the (detached) logits of the weak
  unlabeled rows of the same forward pass teach their strong views (``strong_augment``, one more forward pass),
  through the class loss and the base hash loss; active from the first step, independent of the ramp.
* ``coop_gate``: what gates the generated pairs at ``coop_gate_confidence``: ``head`` (the descriptor's own
  category head, which the label-aware revision wrote to), ``ema`` (an EMA copy of trunk + category head,
  checkpointed, evaluated on a strong view of the revised samples) or ``none``.
* ``coop_gen_diversity``: the generator's mode-seeking term (MSGAN) on the positives, ``G(z, y)`` against
  ``G(z', y)`` with a fresh latent (against one prototype per class).
* ``coop_gen_class_weight``: a class loss on ``G(z, y)`` through the descriptor's category head, frozen in the
  generator phase and on running batch-norm statistics (AC-GAN's auxiliary classifier): the generator is asked for
  images the head reads as ``y`` the way it reads test images.

Terms whose name starts with ``diag_`` are diagnostics (not part of the total): energy gap, revision
displacement, the category head's accuracy on generated samples against their conditioning labels, the
gate's pass rate, the fraction of confident pseudo-labels, the generator's per-pixel reconstruction error.
A NaN or exploding energy raises :class:`TrainingDiverged` (the last good checkpoint is left intact).  Test time uses only trunk + hash head; ``ood_score(x) = −f_θ(x)``.

Every term is a formula in :mod:`coophash.losses.coophash`; this module builds the networks and optimisers
and wires the formulas into the three phases, with the warm-up/ramp schedule and the divergence guards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from coophash.config import TrainConfig
from coophash.losses import create_loss
from coophash.losses.base import LossOutput, sum_terms
from coophash.losses.classification import class_loss
from coophash.data.augment import strong_augment
from coophash.losses.coophash import (
    CONTRASTS,
    DescriptorWeights,
    GeneratedRows,
    PseudoViews,
    descriptor_objective,
    elbo_terms,
    known_latent_terms,
    mode_seeking_term,
)
from coophash.losses.distributed import global_batch_loss, rank_share
from coophash.methods.base import DataInfo, Method, register_method
from coophash.methods.langevin import LangevinConfig, LangevinStats, langevin_revise
from coophash.methods.phases import Phase, TrainingDiverged
from coophash.methods.replay import ChainDraw, ReplayBuffer
from coophash.nets.descriptor import (
    DENSITY_FORMS,
    CategoryEMA,
    DescriptorEncoder,
    DescriptorOutput,
    MultipurposeDescriptor,
    log_p_y_given_x,
)
from coophash.nets.ema import WeightEMA
from coophash.nets.norm import (
    capture_batch_statistics,
    frozen_norm_statistics,
    own_batch_statistics,
    reference_statistics,
    running_statistics,
)
from coophash.nets.pair_generator import PairGenerator

__all__ = ["CoopHash", "CoopHashArgs", "CHAIN_INITS", "GATES", "GEN_BN_MODES"]

#: Where Langevin chains start (``coop_chain_init``) and what gates generated pairs (``coop_gate``).
CHAIN_INITS = ("generator", "noise")
GATES = ("none", "head", "ema")
#: How batch norm sees generated images and chains (with a batch-norm trunk): running statistics, a pass of their own,
#: or the statistics of the step's real batch.
GEN_BN_MODES = ("running", "separate", "reference")

log = logging.getLogger(__name__)


def _h(text: str) -> dict[str, str]:
    """Field metadata holding the CLI help text."""
    return {"help": text}


@dataclass
class CoopHashArgs:
    """Every CoopHash hyperparameter (DESIGN.md §1 plus recipe switches); defaults are ours, see docs/coophash.md."""

    # networks
    coop_latent_dim: int = field(default=64, metadata=_h("latent dimension d of the generator and q(z|x)"))
    coop_gen_width: int = field(default=32, metadata=_h("base channel width of the pair generator"))
    coop_density_hidden: int = field(default=0, metadata=_h("hidden units of the density head's own layer (0: linear)"))
    coop_spectral_norm: bool = field(default=False, metadata=_h("spectral norm on the descriptor trunk's weights"))
    coop_init: str = field(default="kaiming", metadata=_h("descriptor trunk init: kaiming (He-normal, leaky ReLU) or default (PyTorch's)"))
    coop_trunk_norm: str = field(default="none", metadata=_h("normalisation in the trunk: none, group (GroupNorm/LayerNorm, per sample) or batch (the batch-norm trunk smallconv; generated images never update its running statistics: see --coop-gen-bn)"))
    coop_gen_bn: str = field(default="running", metadata=_h("with --coop-trunk-norm batch, how batch norm sees generated images and chains: running (its running statistics, as test images), separate (a pass of their own on their batch's statistics, as fakereg's --fake-bn separate) or reference (the statistics of the step's real batch, as virtual batch norm: real and generated images normalised alike, per image)"))
    coop_s: float = field(default=0.016, metadata=_h("std s of the reference Gaussian N(0, s^2 I) of p_theta (CoopNets form)"))
    # Langevin revision
    langevin_form: str = field(default="sgld", metadata=_h("Langevin parameterisation: sgld or coopnets"))
    langevin_steps: int = field(default=5, metadata=_h("number K of Langevin revision steps"))
    langevin_step_size: float = field(default=1.0, metadata=_h("SGLD gradient step size alpha"))
    langevin_noise_std: float = field(default=0.01, metadata=_h("SGLD noise std sigma"))
    langevin_delta: float = field(default=0.002, metadata=_h("CoopNets step delta"))
    langevin_noise: bool = field(default=True, metadata=_h("add Langevin noise (false: gradient ascent)"))
    langevin_label_aware: bool = field(default=True, metadata=_h("revise on f(x) + log p(y|x) (false: on f(x) only)"))
    # descriptor loss
    coop_pairs: int = field(default=16, metadata=_h("labeled anchors per step that get a generated contrastive pair"))
    coop_interval: int = field(default=1, metadata=_h("run revision and the generator step every N steps"))
    coop_ebm_weight: float = field(default=1.0, metadata=_h("weight of the EBM (density) term"))
    coop_gamma: float = field(default=0.01, metadata=_h("energy stabiliser gamma on f(x)^2"))
    coop_density_grad_scale: float = field(default=0.1, metadata=_h("scale of the density term's gradient into the shared trunk"))
    coop_base_loss: str = field(default="", metadata=_h("supervised hashing loss on real labeled images ('' = --loss)"))
    coop_hash_weight: float = field(default=1.0, metadata=_h("lambda_h, weight of the hash losses"))
    coop_triplet_weight: float = field(default=1.0, metadata=_h("lambda_t, weight of the triplet on (real, revised+, revised-)"))
    coop_triplet_margin: float = field(default=0.25, metadata=_h("triplet margin as a fraction of the code length (in bits)"))
    coop_cls_weight: float = field(default=1.0, metadata=_h("lambda_c, weight of the category loss on real labeled images"))
    coop_quant_weight: float = field(default=0.01, metadata=_h("lambda_q, weight of mean ||u - (2b-1)||^2 / K"))
    coop_gen_hash_weight: float = field(default=0.0, metadata=_h("weight of the base loss on real + revised samples (revised as extra labeled data)"))
    coop_gate_confidence: float = field(default=0.0, metadata=_h("use a generated pair only if the category head gives its labels at least this probability"))
    coop_second_positive: bool = field(default=False, metadata=_h("also generate G(z', y) with a fresh z' (a second positive)"))
    # generator / ELBO
    coop_sigma_g: float = field(default=0.3, metadata=_h("sigma_g of the generator's Gaussian reconstruction"))
    coop_beta: float = field(default=2.0, metadata=_h("beta weight of the KL term of the ELBO"))
    coop_gen_lr: float = field(default=3e-4, metadata=_h("learning rate of the generator and latent head (Adam)"))
    coop_desc_lr: float = field(default=0.0, metadata=_h("learning rate of the descriptor (0 = --lr)"))
    coop_gen_target: str = field(default="elbo", metadata=_h("generator target: elbo (ELBO with q(z|x~)), known (CoopNets: regress x~ on the z that made it) or both"))
    coop_gen_diversity: float = field(default=0.0, metadata=_h("weight of the generator's mode-seeking term (MSGAN): two latents of one label must give different images (0 = off)"))
    coop_gen_class_weight: float = field(default=0.0, metadata=_h("weight of a class loss on G(z, y) through the descriptor's (frozen) category head, as AC-GAN's auxiliary classifier: the generator is asked for images the head recognises as y (0 = off)"))
    coop_gen_real_weight: float = field(default=0.0, metadata=_h("weight of an ELBO term on real labeled images (conditional VAE warm start)"))
    # schedule / recipe
    coop_warmup_epochs: float = field(default=1.0, metadata=_h("epochs of supervised-only training before cooperation starts"))
    coop_ramp_epochs: float = field(default=2.0, metadata=_h("epochs over which the cooperative terms ramp from 0 to full weight"))
    coop_energy_limit: float = field(default=1000.0, metadata=_h("divergence guard: stop when |mean f| exceeds this"))
    # ablations
    coop_no_triplet: bool = field(default=False, metadata=_h("ablation: no triplet on generated pairs"))
    coop_no_revision: bool = field(default=False, metadata=_h("ablation: no Langevin revision (generator samples used raw)"))
    coop_no_unlabeled_density: bool = field(default=False, metadata=_h("ablation: unlabeled images left out of the density term"))
    # density form and stability (JEM / IGEBM)
    coop_density: str = field(default="separate", metadata=_h("density form: tied (JEM: f = logsumexp of the category logits, revision energy l_y) or separate (its own head)"))
    coop_contrast: str = field(default="linear", metadata=_h("density contrast: linear (mean f(gen) - mean f(real)), softplus (of that difference) or logistic (real-vs-generated, logit f)"))
    coop_data_noise: float = field(default=0.0, metadata=_h("std of Gaussian noise added to real images in the descriptor's training forward pass (JEM: 0.03)"))
    coop_buffer_size: int = field(default=0, metadata=_h("persistent Langevin chains in a replay buffer, extra density negatives (0 = off; e.g. 2000)"))
    coop_buffer_batch: int = field(default=32, metadata=_h("buffer chains drawn, continued by the Langevin steps and written back per step"))
    coop_buffer_reinit: float = field(default=0.05, metadata=_h("fraction of the drawn buffer chains restarted each step"))
    coop_chain_init: str = field(default="generator", metadata=_h("where chains start: generator (G(z, y)) or noise (uniform in [-1, 1]; ablation: no generator, no generated pairs)"))
    # codes from unlabeled images and generated pairs
    coop_pseudo_threshold: float = field(default=0.95, metadata=_h("confidence of the category head on a weak view for its pseudo-label to count"))
    coop_pseudo_weight: float = field(default=0.0, metadata=_h("weight of the pseudo-label consistency CE on strong views of unlabeled images"))
    coop_pseudo_hash_weight: float = field(default=0.0, metadata=_h("weight of the base hash loss on labeled rows + confident pseudo-labeled strong views (added to the plain hash loss)"))
    coop_gate: str = field(default="head", metadata=_h("what gates generated pairs: none, head (the descriptor's own category head) or ema (an EMA classifier on a strong view, never revised towards)"))
    coop_ema_decay: float = field(default=0.999, metadata=_h("decay of the EMA classifier of --coop-gate ema"))
    coop_ema_encode: float = field(default=0.0, metadata=_h("decay of an EMA of the descriptor's weights that encodes (and is validated); 0: the trained weights"))

    def __post_init__(self) -> None:
        if self.langevin_form not in ("sgld", "coopnets"):
            raise ValueError(f"langevin_form must be sgld or coopnets, got {self.langevin_form!r}")
        if self.coop_pairs < 1:
            raise ValueError(f"coop_pairs must be >= 1, got {self.coop_pairs}")
        if self.coop_interval < 1:
            raise ValueError(f"coop_interval must be >= 1, got {self.coop_interval}")
        if self.coop_gen_target not in ("elbo", "known", "both"):
            raise ValueError(f"coop_gen_target must be elbo, known or both, got {self.coop_gen_target!r}")
        if self.langevin_steps < 0:
            raise ValueError(f"langevin_steps must be >= 0, got {self.langevin_steps}")
        choices = {"coop_density": DENSITY_FORMS, "coop_contrast": CONTRASTS, "coop_chain_init": CHAIN_INITS,
                   "coop_gate": GATES, "coop_gen_bn": GEN_BN_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.coop_buffer_size < 0 or self.coop_buffer_batch < 1:
            raise ValueError("coop_buffer_size must be >= 0 and coop_buffer_batch >= 1")
        if not 0.0 <= self.coop_ema_encode < 1.0:
            raise ValueError(f"coop_ema_encode must be in [0, 1), got {self.coop_ema_encode}")
        for name in ("coop_buffer_reinit", "coop_pseudo_threshold", "coop_ema_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("coop_data_noise", "coop_gen_diversity", "coop_gen_class_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.coop_gen_bn != "running" and self.coop_trunk_norm != "batch":
            raise ValueError(f"coop_gen_bn={self.coop_gen_bn!r} needs coop_trunk_norm=batch (a trunk without batch "
                             f"norm has no statistics to keep apart), got coop_trunk_norm={self.coop_trunk_norm!r}")


class _Clock(nn.Module):
    """Checkpointed step counter (so warm-up and ramp survive a resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))


@register_method("coophash")
class CoopHash(Method):
    """CoopHash (DESIGN.md §1): descriptor + contrastive pair generator, cooperative training."""

    uses_unlabeled = True
    Args = CoopHashArgs
    # The validated recipe (docs/coophash.md, "Scarce labels"; best validation mAP at 2% labels among the variants
    # of benchmarks/scarce.yaml, entry coop-recipe-ms1): the baselines' batch-norm trunk with generated images and
    # chains in a batch-norm pass of their own, unlabeled images for the density and pseudo-labels, pseudo-labels into
    # the hash and class losses, an EMA that encodes, revision and the generator step every other step, and the
    # generator's mode-seeking term (weight 1).
    config_defaults: ClassVar[dict[str, Any]] = {
        "backbone": "smallconv",
        "unlabeled_batch_size": 64,
        "method_args": {
            "coop_pseudo_weight": 1.0, "coop_pseudo_hash_weight": 1.0, "coop_gen_hash_weight": 1.0,
            "coop_gen_target": "known", "coop_gamma": 0.1, "coop_density_hidden": 128, "coop_density_grad_scale": 0.5,
            "coop_trunk_norm": "batch", "coop_gen_bn": "separate", "coop_ema_encode": 0.999, "coop_interval": 2,
            "coop_gen_diversity": 1.0,
        },
    }

    @classmethod
    def resolve_config(cls, data: dict[str, Any], given: set[str], user_args: dict[str, Any]) -> dict[str, Any]:
        """The recipe on a trunk without batch norm, and the trunk recorded.  With ``coop_trunk_norm`` none or group
        the recipe's batch-norm mode for generated images (``coop_gen_bn: separate``) does not apply unless the user
        asked for it (then the arguments' check reports the contradiction), and the trunk is ``smallconv-nobn``
        (``smallconv`` has batch norm: a user's explicit ``smallconv`` with those is a contradiction)."""
        args = dict(data.get("method_args") or {})
        trunk_norm = args.get("coop_trunk_norm", CoopHashArgs.coop_trunk_norm)
        if trunk_norm == "batch":
            return data
        if "coop_gen_bn" not in user_args and args.get("coop_gen_bn", CoopHashArgs.coop_gen_bn) != "running":
            args["coop_gen_bn"] = "running"  # the only mode of a trunk without batch-norm statistics
            data = {**data, "method_args": args}
        if data.get("backbone") != "smallconv":
            return data
        if "backbone" in given:
            raise ValueError(f"backbone 'smallconv' has batch norm but coop_trunk_norm is {trunk_norm!r}: use backbone "
                             "smallconv-nobn for a trunk without batch norm, or coop_trunk_norm batch")
        return {**data, "backbone": "smallconv-nobn"}

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        a: CoopHashArgs = self.args
        backbone = cfg.backbone
        if backbone == "smallconv" and a.coop_trunk_norm != "batch":
            # a config written before the CLI and the API recorded the trunk (resolve_config), or a suite entry,
            # whose fields are taken literally: the descriptor's trunk without batch norm, as it always was
            log.warning("coophash: backbone smallconv with coop_trunk_norm=%s builds smallconv-nobn (no batch norm)",
                        a.coop_trunk_norm)
            backbone = "smallconv-nobn"
        self.desc = MultipurposeDescriptor(
            info.channels, info.image_size, cfg.bits, info.n_classes, latent_dim=a.coop_latent_dim,
            backbone=backbone, multi_label=info.multi_label, density_hidden=a.coop_density_hidden,
            spectral_norm=a.coop_spectral_norm, init=a.coop_init, trunk_norm=a.coop_trunk_norm,
            density=a.coop_density, **cfg.backbone_args,
        ).to(device)
        self.buffer: Optional[ReplayBuffer] = None
        if a.coop_buffer_size > 0:
            self.buffer = ReplayBuffer(a.coop_buffer_size, info.channels, info.image_size, info.n_classes).to(device)
        self.ema: Optional[CategoryEMA] = CategoryEMA(self.desc).to(device) if a.coop_gate == "ema" else None
        self.gen = PairGenerator(a.coop_latent_dim, info.n_classes, info.channels, info.image_size,
                                 width=a.coop_gen_width).to(device)
        loss_name = a.coop_base_loss or cfg.loss
        self.loss = create_loss(loss_name, cfg.bits, info.n_classes, seed=cfg.seed, multi_label=info.multi_label,
                                **cfg.loss_args).to(device)
        self.clock = _Clock().to(device)
        desc_params = [p for m in self.desc.descriptor_modules() for p in m.parameters()] + list(self.loss.parameters())
        self.desc_opt = torch.optim.Adam(desc_params, lr=a.coop_desc_lr or cfg.lr, weight_decay=cfg.weight_decay)
        gen_params = list(self.gen.parameters()) + list(self.desc.latent_head.parameters())
        self.gen_opt = torch.optim.Adam(gen_params, lr=a.coop_gen_lr, betas=(0.5, 0.999))
        self.langevin = LangevinConfig(
            steps=0 if a.coop_no_revision else a.langevin_steps, form=a.langevin_form,
            step_size=a.langevin_step_size, noise_std=a.langevin_noise_std, delta=a.langevin_delta, s=a.coop_s,
            noise=a.langevin_noise,
        )
        self.weights = DescriptorWeights(
            hash=a.coop_hash_weight, cls=a.coop_cls_weight, quant=a.coop_quant_weight, ebm=a.coop_ebm_weight,
            gamma=a.coop_gamma, triplet=0.0 if a.coop_no_triplet else a.coop_triplet_weight,
            triplet_margin=a.coop_triplet_margin * cfg.bits, gen_hash=a.coop_gen_hash_weight,
            gate_confidence=0.0 if a.coop_gate == "none" else a.coop_gate_confidence, contrast=a.coop_contrast,
            pseudo=a.coop_pseudo_weight, pseudo_hash=a.coop_pseudo_hash_weight,
            pseudo_threshold=a.coop_pseudo_threshold,
        )
        self.steps_per_epoch = max(1, math.ceil(info.n_train / cfg.batch_size))
        self.weight_ema = WeightEMA(self.desc).to(device) if a.coop_ema_encode > 0 else None
        self._encoder = DescriptorEncoder(self.desc if self.weight_ema is None else self.weight_ema.net)
        if cfg.unlabeled_batch_size == 0 and cfg.label_fraction < 1.0 and not a.coop_no_unlabeled_density:
            log.warning("coophash: unlabeled_batch_size is 0, so unlabeled images never reach the density term")

    # -- trainer interface ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"descriptor": self.desc, "generator": self.gen, "loss": self.loss,
                                      "clock": self.clock}
        if self.buffer is not None:
            mods["buffer"] = self.buffer
        if self.ema is not None:
            mods["ema"] = self.ema
        if self.weight_ema is not None:
            mods["weight_ema"] = self.weight_ema
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"descriptor": self.desc_opt, "generator": self.gen_opt}

    def phases(self) -> list[Phase]:
        a: CoopHashArgs = self.args
        return [
            Phase("revise", self._revise, modules=[], optimizer=None, interval=a.coop_interval),
            Phase("descriptor", self._descriptor_step, modules=[*self.desc.descriptor_modules(), self.loss],
                  optimizer=self.desc_opt),
            Phase("generator", self._generator_step, modules=[self.gen, self.desc.latent_head],
                  optimizer=self.gen_opt, interval=a.coop_interval),
        ]

    def on_step(self, global_step: int) -> None:
        self.clock.step.fill_(global_step + 1)
        self.loss.on_step()
        if self.ema is not None:  # mean teacher's warm-up: a plain average over the first 1/(1 − decay) steps
            t = global_step + 1
            self.ema.update(self.desc, min(self.args.coop_ema_decay, 1.0 - 1.0 / (t + 1)))
        if self.weight_ema is not None:
            self.weight_ema.update(self.desc, self.args.coop_ema_encode)

    def encode(self, x: Tensor) -> Tensor:
        return self._encoder.encode(x)

    def encoder(self) -> nn.Module:
        return self._encoder

    @torch.no_grad()
    def ood_score(self, x: Tensor) -> Tensor:
        """Negative label-free density ``−f_θ(x)`` per image: higher = more out-of-distribution."""
        return -self.desc.density(x)

    # -- schedule -------------------------------------------------------------------------------------
    def epoch_float(self) -> float:
        """Training progress in epochs (from the checkpointed step counter)."""
        return float(self.clock.step) / self.steps_per_epoch

    def ramp(self) -> float:
        """Weight in [0, 1] of the cooperative terms now (0 during warm-up)."""
        a: CoopHashArgs = self.args
        t = self.epoch_float() - a.coop_warmup_epochs
        if t < 0:
            return 0.0
        if a.coop_ramp_epochs <= 0:
            return 1.0
        return min(1.0, (t + 1.0 / self.steps_per_epoch) / a.coop_ramp_epochs)

    # -- phases ---------------------------------------------------------------------------------------
    def _revise(self, ctx: dict[str, Any]) -> Optional[LossOutput]:
        """Generate contrastive pairs for the first labeled anchors (and draw buffer chains); revise them all."""
        ctx.pop("coop", None)
        if self.ramp() <= 0.0:
            return None
        a: CoopHashArgs = self.args
        xs, ys, zs, n = self._make_pairs(ctx)
        chains = self._draw_chains(ctx)
        n_pair_rows = sum(x.shape[0] for x in xs)
        x_hat = torch.cat(xs + ([chains[1]] if chains else [])).detach()
        y_cond = torch.cat(ys + ([chains[2]] if chains else [])).to(x_hat.dtype)
        label = y_cond if a.langevin_label_aware else None
        with self.generated_statistics(self._reference_of(ctx)):  # running statistics never updated by samples
            x_rev, stats = langevin_revise(lambda v: self.desc.energy(v, label), x_hat, self.langevin,
                                           frozen_modules=[self.desc], final_energy=False)
        self._guard_revision(stats)
        if chains is not None and self.buffer is not None:
            self.buffer.write(chains[0].slots, x_rev[n_pair_rows:], y_cond[n_pair_rows:])
        ctx["coop"] = {"x_hat": x_hat[:n_pair_rows], "x_tilde": x_rev[:n_pair_rows], "y": y_cond[:n_pair_rows],
                       "z": torch.cat(zs) if zs else None, "n": n, "x_chain": x_rev[n_pair_rows:], "stats": stats}
        zero = torch.zeros((), device=x_hat.device)
        return LossOutput(total=zero, terms={
            "diag_displacement": torch.tensor(stats.displacement),
            "diag_grad_norm": torch.tensor(stats.grad_norm),
            "diag_f_start": torch.tensor(stats.f_start),
        })

    def _make_pairs(self, ctx: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor], int]:
        """Images, conditioning labels and latents of the generated pairs, and the number n of anchors.

        Rows: x̂⁺ (n), x̂⁻ (n), optionally a second positive (n).  None (n = 0) with ``coop_chain_init=noise``.
        """
        a: CoopHashArgs = self.args
        if a.coop_chain_init == "noise":
            return [], [], [], 0
        n = min(max(1, rank_share(a.coop_pairs)), ctx["x"].shape[0])  # this rank's share of the pairs
        with torch.no_grad():
            pairs = self.gen.make_pairs(ctx["y"][:n], self.info.multi_label, second_positive=a.coop_second_positive)
        second = pairs.x_pos2 is not None
        xs = [pairs.x_pos, pairs.x_neg] + ([pairs.x_pos2] if second else [])
        ys = [pairs.y_pos, pairs.y_neg] + ([pairs.y_pos] if second else [])
        zs = [pairs.z, pairs.z] + ([pairs.z2] if second else [])
        return xs, ys, zs, n

    def _draw_chains(self, ctx: dict[str, Any]) -> Optional[tuple[ChainDraw, Tensor, Tensor]]:
        """(draw, start images, labels) of this step's chains: buffer chains (fresh ones restarted), or, with
        ``coop_chain_init=noise`` and no buffer, ``coop_buffer_batch`` short chains from noise; else None."""
        a: CoopHashArgs = self.args
        if self.buffer is not None:
            draw = self.buffer.draw(a.coop_buffer_batch, a.coop_buffer_reinit)
        elif a.coop_chain_init == "noise":
            m, dev = a.coop_buffer_batch, ctx["x"].device
            draw = ChainDraw(slots=torch.zeros(0, dtype=torch.long, device=dev),
                             fresh=torch.ones(m, dtype=torch.bool, device=dev),
                             images=torch.zeros(m, *ctx["x"].shape[1:], device=dev),
                             labels=torch.zeros(m, ctx["y"].shape[1], device=dev))
        else:
            return None
        x, y = draw.images.clone(), draw.labels.clone()
        k = int(draw.fresh.sum())
        if k:
            x_new, y_new = self._fresh_chains(ctx, k)
            x[draw.fresh] = x_new.to(x.dtype)
            y[draw.fresh] = y_new.to(y.dtype)
        return draw, x, y

    @torch.no_grad()
    def _fresh_chains(self, ctx: dict[str, Any], k: int) -> tuple[Tensor, Tensor]:
        """``k`` new chains: labels drawn from the labeled batch, images ``G(z, y)`` or uniform noise."""
        y_lab = ctx["y"]
        y = y_lab[torch.randint(0, y_lab.shape[0], (k,)).to(y_lab.device)].float()
        if self.args.coop_chain_init == "noise":
            return torch.rand(k, *ctx["x"].shape[1:], device=y.device) * 2 - 1, y
        z = self.gen.sample_latent(k, device=y.device)
        return self.gen(z, y), y

    def _guard_revision(self, stats: LangevinStats) -> None:
        """Stop with a clear message when revision produced non-finite images or energies."""
        limit = self.args.coop_energy_limit
        if not stats.finite or not math.isfinite(stats.f_start) or abs(stats.f_start) > limit:
            raise TrainingDiverged(
                f"coophash: Langevin revision diverged at step {int(self.clock.step)} (mean f={stats.f_start:.4g}, "
                f"finite={stats.finite}, limit {limit:g}); the last good checkpoint is intact; try a smaller "
                "--langevin-step-size, a larger --coop-gamma or a smaller --lr"
            )

    def _guard_energy(self, f: Tensor, what: str) -> None:
        """Stop with a clear message when the descriptor's energy is NaN or exploding."""
        m = float(f.detach().abs().mean()) if f.numel() else 0.0
        if not math.isfinite(m) or m > self.args.coop_energy_limit:
            raise TrainingDiverged(
                f"coophash: the density f_theta on {what} is {m:.4g} at step {int(self.clock.step)} (limit "
                f"{self.args.coop_energy_limit:g}); the last good checkpoint is intact; try a larger --coop-gamma "
                "or a smaller --lr"
            )

    @torch.no_grad()
    def _reference_of(self, ctx: dict[str, Any]) -> Optional[list[tuple[Tensor, Tensor]]]:
        """With ``coop_gen_bn=reference``: the batch-norm statistics of this step's real batch (labeled and unlabeled
        rows, as the descriptor step sees them), from a pass that leaves the running statistics alone; else None."""
        if self.args.coop_gen_bn != "reference":
            return None
        with own_batch_statistics(self.desc.trunk), capture_batch_statistics(self.desc.trunk) as stats:
            self.desc.trunk(ctx["x_all"])
        return stats

    @contextlib.contextmanager
    def generated_statistics(self, reference: Optional[list[tuple[Tensor, Tensor]]] = None) -> Iterator[None]:
        """How batch norm sees generated images in revision (training and ``coophash sample`` alike): on the
        running statistics (per-image energies), with ``coop_gen_bn=separate`` on the chains' own batch
        statistics (batch-norm layers in training mode inside, whatever the mode outside), with
        ``coop_gen_bn=reference`` on ``reference``, the statistics of the step's real batch (per-image energies;
        ``coophash sample``, which has no real batch, uses the running statistics, their average); never updating
        the running ones."""
        mode = self.args.coop_gen_bn
        if mode == "reference" and reference is not None:
            context = reference_statistics(self.desc.trunk, reference)
        elif mode == "separate":
            context = own_batch_statistics(self.desc)
        else:
            context = running_statistics(self.desc)
        with context:
            yield

    def _descriptor_step(self, ctx: dict[str, Any]) -> LossOutput:
        """One forward pass of the descriptor on [real; revised; chains] images (one more on strong views of
        the unlabeled rows when pseudo-labels are on), then its objective."""
        a: CoopHashArgs = self.args
        coop = ctx.get("coop")
        r = self.ramp() if coop is not None else 0.0
        n_lab = ctx["x"].shape[0]
        n_unl = ctx["x_all"].shape[0] - n_lab
        use_pseudo = (a.coop_pseudo_weight > 0 or a.coop_pseudo_hash_weight > 0) and n_unl > 0
        density_unl = not a.coop_no_unlabeled_density and coop is not None
        x_real = ctx["x_all"] if density_unl or use_pseudo else ctx["x"]
        n_real = x_real.shape[0]
        if a.coop_data_noise > 0:
            x_real = x_real + a.coop_data_noise * torch.randn_like(x_real)
        out = self._forward_real_and_generated(x_real, coop)
        generated = None
        if coop is not None:
            n_pair_rows = coop["x_tilde"].shape[0]
            generated = GeneratedRows(start=n_real, n=coop["n"], labels=coop["y"], extra=coop["x_chain"].shape[0],
                                      density_real=None if density_unl else n_lab, gate_conf=self._ema_gate(coop))
            coop["features"] = out.features[n_real : n_real + n_pair_rows].detach()
        pseudo = None
        if use_pseudo:
            strong = self.desc(strong_augment(ctx["x_all"][n_lab:]), density_grad_scale=a.coop_density_grad_scale)
            pseudo = PseudoViews(start=n_lab, end=ctx["x_all"].shape[0], strong=strong)
        # the base loss sees the labeled rows of every rank (one process: just self.loss)
        objective = descriptor_objective(out, ctx["y"], ctx["labeled"], partial(global_batch_loss, self.loss),
                                         self.weights, self.info.multi_label, generated=generated, ramp=r,
                                         pseudo=pseudo)
        if coop is not None:  # after the objective, whose all-gathers every rank must reach
            self._guard_energy(out.f.detach()[:n_real], "real images")
            self._guard_energy(out.f.detach()[n_real:], "revised samples")
        return objective

    def _forward_real_and_generated(self, x_real: Tensor, coop: Optional[dict[str, Any]]) -> DescriptorOutput:
        """The descriptor on [real; revised; chains]: one pass without batch norm.

        With a batch-norm trunk the real rows pass on batch statistics (and update them) for every head but the
        density, whose real and generated values both come from a pass on the running statistics: compared
        under two normalisations, real and generated images would differ by that alone, and the density
        contrast would learn the difference instead of the images.  With ``coop_gen_bn=separate`` the generated
        rows take a pass of their own on their batch's statistics instead (running statistics untouched) and every
        head, the density included, reads each group's own pass.  With ``coop_gen_bn=reference`` the generated rows
        are normalised by the real rows' batch statistics of this very pass (detached), image by image.
        """
        a: CoopHashArgs = self.args
        gen = [] if coop is None else [coop["x_tilde"]] + ([coop["x_chain"]] if coop["x_chain"].shape[0] else [])
        if a.coop_trunk_norm != "batch" or not gen:
            return self.desc(torch.cat([x_real] + gen), density_grad_scale=a.coop_density_grad_scale)
        if a.coop_gen_bn == "reference":  # generated rows on the real rows' batch statistics, per image
            with capture_batch_statistics(self.desc.trunk) as stats:
                out_real = self.desc(x_real, density_grad_scale=a.coop_density_grad_scale)
            with reference_statistics(self.desc.trunk, stats):
                out_gen = self.desc(torch.cat(gen), density_grad_scale=a.coop_density_grad_scale)
            return DescriptorOutput(**{f.name: torch.cat([getattr(out_real, f.name), getattr(out_gen, f.name)])
                                       for f in dataclasses.fields(DescriptorOutput)})
        out_real = self.desc(x_real, density_grad_scale=a.coop_density_grad_scale)
        if a.coop_gen_bn == "separate":  # generated rows on their own batch's statistics, running ones untouched
            with frozen_norm_statistics(self.desc):
                out_gen = self.desc(torch.cat(gen), density_grad_scale=a.coop_density_grad_scale)
            return DescriptorOutput(**{f.name: torch.cat([getattr(out_real, f.name), getattr(out_gen, f.name)])
                                       for f in dataclasses.fields(DescriptorOutput)})
        with running_statistics(self.desc):
            out_fixed = self.desc(torch.cat([x_real] + gen), density_grad_scale=a.coop_density_grad_scale)
        n = x_real.shape[0]
        fields = {f.name: torch.cat([getattr(out_real, f.name), getattr(out_fixed, f.name)[n:]])
                  for f in dataclasses.fields(DescriptorOutput)}
        fields["f"] = out_fixed.f
        return DescriptorOutput(**fields)

    @torch.no_grad()
    def _ema_gate(self, coop: dict[str, Any]) -> Optional[Tensor]:
        """With ``coop_gate=ema``: the EMA classifier's probability of each pair row's conditioning labels, on a
        strong view of the revised sample (None otherwise, or without a threshold or pairs)."""
        if self.ema is None or self.weights.gate_confidence <= 0 or coop["n"] == 0:
            return None
        with running_statistics(self.ema):
            logits = self.ema(strong_augment(coop["x_tilde"]))
        return log_p_y_given_x(logits.float(), coop["y"].float(), self.info.multi_label).exp()

    def _generator_step(self, ctx: dict[str, Any]) -> Optional[LossOutput]:
        """ELBO of the revised samples for the generator and the latent head (trunk features detached)."""
        coop = ctx.get("coop")
        if coop is None or coop["n"] == 0:  # no cooperation yet, or no generator (coop_chain_init=noise)
            return None
        a: CoopHashArgs = self.args
        x_t, y = coop["x_tilde"], coop["y"]
        feats = coop.get("features")
        if feats is None:
            with torch.no_grad(), running_statistics(self.desc):
                feats = self.desc.trunk(x_t)
        terms: dict[str, Tensor] = {}
        if a.coop_gen_target in ("elbo", "both"):
            terms.update(self._elbo(x_t, y, feats, ""))
        known = a.coop_gen_target in ("known", "both")
        x_gen = self.gen(coop["z"], y.to(coop["z"].dtype)) if known or a.coop_gen_class_weight > 0 else None
        if known:
            terms.update(known_latent_terms(x_t, x_gen, a.coop_sigma_g))
        if a.coop_gen_diversity > 0:
            terms.update(self._mode_seeking(coop, x_gen))
        if a.coop_gen_class_weight > 0:
            # the head as it reads test images (batch norm on its running statistics, not on the batch of
            # generated images, which would standardise away a batch-wide failure); frozen here: only G learns
            with running_statistics(self.desc):
                logits = self.desc.category_head(self.desc.trunk(x_gen))
            terms["gen_class"] = a.coop_gen_class_weight * class_loss(logits.float(), y.float(), self.info.multi_label)
        if a.coop_gen_real_weight > 0:
            with torch.no_grad(), running_statistics(self.desc):
                f_real = self.desc.trunk(ctx["x"])
            real = self._elbo(ctx["x"], ctx["y"], f_real, "real_")
            terms["real_rec"] = a.coop_gen_real_weight * real["real_rec"]
            terms["real_kl"] = a.coop_gen_real_weight * real["real_kl"]
            terms["diag_real_mse"] = real["diag_real_mse"]
        return LossOutput(total=sum_terms(terms), terms=terms)

    def _mode_seeking(self, coop: dict[str, Any], x_gen: Optional[Tensor]) -> dict[str, Tensor]:
        """The mode-seeking term on the positives: ``G(z, y⁺)`` (the first rows of ``x_gen`` when given) against
        ``G(z', y⁺)`` with a fresh latent."""
        n = coop["n"]
        z1, y = coop["z"][:n], coop["y"][:n].to(coop["z"].dtype)
        z2 = self.gen.sample_latent(n, device=z1.device)
        x1 = self.gen(z1, y) if x_gen is None else x_gen[:n]
        loss, ratio = mode_seeking_term(x1, self.gen(z2, y), z1, z2, self.args.coop_gen_diversity)
        return {"mode_seeking": loss, "diag_mode_ratio": ratio}

    def _elbo(self, x: Tensor, y: Tensor, feats: Tensor, prefix: str) -> dict[str, Tensor]:
        """ELBO terms of ``x``: z drawn from q(z|x) by reparameterisation, reconstructed by the generator."""
        a: CoopHashArgs = self.args
        mu, log_sigma = self.desc.infer_latent(feats)
        z = mu + log_sigma.exp() * torch.randn_like(mu)
        x_rec = self.gen(z, y.to(z.dtype))
        return elbo_terms(x, x_rec, mu, log_sigma, a.coop_sigma_g, a.coop_beta, prefix)
