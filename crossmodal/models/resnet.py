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

__all__ = ["BasicBlock", "ResNet18Trunk", "load_imagenet_weights"]


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

    ``forward((B, C, H, W))`` returns five tensors: stem (conv1+bn1+relu) ``(B, 64, H/2,
    W/2)``, then maxpool+layer1 ``(B, 64, H/4, W/4)``, layer2 ``(B, 128, H/8, W/8)``, layer3
    ``(B, 256, H/16, W/16)`` and layer4 ``(B, 512, H/32, W/32)``.
    """

    channels = (64, 64, 128, 256, 512)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return stem, c1, c2, c3, self.layer4(c3)


def load_imagenet_weights(trunk: ResNet18Trunk, path: str | Path) -> None:
    """Initialise ``trunk`` from a torchvision ``resnet18`` state dict saved at ``path``.

    The classifier (``fc.*``) is ignored; any other missing or mismatched tensor is an
    error naming it, so a wrong file never half-loads.
    """
    path = Path(path)
    if not path.is_file():
        raise CrossmodalError(
            f"ImageNet weights {path} not found; place torchvision's resnet18 state dict "
            f"(resnet18-f37072fd.pth) there, or set the init to none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle, zip or truncation error: all mean a bad file
        raise CrossmodalError(f"cannot load {path} as a state dict ({err})") from None
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
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CrossmodalError(
            f"{path} is not a torchvision resnet18 state dict: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    trunk.load_state_dict(state)
