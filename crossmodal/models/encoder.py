"""Encoders E_I and E_N (paper §3.1): a ResNet-18 trunk plus a full-resolution branch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .resnet import IMAGENET_WIDTH, ResNet18Trunk, trunk_channels
from .skip import conv_relu

__all__ = ["EncoderChannels", "EncoderFeatures", "ResNetEncoder", "encoder_channels"]


class EncoderChannels(NamedTuple):
    """The channels an encoder of trunk width w hands to the decoders.

    Attributes:
        skips: the five skip features' channels, shallow to deep: (w, w, w, 2w, 4w).
        latent: the latent's channels, 8w.
    """

    skips: tuple[int, ...]
    latent: int


def encoder_channels(width: int = IMAGENET_WIDTH) -> EncoderChannels:
    """The skip and latent channels of :class:`ResNetEncoder` with trunk ``width``:
    ((64, 64, 64, 128, 256), 512) for the authors' ResNet-18."""
    *stages, latent = trunk_channels(width)
    return EncoderChannels((width, *stages), latent)


class EncoderFeatures(NamedTuple):
    """What an encoder hands to the decoders.

    Attributes:
        latent: the shared latent space, ``(B, 8w, H/32, W/32)`` for trunk width w
            (512 channels in the authors' ResNet-18, w = 64).
        skips: the five skip features, shallow to deep: full-resolution branch
            ``(B, w, H, W)``, stem ``(B, w, H/2, W/2)``, layer1 ``(B, w, H/4, W/4)``,
            layer2 ``(B, 2w, H/8, W/8)``, layer3 ``(B, 4w, H/16, W/16)``; None when the
            caller asked for the latent only. See :func:`encoder_channels`.
    """

    latent: torch.Tensor
    skips: tuple[torch.Tensor, ...] | None


class ResNetEncoder(nn.Module):
    """ResNet-18 encoder with the authors' full-resolution branch.

    ``full_resolution`` (the authors' ``conv_original_size0/1``: two 3x3 conv+ReLU,
    3->w->w, w = ``width``, 64 theirs) keeps full-resolution detail for the last skip; None
    when built without it (an encoder whose skips nothing consumes). ``trunk`` is a
    torchvision-named ResNet-18 of base width w (see :mod:`.resnet`).
    """

    def __init__(self, in_channels: int = 3, full_resolution: bool = True,
                 width: int = IMAGENET_WIDTH) -> None:
        super().__init__()
        self.full_resolution = (nn.Sequential(conv_relu(in_channels, width, 3),
                                              conv_relu(width, width, 3))
                                if full_resolution else None)
        self.trunk = ResNet18Trunk(in_channels, width)

    def forward(self, x: torch.Tensor, with_skips: bool = True) -> EncoderFeatures:
        """``(B, C, H, W)`` -> :class:`EncoderFeatures`. Without skips the
        full-resolution branch is not run: nothing would consume it."""
        *stages, latent = self.trunk(x)
        if not with_skips:
            return EncoderFeatures(latent, None)
        if self.full_resolution is None:
            raise ValueError("this encoder was built without its full-resolution branch")
        return EncoderFeatures(latent, (self.full_resolution(x), *stages))
