"""Stage 2 of fake-image regularised hashing (DESIGN.md §2, seed 001): supervised loss + λ · max-entropy on fakes.

Each step the hashing network sees the labeled real batch and ``fake_batch_size`` fake images drawn (with
replacement, torch's global generator, which the trainer checkpoints) from the fakes file.  ``fake_bn``
says how batch norm sees them: ``mixed`` (default) puts real and fake images in one forward pass, normalised
together (the running statistics then mix both); ``separate`` gives the fakes a forward pass of their own,
normalised by their own batch statistics, and leaves the running statistics (hence the test-time network)
to the real images alone.  The loss is

    L = L_sup(real)  +  fake_weight · L_ent(fake)

with ``L_sup`` any baseline loss (``cfg.loss``) and ``L_ent`` the negative per-bit Bernoulli entropy of the
fakes' hash outputs (``fake_entropy=bits``, default) or the negative entropy of the category posterior
(``fake_entropy=classes``; the net then gets a category head, trained by the class loss on the labeled real
images with weight ``fake_class_weight``).  See :mod:`coophash.losses.entropy`.

The method reads a fakes file (method argument ``fakes``, made by ``coophash gan``); it never trains a
GAN.  The one-command path (no ``fakes``) is a two-stage pipeline, [gan → fakereg]
(:mod:`coophash.pipeline.gan`): the GAN stage trains (or reuses) the GAN for the same dataset, split and
seed in ``gan_dir`` (default ``<cfg.out>/gans/<key>``), and this stage then runs with ``fakes`` set to its
file.  The ``gan_*`` arguments below shape that GAN stage only.  Rebuilding the method for evaluation never
reads the fakes.  ``fake_weight = 0`` trains exactly the supervised baseline (no fakes are used).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from coophash.config import TrainConfig
from coophash.fakes import Fakes, load_fakes
from coophash.losses.base import LossOutput
from coophash.losses.classification import class_loss
from coophash.losses.distributed import global_batch_loss, rank_share
from coophash.losses.entropy import (
    ENTROPY_MODES,
    MaxEntropyLoss,
    bernoulli_entropy_from_logits,
)
from coophash.methods.base import DataInfo, Method, register_method
from coophash.methods.gan import GanArgs
from coophash.methods.supervised import SupervisedHashing
from coophash.nets.norm import frozen_norm_statistics
from coophash.nets.output import HashOutput
from coophash.utils.meter import RunningMeans

__all__ = ["FAKE_BN_MODES", "FakeRegArgs", "FakeRegHashing", "frozen_norm_statistics"]

#: How batch norm sees the fakes: with the real batch in one pass, or in a pass of their own.
FAKE_BN_MODES = ("mixed", "separate")


@dataclass
class FakeRegArgs(GanArgs):
    """Stage-2 hyperparameters, plus those of the GAN stage that the pipeline runs when no fakes file is given."""

    fakes: str = field(default="", metadata={"help": "Fakes file from `coophash gan` (empty: the pipeline trains "
                                                     "the GAN stage first)."})
    fake_weight: float = field(default=0.03, metadata={"help": "Weight λ of the maximum-entropy loss on fakes."})
    fake_batch_size: int = field(default=32, metadata={"help": "Fake images per training step."})
    fake_entropy: str = field(
        default="bits", metadata={"help": "Entropy maximised on fakes: bits (hash outputs) or classes (posterior)."}
    )
    fake_class_weight: float = field(
        default=1.0, metadata={"help": "Cross-entropy weight on real labeled images (fake_entropy=classes)."}
    )
    fake_bn: str = field(
        default="mixed", metadata={"help": "Batch norm and fakes: mixed (one pass with the real batch, normalised "
                                           "together) or separate (their own pass and batch statistics; the "
                                           "running statistics see real images only)."}
    )
    gan_dir: str = field(default="", metadata={"help": "Folder of the one-command GAN stage (default <out>/gans/<key>)."})
    gan_epochs: int = field(default=15, metadata={"help": "GAN epochs of the one-command path."})


@register_method("fakereg")
class FakeRegHashing(SupervisedHashing):
    """A hashing network on ``cfg.loss`` (real, labeled) + ``fake_weight`` · maximum entropy (fakes)."""

    uses_unlabeled = False
    Args = FakeRegArgs
    # The validated recipe (docs/fakereg.md, "When does it help?"): fakes in their own batch-norm pass had the best
    # validation mAP of the variants (wideconv, 2% labels, 3 seeds) and beat the mixed pass on every seed.
    config_defaults: ClassVar[dict[str, Any]] = {"method_args": {"fake_bn": "separate"}}

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        Method.__init__(self, cfg, info, device)  # parses self.args for the checks below
        a: FakeRegArgs = self.args
        if a.fake_entropy not in ENTROPY_MODES:
            raise ValueError(f"fake_entropy must be one of {ENTROPY_MODES}, got {a.fake_entropy!r}")
        if a.fake_weight < 0:
            raise ValueError(f"fake_weight must be >= 0, got {a.fake_weight}")
        if a.fake_batch_size < 1:
            raise ValueError(f"fake_batch_size must be >= 1, got {a.fake_batch_size}")
        if a.fake_bn not in FAKE_BN_MODES:
            raise ValueError(f"fake_bn must be one of {FAKE_BN_MODES}, got {a.fake_bn!r}")
        self.classes = a.fake_entropy == "classes"
        # the supervised method builds net, loss and optimiser, so fake_weight=0 reproduces it exactly
        SupervisedHashing.__init__(self, cfg, info, device)
        self.entropy = MaxEntropyLoss(a.fake_entropy, multi_label=info.multi_label)
        self._fakes: Fakes | None = None
        self.fakes_path: Path | None = Path(a.fakes) if a.fakes else None
        self._diag = RunningMeans()

    # -- fakes ---------------------------------------------------------------------------------
    def fakes(self) -> Fakes:
        """The fake images of the ``fakes`` file (read on first use, moved to the device)."""
        if self._fakes is None:
            if self.fakes_path is None:
                raise ValueError(
                    f"method 'fakereg' with fake_weight={self.args.fake_weight} needs a fakes file (method argument "
                    "'fakes', flag --fakes): make one with `coophash gan`, or train through the pipeline "
                    "(`coophash train`, Hasher.fit, coophash.pipeline.train), which runs the GAN stage first"
                )
            fakes = load_fakes(self.fakes_path, channels=self.info.channels, image_size=self.info.image_size)
            fakes.images = fakes.images.to(self.device)
            self._fakes = fakes
        return self._fakes

    # -- trainer interface ---------------------------------------------------------------------
    def _category_classes(self) -> int | None:
        return self.info.n_classes if self.classes else None

    def _hash_step(self, ctx: dict[str, Any]) -> LossOutput:
        a: FakeRegArgs = self.args
        x, y, labeled = ctx["x"], ctx["y"], ctx["labeled"]
        use_fakes = a.fake_weight > 0
        if use_fakes:
            fakes = self.fakes()
            idx = torch.randint(0, len(fakes), (max(1, rank_share(a.fake_batch_size)),))  # this rank's share
            xf = fakes.batch(idx, self.device).to(x.dtype)
            real, fake = self._forward_real_and_fake(x, xf)
        else:
            real, fake = self.net(x), None
        sup = global_batch_loss(self.loss, real, y, labeled)
        terms: dict[str, Tensor] = dict(sup.terms)
        total = sup.total
        if self.classes:
            assert real.logits is not None
            terms["cls"] = a.fake_class_weight * class_loss(real.logits, y, self.info.multi_label, labeled)
            total = total + terms["cls"]
        if fake is not None:
            ent = self.entropy(fake)
            terms["fake_maxent"] = a.fake_weight * ent
            total = total + terms["fake_maxent"]
            with torch.no_grad():
                self._diag.add({"fake_bit_entropy": bernoulli_entropy_from_logits(2 * fake.pre.float()).mean(),
                                "fake_abs_u": fake.u.abs().mean(), "real_abs_u": real.u.abs().mean()})
        return LossOutput(total, terms)

    def _forward_real_and_fake(self, x: Tensor, xf: Tensor) -> tuple[HashOutput, HashOutput]:
        """The network's outputs on the real batch ``x`` and the fakes ``xf`` (one or two passes, ``fake_bn``)."""
        if self.args.fake_bn == "separate":
            real = self.net(x)
            with frozen_norm_statistics(self.net):
                fake = self.net(xf)
            return real, fake
        out = self.net(torch.cat([x, xf], dim=0))
        n = x.shape[0]
        return out.select(slice(0, n)), out.select(slice(n, None))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Mean entropy and |u| of the fakes' (and real images') codes over the epoch (``fakereg/...``)."""
        out = self._diag.means("fakereg/")
        self._diag.reset()
        return out

