"""One registry of backbones, timm style: ``create_backbone(name, ...)`` returns pooled features.

A backbone is an ``nn.Module`` whose ``forward(x)`` maps images (N, C, H, W) in [-1, 1] to
features (N, num_features) and which sets the attribute ``num_features``. Backbones draw their
initial weights from torch's global generator: networks take no seed, the caller seeds
(``torch.manual_seed``) before building one.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike

from torch import nn

from coophash.utils.registry import Registry

__all__ = [
    "BACKBONES",
    "register_backbone",
    "create_backbone",
    "list_backbones",
    "default_backbone",
]

BackboneFactory = Callable[..., nn.Module]

BACKBONES: Registry[BackboneFactory] = Registry("backbone")


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that registers a backbone factory ``f(in_channels, image_size, **kw)`` under ``name``."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return BACKBONES.names()


def default_backbone(image_size: int) -> str:
    """The default backbone for a side length: ``"smallconv"`` up to 32 px, else ``"resnet18"``."""
    return "smallconv" if image_size <= 32 else "resnet18"


def create_backbone(
    name: str,
    in_channels: int = 1,
    image_size: int = 28,
    pretrained: str | PathLike[str] | None = None,
    **kw: object,
) -> nn.Module:
    """Build the registered backbone ``name``; load local weights from ``pretrained`` if given."""
    factory = BACKBONES.get(name)
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    model = factory(in_channels=in_channels, image_size=image_size, **kw)
    if not hasattr(model, "num_features"):
        raise TypeError(f"backbone {name!r} does not set the attribute num_features")
    if pretrained is not None:
        from coophash.nets.pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model
