"""A hashing network: backbone trunk + hash head (+ optional category head)."""

from __future__ import annotations

from os import PathLike

import torch
from torch import Tensor, nn

from coophash.nets.heads import CategoryHead, HashHead
from coophash.nets.output import HashOutput
from coophash.nets.registry import create_backbone, default_backbone

__all__ = ["HashingNet", "create_hashing_net"]


class HashingNet(nn.Module):
    """Trunk -> features; hash head -> pre, u = tanh(pre); category head -> logits (if n_classes).

    Weights come from torch's global generator: seed with ``torch.manual_seed`` before building.
    """

    def __init__(self, backbone: nn.Module, nbits: int, n_classes: int | None = None) -> None:
        super().__init__()
        num_features = getattr(backbone, "num_features", None)
        if not isinstance(num_features, int):
            raise TypeError(f"backbone {type(backbone).__name__} must set an int num_features")
        self.backbone = backbone
        self.num_features = num_features
        self.nbits = nbits
        self.n_classes = n_classes if n_classes else None
        self.hash_head = HashHead(num_features, nbits)
        self.category_head = CategoryHead(num_features, n_classes) if n_classes else None

    def forward(self, x: Tensor) -> HashOutput:
        """Images (N, C, H, W) in [-1, 1] -> HashOutput(features, pre, u, logits)."""
        features = self.backbone(x)
        pre = self.hash_head(features)
        logits = self.category_head(features) if self.category_head is not None else None
        return HashOutput(features=features, pre=pre, u=torch.tanh(pre), logits=logits)

    def encode(self, x: Tensor) -> Tensor:
        """Continuous codes u = tanh(pre) in (-1, 1)^K; the binary code is ``u >= 0``. Grad is not disabled."""
        return torch.tanh(self.hash_head(self.backbone(x)))


def create_hashing_net(
    backbone: str | None = "smallconv",
    nbits: int = 32,
    n_classes: int | None = 10,
    in_channels: int = 1,
    image_size: int = 28,
    pretrained: str | PathLike[str] | None = None,
    **backbone_kw: object,
) -> HashingNet:
    """Build a registered backbone (``None``: :func:`default_backbone`) and put the heads on it."""
    name = backbone if backbone is not None else default_backbone(image_size)
    trunk = create_backbone(
        name, in_channels=in_channels, image_size=image_size, pretrained=pretrained, **backbone_kw
    )
    return HashingNet(trunk, nbits=nbits, n_classes=n_classes)
