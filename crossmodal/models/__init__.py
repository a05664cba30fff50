"""The cross-modal model: encoders, decoders, deactivable skips, variants and losses."""

from .losses import image_loss, normal_loss
from .net import (
    OUTPUT_ACTIVATIONS, ROUTE_INPUTS, ROUTE_OUTPUTS, ROUTES, VARIANTS, CrossModalNet, ModelConfig)

__all__ = ["OUTPUT_ACTIVATIONS", "ROUTES", "ROUTE_INPUTS", "ROUTE_OUTPUTS", "VARIANTS",
           "CrossModalNet", "ModelConfig", "image_loss", "normal_loss"]
