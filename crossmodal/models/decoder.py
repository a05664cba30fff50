"""Decoders D_N and D_I (paper §3.1; the authors' released graph, docs/design.md §7).

Both go from the latent ``(B, 8w, H/32, W/32)`` (w: the encoders' trunk width, 64 theirs,
so 512 channels) to ``(B, 3, H, W)`` in five stages of
bilinear x2 upsampling (align_corners=True) and a 3x3 conv+ReLU, then a 1x1 conv head.
The normal decoder first projects the latent with a 1x1 conv+ReLU and, at each stage,
can take a skip from the image encoder between upsampling and convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .skip import ConcatSkip, DeactivableSkip, conv_relu

__all__ = ["SKIP_MODES", "Decoder"]

#: 'deactivable': max-fusion into reserved channels, switchable per pass (the paper);
#: 'concat': standard U-Net skips, always on (ablations without E_N); 'none': no skips.
SKIP_MODES = ("deactivable", "concat", "none")


class Decoder(nn.Module):
    """Five-stage upsampling decoder with optional skips from an encoder.

    Args:
        widths: channels entering each stage's 3x3 conv, deep to shallow. With
            deactivable skips the last ``skip_channels[i]`` of ``widths[i]`` are the
            channels a skip max-fuses into; with concatenation skips ``widths[i]``
            includes the appended skip.
        skip_channels: channels of the encoder skips, deep to shallow (layer3, layer2,
            layer1, stem, full-resolution branch).
        skip_mode: one of :data:`SKIP_MODES`.
        project_latent: a 1x1 conv+ReLU from ``latent_channels`` to ``widths[0]`` first
            (the normal decoder's ``layer4_1x1``); otherwise ``widths[0]`` must equal
            ``latent_channels``.
        latent_channels: channels of the encoders' latent (8 x their trunk width).
        head_channels: output channels of the last 3x3 conv, input of the 1x1 head.
    """

    def __init__(
        self,
        widths: Sequence[int],
        skip_channels: Sequence[int],
        skip_mode: str = "none",
        project_latent: bool = True,
        latent_channels: int = 512,
        head_channels: int = 64,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        if skip_mode not in SKIP_MODES:
            raise ValueError(f"unknown skip mode {skip_mode!r}; valid: {', '.join(SKIP_MODES)}")
        if len(widths) != 5 or len(skip_channels) != 5:
            raise ValueError(f"a decoder has 5 stages; got widths {list(widths)} and skip "
                             f"channels {list(skip_channels)}")
        if skip_mode == "deactivable" and any(w < s for w, s in zip(widths, skip_channels)):
            raise ValueError(f"each width must hold its skip's channels: widths "
                             f"{list(widths)}, skips {list(skip_channels)}")
        self.skip_mode = skip_mode
        # With concatenation, the conv feeding stage i leaves room for the skip appended there.
        appended = list(skip_channels) if skip_mode == "concat" else [0] * 5
        if project_latent:
            self.latent_projection = conv_relu(latent_channels, widths[0] - appended[0], 1)
        elif widths[0] - appended[0] != latent_channels:
            raise ValueError(f"without a latent projection widths[0] must be "
                             f"{latent_channels + appended[0]}, got {widths[0]}")
        else:
            self.latent_projection = nn.Identity()
        outputs = [w - a for w, a in zip(widths[1:], appended[1:])] + [head_channels]
        self.stages = nn.ModuleList(conv_relu(w, o, 3) for w, o in zip(widths, outputs))
        skip = {"deactivable": DeactivableSkip, "concat": ConcatSkip}.get(skip_mode)
        # The full-resolution branch (last) is fused as it is, without a 1x1 projection.
        self.skips = nn.ModuleList(
            [] if skip is None else [skip(c, project=i < 4) for i, c in enumerate(skip_channels)])
        self.head = nn.Conv2d(head_channels, out_channels, 1)

    def forward(
        self, latent: torch.Tensor, skips: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``latent`` ``(B, latent_channels, h, w)`` and, to activate the skips, the
        encoder's five skip features deep to shallow
        (``(B, skip_channels[i], 2^(i+1) h, 2^(i+1) w)``)
        -> ``(B, out_channels, 32 h, 32 w)``, before any output activation."""
        if skips is not None and not self.skips:
            raise ValueError("this decoder has no skip connections")
        x = self.latent_projection(latent)
        for i, stage in enumerate(self.stages):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
            if self.skips:  # a deactivable skip passes None through; a standard one refuses
                x = self.skips[i](x, None if skips is None else skips[i])
            x = stage(x)
        return self.head(x)
