"""Stage 1 of fake-image regularised hashing (DESIGN.md §2): a DCGAN, wired into two phases for the trainer.

The method ``gan`` trains a DCGAN (:mod:`coophash.nets.dcgan`) with two phases per step, a discriminator
step then a generator step, on the non-saturating GAN loss (:mod:`coophash.losses.gan`).  Unconditional
(default) it trains on every image of the batch, labeled or not (``ctx["x_all"]``); the pipeline's GAN
stage (:func:`coophash.pipeline.gan.gan_config`) gives it label fraction 1.0, so that batches are drawn
uniformly from all training images.  Conditional (``gan_conditional``) it needs labels and trains on the
labeled images only.

The trainer selects a best epoch by validation mAP through :meth:`GanMethod.encode`.  A GAN has no hash
function, so ``encode`` is a diagnostic: the discriminator's last features through a fixed random
Gaussian projection (seeded by the run seed, stored in the checkpoint) — sign random projections (SimHash)
of D's features.

:func:`write_fakes` samples a fakes file from a trained generator; the pipeline's GAN stage
(:mod:`coophash.pipeline.gan`) calls it with the *last* generator once training is done.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from coophash.config import TrainConfig
from coophash.fakes import save_fakes
from coophash.losses.base import LossOutput
from coophash.losses.gan import discriminator_loss, generator_loss
from coophash.methods.base import DataInfo, Method, register_method
from coophash.methods.phases import Phase
from coophash.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from coophash.utils.meter import RunningMeans

__all__ = [
    "GAN_ARG_NAMES",
    "GanArgs",
    "GanMethod",
    "RandomProjection",
    "generate_fakes",
    "write_fakes",
]


@dataclass
class GanArgs:
    """Hyperparameters of the DCGAN (stage 1); the fakereg method repeats them for its one-command path."""

    gan_latent_dim: int = field(default=64, metadata={"help": "DCGAN latent dimension."})
    gan_width: int = field(default=32, metadata={"help": "DCGAN width: channels of the finest hidden layer."})
    gan_conditional: bool = field(
        default=False, metadata={"help": "Class-conditional DCGAN (trains on labeled images only)."}
    )
    gan_lr: float = field(default=2e-4, metadata={"help": "DCGAN Adam learning rate (both networks)."})
    gan_beta1: float = field(default=0.5, metadata={"help": "DCGAN Adam beta1."})
    gan_beta2: float = field(default=0.999, metadata={"help": "DCGAN Adam beta2."})
    n_fakes: int = field(default=0, metadata={"help": "Fake images to write after training (0: as many as train)."})
    gan_fakes_dtype: str = field(default="uint8", metadata={"help": "Storage of the fakes: uint8 or float16."})


GAN_ARG_NAMES = tuple(f.name for f in dataclasses.fields(GanArgs))


class RandomProjection(nn.Module):
    """A fixed Gaussian matrix (stored as a buffer): ``u = tanh(h R / sqrt(F))``, the GAN's diagnostic code."""

    def __init__(self, in_features: int, nbits: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("weight", torch.randn(in_features, nbits, generator=g))

    def forward(self, h: Tensor) -> Tensor:
        """Continuous codes in (-1, 1)."""
        return torch.tanh(h @ self.weight.to(h.dtype) / self.weight.shape[0] ** 0.5)


class _DiscriminatorCodes(nn.Module):
    """Test-time network of the GAN method: discriminator features → random projection."""

    def __init__(self, disc: DCGANDiscriminator, proj: RandomProjection) -> None:
        super().__init__()
        self.disc = disc
        self.proj = proj

    def forward(self, x: Tensor) -> Tensor:
        """Continuous codes u (N, K)."""
        return self.proj(self.disc.features(x))


@register_method("gan")
class GanMethod(Method):
    """DCGAN: discriminator and generator phases on the non-saturating loss (stage 1 of ``fakereg``)."""

    uses_unlabeled = True
    Args = GanArgs

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        a: GanArgs = self.args
        if a.gan_fakes_dtype not in ("uint8", "float16"):
            raise ValueError(f"gan_fakes_dtype must be uint8 or float16, got {a.gan_fakes_dtype!r}")
        if a.n_fakes < 0:
            raise ValueError(f"n_fakes must be >= 0 (0: as many as training images), got {a.n_fakes}")
        n_cls = info.n_classes if a.gan_conditional else None
        self.generator = DCGANGenerator(a.gan_latent_dim, info.channels, info.image_size, a.gan_width, n_cls).to(device)
        self.discriminator = DCGANDiscriminator(info.channels, info.image_size, a.gan_width, n_cls).to(device)
        self.projection = RandomProjection(self.discriminator.num_features, cfg.bits, cfg.seed).to(device)
        betas = (float(a.gan_beta1), float(a.gan_beta2))
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=a.gan_lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=a.gan_lr, betas=betas)
        self._diag = RunningMeans()

    # -- trainer interface ---------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "projection": self.projection}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def phases(self) -> list[Phase]:
        return [
            Phase("discriminator", self._d_step, modules=[self.discriminator], optimizer=self.opt_d),
            Phase("generator", self._g_step, modules=[self.generator], optimizer=self.opt_g),
        ]

    def _real(self, ctx: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Real images (and labels when conditional) this step trains on."""
        if self.args.gan_conditional:
            keep = ctx["labeled"]
            return ctx["x"][keep], ctx["y"][keep]
        return ctx["x_all"], None

    def _d_step(self, ctx: dict[str, Any]) -> LossOutput | None:
        x, y = self._real(ctx)
        if x.shape[0] == 0:
            return None
        z = self.generator.sample_latent(x.shape[0], device=self.device)
        with torch.no_grad():
            fake = self.generator(z, y)
        d_real = self.discriminator(x, y)
        d_fake = self.discriminator(fake, y)
        loss = discriminator_loss(d_real, d_fake)
        self._diag.add({"d_real_prob": torch.sigmoid(d_real).mean().detach(),
                        "d_fake_prob": torch.sigmoid(d_fake).mean().detach()})
        ctx["gan_labels"] = y
        ctx["gan_n"] = x.shape[0]
        return loss

    def _g_step(self, ctx: dict[str, Any]) -> LossOutput | None:
        n = int(ctx.get("gan_n", 0))
        if n == 0:
            return None
        y = ctx.get("gan_labels")
        z = self.generator.sample_latent(n, device=self.device)
        fake = self.generator(z, y)
        return generator_loss(self.discriminator(fake, y))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Mean discriminator probabilities on real and fake images over the epoch (``gan/...``)."""
        out = self._diag.means("gan/")
        self._diag.reset()
        return out

    def encode(self, x: Tensor) -> Tensor:
        """Diagnostic only: random projection of discriminator features (a GAN has no hash function)."""
        return self.projection(self.discriminator.features(x))

    def encoder(self) -> nn.Module:
        return _DiscriminatorCodes(self.discriminator, self.projection)

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int, labels: Tensor | None = None, batch_size: int = 500) -> Tensor:
        """``n`` images from the generator (eval mode), latents from a generator seeded with ``seed``."""
        was_training = self.generator.training
        self.generator.eval()
        g = torch.Generator().manual_seed(int(seed))
        chunks = []
        try:
            for s in range(0, n, batch_size):
                m = min(batch_size, n - s)
                z = self.generator.sample_latent(m, generator=g, device=self.device)
                y = None if labels is None else labels[s:s + m].to(self.device)
                chunks.append(self.generator(z, y).float().cpu())
        finally:
            self.generator.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros(0, self.info.channels, self.info.image_size,
                                                            self.info.image_size)


# ----------------------------------------------------------------------------------------------------
# fakes


def generate_fakes(method: GanMethod, n: int, seed: int,
                   label_pool: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``n`` fakes (and their labels, drawn from ``label_pool`` rows, for a conditional GAN)."""
    labels = None
    if method.args.gan_conditional:
        if label_pool is None or len(label_pool) == 0:
            raise ValueError("a conditional GAN needs a pool of label vectors to sample fake labels from")
        g = torch.Generator().manual_seed(int(seed) + 1)
        labels = label_pool[torch.randint(0, len(label_pool), (n,), generator=g)].float()
    return method.sample(n, seed, labels), labels


def write_fakes(method: GanMethod, path: Path, n: int, seed: int, source: str,
                label_pool: Tensor | None = None, extra_meta: dict[str, Any] | None = None) -> Path:
    """Generate ``n`` fakes and save them to ``path`` (see :mod:`coophash.fakes`)."""
    images, labels = generate_fakes(method, n, seed, label_pool)
    meta = {"latent_seed": int(seed), **(extra_meta or {})}
    return save_fakes(path, images, labels, source=source, dtype=method.args.gan_fakes_dtype, extra_meta=meta)
