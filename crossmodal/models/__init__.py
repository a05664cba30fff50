"""The models: the cross-modal network (encoders, decoders, deactivable skips, variants and
losses) and the Pix2Pix baseline; :func:`build_network` builds either from its config."""

from __future__ import annotations

from .losses import image_loss, normal_loss
from .net import (
    MODEL_VARIANTS, OUTPUT_ACTIVATIONS, PIX2PIX, ROUTE_INPUTS, ROUTE_OUTPUTS, ROUTES, VARIANTS,
    CrossModalNet, ModelConfig)
from .pix2pix import PatchDiscriminator, Pix2PixGenerator, adversarial_loss

__all__ = ["MODEL_VARIANTS", "OUTPUT_ACTIVATIONS", "PIX2PIX", "ROUTES", "ROUTE_INPUTS",
           "ROUTE_OUTPUTS", "VARIANTS", "CrossModalNet", "ModelConfig", "PatchDiscriminator",
           "Pix2PixGenerator", "adversarial_loss", "build_network", "image_loss",
           "normal_loss"]


def build_network(config: ModelConfig) -> CrossModalNet | Pix2PixGenerator:
    """The network ``config.variant`` names: a :class:`Pix2PixGenerator` for ``pix2pix``,
    else a :class:`CrossModalNet`. Both take ``(x, route, outputs)`` and return a dict of
    ``(B, 3, H, W)`` maps, and have ``config`` and ``routes``; the one constructor that
    training, checkpoints and inference should call."""
    if config.variant == PIX2PIX:
        return Pix2PixGenerator(config)
    return CrossModalNet(config)
