"""Skip connections from the image encoder to the normal decoder (paper §3.2, Fig. 3).

A *deactivable* skip fuses the (1x1-projected) encoder feature into the decoder's last C
channels by element-wise max; those C channels are reserved in the decoder's width, so
the decoder has the same shape whether the skip is on or off, and with it off the
features pass through untouched. That is what lets the normal encoder share the normal
decoder without skips of its own (a normal->normal pass), while an image->normal pass
gets the image encoder's details. A *concatenation* skip is the standard U-Net one used
by the ablations without a normal encoder (§4.4: "we use standard ones").
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConcatSkip", "DeactivableSkip", "conv_relu"]


def conv_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """Conv (same padding, with bias) + ReLU, the authors' ``convrelu`` block."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
                         nn.ReLU(inplace=True))


class _Skip(nn.Module):
    """An encoder feature of C channels, projected, on its way into a decoder.

    Args:
        channels: C, the encoder feature's channels (after projection).
        project: 1x1 conv + ReLU on the encoder feature first (the authors' ``layerK_1x1``);
            the full-resolution branch is fused without one.
    """

    def __init__(self, channels: int, project: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.projection = conv_relu(channels, channels, 1) if project else nn.Identity()


class DeactivableSkip(_Skip):
    """Max-fuse an encoder feature into the last ``channels`` decoder channels (arguments:
    :class:`_Skip`)."""

    def forward(self, decoder: torch.Tensor, encoder: torch.Tensor | None) -> torch.Tensor:
        """``decoder`` ``(B, D, H, W)`` with D >= C, ``encoder`` ``(B, C, H, W)`` or None
        (deactivated) -> ``(B, D, H, W)``."""
        if encoder is None:
            return decoder
        kept = decoder[:, :-self.channels]
        fused = torch.maximum(decoder[:, -self.channels:], self.projection(encoder))
        return torch.cat([kept, fused], dim=1)


class ConcatSkip(_Skip):
    """Standard skip: append the (1x1-projected) encoder feature to the decoder's
    (arguments: :class:`_Skip`)."""

    def forward(self, decoder: torch.Tensor, encoder: torch.Tensor | None) -> torch.Tensor:
        """``(B, D, H, W)`` + ``(B, C, H, W)`` -> ``(B, D + C, H, W)``."""
        if encoder is None:
            raise ValueError("a standard (concatenation) skip cannot be deactivated")
        return torch.cat([decoder, self.projection(encoder)], dim=1)
