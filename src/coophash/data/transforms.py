"""Small seeded augmentations for training, applied to one float image (C, H, W) in [-1, 1].

Randomness comes from ``generator`` when one is given, else from torch's global generator, which a
``DataLoader`` seeds differently in each worker. Give a generator only with ``num_workers=0``: every
worker would receive a copy of it and repeat the same augmentations.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip", "make_augmentation"]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.transforms: List[Callable[[torch.Tensor], torch.Tensor]] = list(transforms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """Pad by ``padding`` pixels (value ``fill``, default -1 = black) and crop back to the original size at a random offset."""

    def __init__(self, padding: int = 4, fill: float = -1.0, generator: Optional[torch.Generator] = None) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.fill = float(fill)
        self.generator = generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return image
        p = self.padding
        height, width = image.shape[-2:]
        padded = F.pad(image, (p, p, p, p), mode="constant", value=self.fill)
        top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=self.generator))
        return padded[..., top : top + height, left : left + width]

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding}, fill={self.fill})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p`` (leave off for digits and text)."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)
        self.generator = generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def make_augmentation(
    padding: int = 0, flip: bool = False, generator: Optional[torch.Generator] = None
) -> Optional[Compose]:
    """Random crop with ``padding`` and optional horizontal flip (off by default, as for digits); None if both are off."""
    transforms: List[Callable[[torch.Tensor], torch.Tensor]] = []
    if padding > 0:
        transforms.append(RandomCrop(padding, generator=generator))
    if flip:
        transforms.append(RandomHorizontalFlip(0.5, generator=generator))
    return Compose(transforms) if transforms else None
