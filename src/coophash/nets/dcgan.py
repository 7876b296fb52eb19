"""A small DCGAN (Radford et al. 2016) for 8–64 px images with 1 or 3 channels, optionally class-conditional.

Generator: ``z`` (concatenated with the multi-hot label vector when conditional) → linear → a
``s0 × s0`` map → stride-2 transposed convs (4×4), each with batch norm + ReLU, → ``tanh`` images in
[-1, 1].  ``s0`` is the side halved while it stays even and at least 4 px (28 → 7, 32 → 4, 8 → 4,
64 → 4; an odd side gets no upsampling).  Discriminator: the mirror image, stride-2 convs (4×4) with
leaky ReLU 0.2 and batch norm on every layer but the first, then a linear real/fake logit; when
conditional, a projection term ``⟨E y, φ(x)⟩`` (Miyato & Koyama 2018) adds the label.

Networks take no seed: they draw weights from torch's global generator (DCGAN init: N(0, 0.02) convs,
N(1, 0.02) batch-norm scales), so seed before building.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "dcgan_init", "dcgan_levels"]


def dcgan_levels(image_size: int, min_side: int = 4) -> tuple[int, int]:
    """(number of stride-2 levels, starting side ``s0``) for a square image of side ``image_size``."""
    if image_size < 2:
        raise ValueError(f"DCGAN needs an image side of at least 2 px, got {image_size}")
    n, side = 0, int(image_size)
    while side % 2 == 0 and side // 2 >= min_side:
        side //= 2
        n += 1
    return n, side


def dcgan_init(module: nn.Module) -> None:
    """DCGAN weight init in place: conv/linear weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _widths(width: int, n: int, cap: int = 512) -> list[int]:
    """Channel widths from the coarsest map to the finest (``width`` at the finest hidden level)."""
    if n <= 1:
        return [min(width, cap)]
    return [min(width * 2 ** (n - 1 - i), cap) for i in range(n)]


class DCGANGenerator(nn.Module):
    """``G(z, y)``: latent (N, latent_dim) [+ labels (N, C) if conditional] → images (N, C, H, W) in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int = 64,
        channels: int = 1,
        image_size: int = 28,
        width: int = 64,
        n_classes: int | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or latent_dim < 1 or width < 1:
            raise ValueError(f"bad DCGAN generator sizes: latent_dim={latent_dim}, channels={channels}, width={width}")
        self.latent_dim = int(latent_dim)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.n_classes = int(n_classes) if n_classes else None
        n, s0 = dcgan_levels(image_size)
        widths = _widths(width, n)
        self.levels, self.s0, self.c0 = n, s0, widths[0]
        in_dim = self.latent_dim + (self.n_classes or 0)
        self.project = nn.Sequential(
            nn.Linear(in_dim, widths[0] * s0 * s0, bias=False),
            nn.BatchNorm1d(widths[0] * s0 * s0),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for i in range(n - 1):
            layers += [
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(inplace=True),
            ]
        if n >= 1:
            layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, stride=2, padding=1))
        else:
            layers.append(nn.Conv2d(widths[0], channels, 3, padding=1))
        layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] from latents ``z`` (and multi-hot labels ``y`` when conditional)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"DCGANGenerator: z must be (N, {self.latent_dim}), got {tuple(z.shape)}")
        if self.n_classes:
            if y is None or y.shape != (z.shape[0], self.n_classes):
                got = None if y is None else tuple(y.shape)
                raise ValueError(f"DCGANGenerator: conditional, needs labels (N={z.shape[0]}, {self.n_classes}), got {got}")
            z = torch.cat([z, y.to(z.dtype)], dim=1)
        h = self.project(z).view(z.shape[0], self.c0, self.s0, self.s0)
        return self.body(h)

    def sample_latent(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | None = None) -> Tensor:
        """``n`` standard normal latents (from ``generator``, or torch's global generator)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return z if device is None else z.to(device)


class DCGANDiscriminator(nn.Module):
    """``D(x, y)``: images → real/fake logit (N,), with a label projection term when conditional."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 28,
        width: int = 64,
        n_classes: int | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or width < 1:
            raise ValueError(f"bad DCGAN discriminator sizes: channels={channels}, width={width}")
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.n_classes = int(n_classes) if n_classes else None
        n, s0 = dcgan_levels(image_size)
        widths = list(reversed(_widths(width, n)))  # finest first
        layers: list[nn.Module] = []
        if n >= 1:
            c_in = channels
            for i, w in enumerate(widths):
                layers.append(nn.Conv2d(c_in, w, 4, stride=2, padding=1, bias=i == 0))
                if i > 0:
                    layers.append(nn.BatchNorm2d(w))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                c_in = w
        else:
            layers += [nn.Conv2d(channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = widths[0]
        layers.append(nn.Flatten())
        self.trunk = nn.Sequential(*layers)
        self.num_features = c_in * s0 * s0
        self.out = nn.Linear(self.num_features, 1)
        self.embed = nn.Linear(self.n_classes, self.num_features, bias=False) if self.n_classes else None
        dcgan_init(self)

    def features(self, x: Tensor) -> Tensor:
        """Flattened last feature map φ(x) (N, num_features)."""
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] != self.image_size:
            raise ValueError(
                f"DCGANDiscriminator: expected images (N, {self.channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        return self.trunk(x)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Real/fake logits (N,); conditional discriminators add ``⟨E y, φ(x)⟩``."""
        h = self.features(x)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            if y is None or y.shape != (x.shape[0], self.n_classes):
                got = None if y is None else tuple(y.shape)
                raise ValueError(f"DCGANDiscriminator: conditional, needs labels (N={x.shape[0]}, {self.n_classes}), got {got}")
            logit = logit + (self.embed(y.to(h.dtype)) * h).sum(dim=1)
        return logit
