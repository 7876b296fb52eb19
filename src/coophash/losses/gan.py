"""The non-saturating GAN losses (Goodfellow et al., 2014) on discriminator logits.

With ``D`` the discriminator's logit and ``σ`` the sigmoid, ``softplus(−d) = −log σ(d)`` and
``softplus(d) = −log(1 − σ(d))``:

* discriminator: ``mean softplus(−D(x)) + mean softplus(D(G(z)))`` (terms ``real`` and ``fake``);
* generator: ``mean softplus(−D(G(z)))`` (term ``nonsaturating``), the "−log D" form that keeps a gradient
  when the discriminator rejects the fakes confidently.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import LossOutput

__all__ = ["discriminator_loss", "generator_loss"]


def discriminator_loss(d_real: Tensor, d_fake: Tensor) -> LossOutput:
    """``mean −log σ(D(x)) + mean −log(1 − σ(D(G(z))))`` from the logits on real and generated images."""
    real = F.softplus(-d_real).mean()
    fake = F.softplus(d_fake).mean()
    return LossOutput(real + fake, {"real": real, "fake": fake})


def generator_loss(d_fake: Tensor) -> LossOutput:
    """Non-saturating generator loss ``mean −log σ(D(G(z)))`` from the logits on generated images."""
    loss = F.softplus(-d_fake).mean()
    return LossOutput(loss, {"nonsaturating": loss})
