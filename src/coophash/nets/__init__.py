"""Networks: a backbone registry (timm style), hash and category heads, and the hashing net.

Networks take no seed: they draw initial weights from torch's global generator, so the caller
seeds (``torch.manual_seed(seed)``) before building one. Nothing here moves tensors to a device;
call ``.to(device)`` on the built module.
"""

from coophash.nets.heads import CategoryHead, HashHead
from coophash.nets.hashing_net import HashingNet, create_hashing_net
from coophash.nets.output import HashOutput
from coophash.nets.pretrained import PretrainedReport, load_pretrained, read_state_dict
from coophash.nets.registry import (
    BACKBONES,
    create_backbone,
    default_backbone,
    list_backbones,
    register_backbone,
)
from coophash.nets.resnet import BasicBlock, ResNet, resnet18
from coophash.nets.smallconv import SmallConv, smallconv, smallconv_nobn

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "CategoryHead",
    "HashHead",
    "HashOutput",
    "HashingNet",
    "PretrainedReport",
    "ResNet",
    "SmallConv",
    "create_backbone",
    "create_hashing_net",
    "default_backbone",
    "list_backbones",
    "load_pretrained",
    "read_state_dict",
    "register_backbone",
    "resnet18",
    "smallconv",
    "smallconv_nobn",
]
