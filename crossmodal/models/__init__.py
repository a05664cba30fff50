"""The cross-modal model: encoders, decoders, deactivable skips, variants and losses."""

from .net import OUTPUT_ACTIVATIONS, ROUTES, VARIANTS, CrossModalNet, ModelConfig

__all__ = ["OUTPUT_ACTIVATIONS", "ROUTES", "VARIANTS", "CrossModalNet", "ModelConfig"]
