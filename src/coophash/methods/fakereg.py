"""Stage 2 of fake-image regularised hashing (DESIGN.md §2, seed 001): supervised loss + λ · max-entropy on fakes.

Each step the hashing network sees the labeled real batch and ``fake_batch_size`` fake images drawn (with
replacement, torch's global generator, which the trainer checkpoints) from the fakes file, in one forward
pass (so batch norm sees real and fake images together).  The loss is

    L = L_sup(real)  +  fake_weight · L_ent(fake)

with ``L_sup`` any baseline loss (``cfg.loss``) and ``L_ent`` the negative per-bit Bernoulli entropy of the
fakes' hash outputs (``fake_entropy=bits``, default) or the negative entropy of the category posterior
(``fake_entropy=classes``; the net then gets a category head, trained by cross-entropy on the labeled real
images with weight ``fake_class_weight``).  See :mod:`coophash.losses.entropy`.

With no ``fakes`` file the method runs stage 1 first (the one-command path): it trains the GAN for the same
dataset, split and seed into ``gan_dir`` (default ``<cfg.out>/gans/<key>``, a name derived from every
setting that shapes the GAN, so later runs with the same data and seed reuse it), writes the fakes there and
goes on.  This happens at the first training step, with every random generator's state saved and restored
around it, so the result equals ``--fakes <that file>``; rebuilding the method for evaluation never trains
a GAN or reads the fakes.  ``fake_weight = 0`` trains exactly the supervised baseline (no fakes are used).
"""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from coophash.config import TrainConfig
from coophash.losses.base import LossOutput
from coophash.losses.entropy import (
    ENTROPY_MODES,
    MaxEntropyLoss,
    bernoulli_entropy_from_logits,
)
from coophash.methods.supervised import SupervisedHashing
from coophash.methods.base import DataInfo, Method, register_method
from coophash.methods.gan import FAKES_FILE, GAN_ARG_NAMES, GanArgs

__all__ = ["FakeRegArgs", "FakeRegHashing", "one_command_gan_dir", "preserved_rng"]

log = logging.getLogger(__name__)


@dataclass
class FakeRegArgs(GanArgs):
    """Stage-2 hyperparameters, plus the GAN's (used when no fakes file is given)."""

    fakes: str = field(default="", metadata={"help": "Fakes file from `coophash gan` (empty: train the GAN first)."})
    fake_weight: float = field(default=0.03, metadata={"help": "Weight λ of the maximum-entropy loss on fakes."})
    fake_batch_size: int = field(default=32, metadata={"help": "Fake images per training step."})
    fake_entropy: str = field(
        default="bits", metadata={"help": "Entropy maximised on fakes: bits (hash outputs) or classes (posterior)."}
    )
    fake_class_weight: float = field(
        default=1.0, metadata={"help": "Cross-entropy weight on real labeled images (fake_entropy=classes)."}
    )
    gan_dir: str = field(default="", metadata={"help": "Folder of the one-command GAN stage (default <out>/gans/<key>)."})
    gan_epochs: int = field(default=15, metadata={"help": "GAN epochs of the one-command path."})


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def stage_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``<folder>/.lock`` (POSIX ``flock``; no lock where fcntl is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def one_command_gan_dir(cfg: TrainConfig, args: FakeRegArgs) -> tuple[Path, TrainConfig]:
    """(folder, config) of the GAN stage that the one-command path runs for ``cfg``."""
    from coophash.methods.gan import gan_config, gan_key

    gan_args = {k: getattr(args, k) for k in GAN_ARG_NAMES}
    gcfg = gan_config(cfg, gan_args, args.gan_epochs)
    folder = Path(args.gan_dir) if args.gan_dir else Path(cfg.out) / "gans" / gan_key(gcfg)
    return folder, gcfg


@register_method("fakereg")
class FakeRegHashing(SupervisedHashing):
    """A hashing network on ``cfg.loss`` (real, labeled) + ``fake_weight`` · maximum entropy (fakes)."""

    uses_unlabeled = False
    Args = FakeRegArgs

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device) -> None:
        Method.__init__(self, cfg, info, device)  # parses self.args for the checks below
        a: FakeRegArgs = self.args
        if a.fake_entropy not in ENTROPY_MODES:
            raise ValueError(f"fake_entropy must be one of {ENTROPY_MODES}, got {a.fake_entropy!r}")
        if a.fake_weight < 0:
            raise ValueError(f"fake_weight must be >= 0, got {a.fake_weight}")
        if a.fake_batch_size < 1:
            raise ValueError(f"fake_batch_size must be >= 1, got {a.fake_batch_size}")
        self.classes = a.fake_entropy == "classes"
        # the supervised method builds net, loss and optimiser, so fake_weight=0 reproduces it exactly
        SupervisedHashing.__init__(self, cfg, info, device)
        self.entropy = MaxEntropyLoss(a.fake_entropy, multi_label=info.multi_label)
        self._fakes: Any = None
        self.fakes_path: Path | None = Path(a.fakes) if a.fakes else None
        self._diag: dict[str, float] = {}
        self._diag_n = 0

    # -- fakes ---------------------------------------------------------------------------------
    def fakes(self) -> Any:
        """The fake images (loaded, and made by a GAN stage first when no file was given, on first use)."""
        if self._fakes is None:
            from coophash.fakes import load_fakes

            path = self.fakes_path if self.fakes_path is not None else self._run_gan_stage()
            fakes = load_fakes(path, channels=self.info.channels, image_size=self.info.image_size)
            fakes.images = fakes.images.to(self.device)
            self._fakes, self.fakes_path = fakes, Path(path)
        return self._fakes

    def _run_gan_stage(self) -> Path:
        """One-command path: train (or reuse, or resume) the GAN for this data and seed; return its fakes."""
        from coophash.methods.gan import train_gan
        from coophash.train import runs

        folder, gcfg = one_command_gan_dir(self.cfg, self.args)
        path = folder / FAKES_FILE
        if path.exists():
            log.info("reusing the fakes of %s", folder)
            return path
        log.info("no fakes file given: training the GAN stage in %s (%d epochs)", folder, gcfg.epochs)

        def progress(epoch: int, step: int, values: dict[str, float]) -> None:
            if step == spe[0]:
                log.info("GAN epoch %d/%d: D %.4f G %.4f", epoch + 1, gcfg.epochs,
                         values.get("discriminator/total", float("nan")), values.get("generator/total", float("nan")))

        spe = [max(1, -(-self.info.n_train // gcfg.batch_size))]
        with stage_lock(folder):  # processes sharing an output folder (bench shards) train it once
            if path.exists():
                log.info("reusing the fakes of %s (made by another process)", folder)
                return path
            with preserved_rng():
                train_gan(gcfg, folder, resume=(folder / runs.LAST).exists(), progress=progress)
        return path

    # -- trainer interface ---------------------------------------------------------------------
    def _category_classes(self) -> int | None:
        return self.info.n_classes if self.classes else None

    def _hash_step(self, ctx: dict[str, Any]) -> LossOutput:
        a: FakeRegArgs = self.args
        x, y, labeled = ctx["x"], ctx["y"], ctx["labeled"]
        n = x.shape[0]
        use_fakes = a.fake_weight > 0
        if use_fakes:
            fakes = self.fakes()
            idx = torch.randint(0, len(fakes), (a.fake_batch_size,))
            xf = fakes.batch(idx, self.device).to(x.dtype)
            out = self.net(torch.cat([x, xf], dim=0))
            real, fake = out.select(slice(0, n)), out.select(slice(n, None))
        else:
            real, fake = self.net(x), None
        sup = self.loss(real, y, labeled)
        terms: dict[str, Tensor] = dict(sup.terms)
        total = sup.total
        if self.classes:
            terms["cls"] = a.fake_class_weight * self._class_loss(real.logits, y, labeled)
            total = total + terms["cls"]
        if fake is not None:
            ent = self.entropy(fake)
            terms["fake_maxent"] = a.fake_weight * ent
            total = total + terms["fake_maxent"]
            with torch.no_grad():
                self._track(fake_bit_entropy=bernoulli_entropy_from_logits(2 * fake.pre.float()).mean(),
                            fake_abs_u=fake.u.abs().mean(), real_abs_u=real.u.abs().mean())
        return LossOutput(total, terms)

    def _class_loss(self, logits: Tensor | None, y: Tensor, labeled: Tensor) -> Tensor:
        """Cross-entropy of the category head on labeled real images."""
        assert logits is not None
        if not bool(labeled.any()):
            return logits.sum() * 0.0
        lg, yy = logits[labeled], y[labeled]
        if self.info.multi_label:
            return F.binary_cross_entropy_with_logits(lg, yy.to(lg.dtype))
        return F.cross_entropy(lg, yy.argmax(dim=1))

    def _track(self, **values: Tensor) -> None:
        for k, v in values.items():
            self._diag[k] = self._diag.get(k, 0.0) + float(v)
        self._diag_n += 1

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        out = {f"fakereg/{k}": v / max(1, self._diag_n) for k, v in self._diag.items()}
        self._diag, self._diag_n = {}, 0
        return out

