"""Encoders E_I and E_N (paper §3.1): a ResNet-18 trunk plus a full-resolution branch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .resnet import ResNet18Trunk
from .skip import conv_relu

__all__ = ["EncoderFeatures", "ResNetEncoder"]


class EncoderFeatures(NamedTuple):
    """What an encoder hands to the decoders.

    Attributes:
        latent: the shared latent space, ``(B, 512, H/32, W/32)``.
        skips: the five skip features, shallow to deep: full-resolution branch
            ``(B, 64, H, W)``, stem ``(B, 64, H/2, W/2)``, layer1 ``(B, 64, H/4, W/4)``,
            layer2 ``(B, 128, H/8, W/8)``, layer3 ``(B, 256, H/16, W/16)``; None when the
            caller asked for the latent only.
    """

    latent: torch.Tensor
    skips: tuple[torch.Tensor, ...] | None


class ResNetEncoder(nn.Module):
    """ResNet-18 encoder with the authors' full-resolution branch.

    ``full_resolution`` (the authors' ``conv_original_size0/1``: two 3x3 conv+ReLU, 3->64->64)
    keeps full-resolution detail for the last skip; None when built without it (an encoder
    whose skips nothing consumes). ``trunk`` is a torchvision-named ResNet-18
    (see :mod:`.resnet`).
    """

    skip_channels = (64, *ResNet18Trunk.channels[:4])
    latent_channels = ResNet18Trunk.channels[4]

    def __init__(self, in_channels: int = 3, full_resolution: bool = True) -> None:
        super().__init__()
        self.full_resolution = (nn.Sequential(conv_relu(in_channels, 64, 3),
                                              conv_relu(64, 64, 3))
                                if full_resolution else None)
        self.trunk = ResNet18Trunk(in_channels)

    def forward(self, x: torch.Tensor, with_skips: bool = True) -> EncoderFeatures:
        """``(B, C, H, W)`` -> :class:`EncoderFeatures`. Without skips the
        full-resolution branch is not run: nothing would consume it."""
        *stages, latent = self.trunk(x)
        if not with_skips:
            return EncoderFeatures(latent, None)
        if self.full_resolution is None:
            raise ValueError("this encoder was built without its full-resolution branch")
        return EncoderFeatures(latent, (self.full_resolution(x), *stages))
