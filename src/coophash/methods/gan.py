"""Stage 1 of fake-image regularised hashing (DESIGN.md §2): a DCGAN trained by the shared trainer.

The method ``gan`` trains a DCGAN (:mod:`coophash.nets.dcgan`) with two phases per step, a discriminator
step then a generator step, on the non-saturating GAN loss.  Unconditional (default) it trains on every
image of the batch, labeled or not (``ctx["x_all"]``); :func:`gan_config` builds its config with label
fraction 1.0, so that batches are drawn uniformly from all training images.  Conditional
(``gan_conditional``) it needs labels and trains on the labeled images only.

The trainer selects a best epoch by validation mAP through :meth:`GanMethod.encode`.  A GAN has no hash
function, so ``encode`` is a diagnostic: the discriminator's last features through a fixed random
Gaussian projection (seeded by the run seed, stored in the checkpoint) — sign random projections (SimHash)
of D's features.  Fakes are always drawn from the *last* generator, not the "best" one.

:func:`train_gan` runs the whole stage: training, then ``fakes.safetensors`` (M fakes, default M = number of
training images), ``samples.png`` (a grid of 64 fakes) and ``losses.png`` (per-epoch D and G losses, which
``metrics.jsonl`` holds as ``discriminator/total`` and ``generator/total``) beside the checkpoints.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coophash.config import TrainConfig
from coophash.losses.base import LossOutput
from coophash.methods.base import DataInfo, Method, register_method
from coophash.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from coophash.methods.phases import Phase

__all__ = [
    "FAKES_FILE",
    "LOSSES_FILE",
    "SAMPLES_FILE",
    "GanArgs",
    "GanMethod",
    "GanRun",
    "RandomProjection",
    "gan_config",
    "gan_key",
    "generate_fakes",
    "train_gan",
    "write_fakes",
]

log = logging.getLogger(__name__)

FAKES_FILE = "fakes.safetensors"
SAMPLES_FILE = "samples.png"
LOSSES_FILE = "losses.png"
# Offset added to the run seed for the generator of the fakes' latents (kept apart from training draws).
_FAKES_SEED_OFFSET = 7919


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
        self._diag: dict[str, float] = {}
        self._diag_n = 0

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
        real_term = F.softplus(-d_real).mean()
        fake_term = F.softplus(d_fake).mean()
        self._track(d_real_prob=torch.sigmoid(d_real).mean(), d_fake_prob=torch.sigmoid(d_fake).mean())
        ctx["gan_labels"] = y
        ctx["gan_n"] = x.shape[0]
        return LossOutput(real_term + fake_term, {"real": real_term, "fake": fake_term})

    def _g_step(self, ctx: dict[str, Any]) -> LossOutput | None:
        n = int(ctx.get("gan_n", 0))
        if n == 0:
            return None
        y = ctx.get("gan_labels")
        z = self.generator.sample_latent(n, device=self.device)
        fake = self.generator(z, y)
        loss = F.softplus(-self.discriminator(fake, y)).mean()
        return LossOutput(loss, {"nonsaturating": loss})

    def _track(self, **values: Tensor) -> None:
        for k, v in values.items():
            self._diag[k] = self._diag.get(k, 0.0) + float(v.detach())
        self._diag_n += 1

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        out = {f"gan/{k}": v / max(1, self._diag_n) for k, v in self._diag.items()}
        self._diag, self._diag_n = {}, 0
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
# Stage-1 driver


@dataclass
class GanRun:
    """Where a finished GAN stage left its outputs."""

    run_dir: Path
    fakes: Path
    samples: Path
    losses: Path
    n_fakes: int
    results: dict = field(default_factory=dict)


def gan_config(cfg: TrainConfig, gan_args: dict[str, Any], epochs: int) -> TrainConfig:
    """The GAN stage's config for the data and split of ``cfg`` (same dataset, protocol, manifest and seed).

    Unconditional GANs get label fraction 1.0 (labels unused; batches drawn uniformly from all training
    images, which do not depend on the label fraction); conditional ones keep ``cfg``'s label fraction.
    Real images are not augmented.
    """
    args = {k: v for k, v in gan_args.items() if k in GAN_ARG_NAMES}
    conditional = bool(GanArgs(**args).gan_conditional)
    data = {
        "method": "gan",
        "bits": cfg.bits,
        "dataset": cfg.dataset,
        "dataset_args": dict(cfg.dataset_args),
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "protocol": cfg.protocol,
        "protocol_args": dict(cfg.protocol_args),
        "manifest": cfg.manifest,
        "label_fraction": cfg.label_fraction if conditional else 1.0,
        "epochs": int(epochs),
        "batch_size": cfg.batch_size,
        "unlabeled_batch_size": 0,
        "augment": "none",
        "seed": cfg.seed,
        "split_seed": cfg.split_seed,
        "device": cfg.device,
        "eval_every": cfg.eval_every,
        "checkpoint_every": cfg.checkpoint_every,
        "eval_batch_size": cfg.eval_batch_size,
        "threads": cfg.threads,
        "out": cfg.out,
        "method_args": args,
    }
    return TrainConfig.from_dict(data, "GAN stage")


def gan_key(cfg: TrainConfig) -> str:
    """A stable folder name for a GAN config: dataset, seed and a hash of every field that shapes it."""
    d = cfg.to_dict()
    # fields that do not change the generator (bits: width of the diagnostic code only)
    for k in ("out", "threads", "device", "eval_batch_size", "checkpoint_every", "eval_every", "bits"):
        d.pop(k, None)
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"gan-{cfg.dataset}-s{cfg.seed}-{digest}"


def _train_split_sha1(train: Any) -> str:
    """Hash of the sorted training indices (which images the GAN saw)."""
    idx = np.sort(np.asarray(train, dtype=np.int64))
    return hashlib.sha1(idx.tobytes()).hexdigest()


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
    from coophash.fakes import save_fakes

    images, labels = generate_fakes(method, n, seed, label_pool)
    meta = {"latent_seed": int(seed), **(extra_meta or {})}
    return save_fakes(path, images, labels, source=source, dtype=method.args.gan_fakes_dtype, extra_meta=meta)


def train_gan(
    cfg: TrainConfig,
    run_dir: str | Path,
    dataset: Any = None,
    manifest: Any = None,
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> GanRun:
    """Train the GAN of ``cfg`` in ``run_dir``, then write its fakes, sample grid and loss curves there."""
    from coophash.fakes import plot_loss_curves, save_image_grid
    from coophash.train import runs
    from coophash.train.checkpoint import load_checkpoint
    from coophash.train.trainer import Trainer

    if cfg.method != "gan":
        raise ValueError(f"train_gan needs a config with method 'gan', got {cfg.method!r}")
    run_dir = Path(run_dir)
    trainer = Trainer(cfg, run_dir, dataset, manifest, progress=progress)
    results = trainer.fit(resume=resume and (run_dir / runs.LAST).exists())
    method = trainer.method
    assert isinstance(method, GanMethod)
    # the trainer leaves the "best" (diagnostic) weights loaded; fakes come from the last generator
    load_checkpoint(run_dir / runs.LAST, modules=method.modules(), restore_rng=False, map_location=method.device)
    method.train(False)
    n = int(method.args.n_fakes) or int(method.info.n_train)
    pool = None
    if method.args.gan_conditional:
        pool = trainer.ds.labels[torch.as_tensor(np.asarray(trainer.manifest.labeled, dtype=np.int64))]
    fakes_path = write_fakes(
        method, run_dir / FAKES_FILE, n, cfg.seed + _FAKES_SEED_OFFSET, source=str(run_dir), label_pool=pool,
        extra_meta={"dataset": cfg.dataset, "seed": cfg.seed, "gan_epochs": cfg.epochs,
                    "train_split_sha1": _train_split_sha1(trainer.manifest.train)},
    )
    grid_images, _ = generate_fakes(method, 64, cfg.seed + _FAKES_SEED_OFFSET, pool)
    samples = save_image_grid(grid_images, run_dir / SAMPLES_FILE, nrow=8)
    records = runs.read_metrics(run_dir / runs.METRICS)
    losses = plot_loss_curves(records, ["discriminator/total", "generator/total"], run_dir / LOSSES_FILE,
                              title=f"DCGAN on {cfg.dataset} (seed {cfg.seed})")
    log.info("GAN stage done: %d fakes in %s", n, fakes_path)
    return GanRun(run_dir=run_dir, fakes=fakes_path, samples=samples, losses=losses, n_fakes=n, results=results)
