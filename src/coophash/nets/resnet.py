"""ResNet-18 whose parameter names and shapes match torchvision's ``resnet18`` (without ``fc``).

Written here (no torchvision dependency) so that a torchvision state dict saved to a local file
loads with :func:`coophash.nets.load_pretrained`. For small images (``small_input=True``, the
default below 64 px) the stem is a 3x3 stride-1 conv with no max pool, as is usual for CIFAR;
``conv1.weight`` then differs in shape from torchvision's and is skipped when loading weights.
ImageNet weights were trained on mean/std-normalised RGB, not on [-1, 1]; fine-tuning absorbs the
difference, but expect the first epochs to adapt the stem.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from coophash.nets.registry import register_backbone

__all__ = ["BasicBlock", "ResNet", "resnet18"]

logger = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 conv + BN) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A BasicBlock ResNet trunk returning globally average-pooled features (no ``fc``)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        in_channels: int = 3,
        small_input: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.small_input = small_input
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        planes_in = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            stride = 1 if index == 1 else 2
            stage = [BasicBlock(planes_in, planes, stride)]
            stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            planes_in = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 512
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He-normal (fan-out) convs, unit BN scales; optionally zero the last BN of each block."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (N, C, H, W) to pooled features (N, 512)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def adapt_pretrained(
        self, state: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Fit a torchvision state dict to this trunk; returns (state, keys deliberately skipped).

        A 3-channel ``conv1.weight`` is summed over its input channels for a 1-channel trunk.
        With ``small_input`` the stem conv has another shape (3x3, not 7x7): its pretrained weight
        is skipped with a warning and ``conv1`` keeps its random initialisation.
        """
        state = dict(state)
        skipped: list[str] = []
        weight = state.get("conv1.weight")
        if weight is None:
            return state, skipped
        target = self.conv1.weight.shape
        if weight.dim() == 4 and weight.shape[1] == 3 and target[1] == 1:
            weight = weight.sum(dim=1, keepdim=True)
            state["conv1.weight"] = weight
        if self.small_input and tuple(weight.shape) != tuple(target):
            logger.warning(
                "%s: conv1.weight has shape %s but this small-input ResNet's stem is %s; "
                "skipping it (conv1 keeps its random initialisation)",
                source,
                tuple(weight.shape),
                tuple(target),
            )
            del state["conv1.weight"]
            skipped.append("conv1.weight")
        return state, skipped


@register_backbone("resnet18")
def resnet18(
    in_channels: int = 3,
    image_size: int = 224,
    small_input: bool | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18 trunk (512 features) for 32–224 px; ``small_input`` defaults to ``image_size < 64``."""
    if small_input is None:
        small_input = image_size < 64
    return ResNet((2, 2, 2, 2), in_channels, small_input, zero_init_residual)
