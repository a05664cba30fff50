"""ResNet-18 trunk with torchvision's parameter names (torchvision cannot be used here).

Because the names match ``torchvision.models.resnet18`` exactly, an ImageNet state dict a
user keeps locally initialises either encoder with :func:`load_imagenet_weights`; nothing
is downloaded. Without one the trunk keeps PyTorch's default (Kaiming-uniform) init, as
the paper trains from scratch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CrossmodalError
from ..fileutil import load_torch_file
from .pretrained import check_state_dict

__all__ = ["IMAGENET_WIDTH", "BasicBlock", "ResNet18Trunk", "load_imagenet_weights",
           "trunk_channels"]

#: The base width of torchvision's (and the authors') ResNet-18.
IMAGENET_WIDTH = 64


def trunk_channels(width: int = IMAGENET_WIDTH) -> tuple[int, ...]:
    """Channels of the five stages a trunk of base ``width`` returns: ``(w, w, 2w, 4w, 8w)``,
    i.e. (64, 64, 128, 256, 512) for ResNet-18."""
    return (width, width, 2 * width, 4 * width, 8 * width)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity (or 1x1-projected) shortcut; He et al. 2016."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier, returning every stage's features.

    ``forward((B, C, H, W))`` returns five tensors, with w = ``width`` (64 in ResNet-18):
    stem (conv1+bn1+relu) ``(B, w, H/2, W/2)``, then maxpool+layer1 ``(B, w, H/4, W/4)``,
    layer2 ``(B, 2w, H/8, W/8)``, layer3 ``(B, 4w, H/16, W/16)`` and layer4
    ``(B, 8w, H/32, W/32)``; see :func:`trunk_channels`. Other widths keep the depth and
    the parameter names, for tests and smoke runs.
    """

    def __init__(self, in_channels: int = 3, width: int = IMAGENET_WIDTH) -> None:
        super().__init__()
        self.width = width
        stem, c1, c2, c3, c4 = trunk_channels(width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(stem, c1), BasicBlock(c1, c1))
        self.layer2 = nn.Sequential(BasicBlock(c1, c2, 2), BasicBlock(c2, c2))
        self.layer3 = nn.Sequential(BasicBlock(c2, c3, 2), BasicBlock(c3, c3))
        self.layer4 = nn.Sequential(BasicBlock(c3, c4, 2), BasicBlock(c4, c4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return stem, c1, c2, c3, self.layer4(c3)


def load_imagenet_weights(trunk: ResNet18Trunk, path: str | Path) -> None:
    """Initialise ``trunk`` from a torchvision ``resnet18`` state dict saved at ``path``.

    The classifier (``fc.*``) is ignored; any other missing or mismatched tensor is an
    error naming it, so a wrong file never half-loads. Only a trunk of ResNet-18's width
    (64) can take ImageNet weights.
    """
    path = Path(path)
    if trunk.width != IMAGENET_WIDTH:
        raise CrossmodalError(
            f"ImageNet weights {path} are a width-{IMAGENET_WIDTH} resnet18 and cannot "
            f"initialise a trunk of width {trunk.width}; set model.trunk_width to "
            f"{IMAGENET_WIDTH} or leave model.imagenet_weights unset")
    state = load_torch_file(path, what="ImageNet weights",
                            fix="place torchvision's resnet18 state dict "
                            "(resnet18-f37072fd.pth) there, or set the init to none")
    if not isinstance(state, dict):
        raise CrossmodalError(f"{path} holds a {type(state).__name__}, not a state dict; "
                              f"save torchvision's resnet18().state_dict()")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = trunk.state_dict()
    # Files saved before PyTorch 0.4.1 have no BN step counters; they only matter for
    # momentum=None, so they are filled from the freshly built trunk.
    for key in own:
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, own[key])
    check_state_dict(own, state, path, "resnet18")
    trunk.load_state_dict(state)
