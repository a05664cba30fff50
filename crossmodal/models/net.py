"""The cross-modal network (paper §3.1-3.2, Fig. 2) and its ablation variants (Fig. 6).

Two encoder/decoder pairs share one latent space: image (E_I, D_I) and normal (E_N, D_N),
with deactivable skip connections from E_I to D_N. The default configuration reproduces
the authors' released ``ResNetUNet`` exactly (DESIGN.md §7), so their ``model.pth`` loads
through :mod:`crossmodal.models.official`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .decoder import Decoder
from .encoder import ResNetEncoder
from .resnet import load_imagenet_weights

__all__ = ["OUTPUT_ACTIVATIONS", "ROUTES", "VARIANTS", "CrossModalNet", "ModelConfig"]

#: Fig. 6: (a) the full model, (b) without skip connections, (c) without E_N (standard
#: skips), (d) without E_N and D_I, i.e. a plain U-Net with standard skips.
VARIANTS = ("full", "no_skips", "no_normal_encoder", "plain_unet")
#: The passes of the training schedule (§3.3).
ROUTES = ("image_to_normal", "normal_to_normal", "image_to_image")
OUTPUT_ACTIVATIONS = ("none", "tanh")

_STRUCTURE = {  # variant -> (has E_N, has D_I, skip mode of D_N)
    "full": (True, True, "deactivable"),
    "no_skips": (True, True, "none"),
    "no_normal_encoder": (False, True, "concat"),
    "plain_unet": (False, False, "concat"),
}


@dataclass
class ModelConfig:
    """Everything that defines the network; stored in every checkpoint.

    Attributes:
        variant: one of :data:`VARIANTS`.
        normal_decoder_widths: channels entering D_N's five 3x3 convs (the authors':
            768, 640, 320, 320, 192, of which 256, 128, 64, 64, 64 take the skips).
        image_decoder_widths: channels entering D_I's five 3x3 convs (the first is the
            latent's 512).
        head_channels: channels before each decoder's 1x1 output conv.
        output_activation: 'none' (the authors') or 'tanh' (seed 001) before the L2
            normalisation of the normal output.
        imagenet_weights: optional path to a local torchvision ``resnet18`` state dict
            initialising both encoders' trunks; None keeps random init as in the paper.
    """

    variant: str = "full"
    normal_decoder_widths: tuple[int, ...] = (768, 640, 320, 320, 192)
    image_decoder_widths: tuple[int, ...] = (512, 512, 256, 256, 128)
    head_channels: int = 64
    output_activation: str = "none"
    imagenet_weights: str | None = None

    def __post_init__(self) -> None:
        self.normal_decoder_widths = tuple(int(w) for w in self.normal_decoder_widths)
        self.image_decoder_widths = tuple(int(w) for w in self.image_decoder_widths)
        for name, value, valid in (("variant", self.variant, VARIANTS),
                                   ("output_activation", self.output_activation,
                                    OUTPUT_ACTIVATIONS)):
            if value not in valid:
                raise InputError(f"model.{name} {value!r} is not one of {', '.join(valid)}")
        skips = ResNetEncoder.skip_channels[::-1]
        for name, widths in (("normal_decoder_widths", self.normal_decoder_widths),
                             ("image_decoder_widths", self.image_decoder_widths)):
            if len(widths) != 5 or min(widths) < 1:
                raise InputError(f"model.{name} needs 5 positive widths, got {list(widths)}")
        # Deactivable skips fuse into the last C channels; concat skips are appended, so
        # the conv feeding each stage must still have room for at least one channel.
        if any(w <= s for w, s in zip(self.normal_decoder_widths, skips)):
            raise InputError(f"model.normal_decoder_widths {list(self.normal_decoder_widths)} "
                             f"must exceed the skip channels {list(skips)} stage by stage")
        if self.image_decoder_widths[0] != ResNetEncoder.latent_channels:
            raise InputError(f"model.image_decoder_widths must start with the latent's "
                             f"{ResNetEncoder.latent_channels} channels, got "
                             f"{self.image_decoder_widths[0]}")
        if self.head_channels < 1:
            raise InputError(f"model.head_channels must be positive, got {self.head_channels}")

    def to_dict(self) -> dict:
        """Plain containers (lists, not tuples), safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise InputError(f"unknown model config keys {unknown}; valid: {', '.join(valid)}")
        return cls(**d)


class CrossModalNet(nn.Module):
    """E_I, E_N, D_N, D_I as the variant has them; see :data:`VARIANTS`.

    Submodules, by role: ``image_encoder``, ``normal_encoder`` (None without E_N),
    ``normal_decoder`` (its ``skips`` are the deactivable skip connections) and
    ``image_decoder`` (None without D_I). Inputs are RGB images in [0, 1] or unit normal
    maps, ``(B, 3, H, W)`` with H and W multiples of 32; no mean/std normalisation.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        has_normal_encoder, has_image_decoder, skip_mode = _STRUCTURE[config.variant]
        self.image_encoder = ResNetEncoder(full_resolution=skip_mode != "none")
        # E_N's skips are never used (§3.2); the full model keeps its full-resolution
        # branch anyway because the authors' released checkpoint has it.
        self.normal_encoder = (ResNetEncoder(full_resolution=config.variant == "full")
                               if has_normal_encoder else None)
        skip_channels = ResNetEncoder.skip_channels[::-1]  # the decoder goes deep to shallow
        self.normal_decoder = Decoder(config.normal_decoder_widths, skip_channels, skip_mode,
                                      project_latent=True, head_channels=config.head_channels)
        self.image_decoder = (
            Decoder(config.image_decoder_widths, skip_channels, "none", project_latent=False,
                    head_channels=config.head_channels) if has_image_decoder else None)
        if config.imagenet_weights:
            for encoder in (self.image_encoder, self.normal_encoder):
                if encoder is not None:
                    load_imagenet_weights(encoder.trunk, config.imagenet_weights)

    @property
    def routes(self) -> tuple[str, ...]:
        """The passes this variant can run."""
        return tuple(r for r in ROUTES if (r != "normal_to_normal" or self.normal_encoder)
                     and (r != "image_to_image" or self.image_decoder))

    def forward(self, x: torch.Tensor, route: str = "image_to_normal") -> dict[str, torch.Tensor]:
        """Run one pass of the training schedule (one entry point, so DDP sees every pass).

        Args:
            x: ``(B, 3, H, W)``: an image for 'image_to_normal' / 'image_to_image', a
                normal map for 'normal_to_normal'.
            route: one of :attr:`routes`.

        Returns:
            ``{"normals": (B, 3, H, W) unit vectors}`` and/or ``{"image": (B, 3, H, W)}``:
            image->normal also decodes the image from the same encoding when D_I exists.
        """
        _check_input(x)
        if route not in self.routes:
            raise InputError(f"route {route!r} is not available in the "
                             f"{self.config.variant!r} variant; valid: {', '.join(self.routes)}")
        if route == "normal_to_normal":
            # Skips deactivated: D_N decodes E_N's latent alone (§3.2).
            return {"normals": self._normals(self.normal_decoder(self.normal_encoder(
                x, with_skips=False).latent))}
        with_skips = route == "image_to_normal" and bool(self.normal_decoder.skips)
        features = self.image_encoder(x, with_skips=with_skips)
        out = {}
        if route == "image_to_normal":
            skips = features.skips[::-1] if with_skips else None
            out["normals"] = self._normals(self.normal_decoder(features.latent, skips))
        if self.image_decoder is not None:
            out["image"] = self.image_decoder(features.latent)
        return out

    def _normals(self, raw: torch.Tensor) -> torch.Tensor:
        if self.config.output_activation == "tanh":
            raw = torch.tanh(raw)
        return F.normalize(raw, dim=1, eps=1e-6)


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 32 or w % 32:
        raise InputError(f"input size {w}x{h} is not a multiple of 32 (the encoder "
                         f"downsamples 5 times); crop or resize to e.g. "
                         f"{max(32, round(w / 32) * 32)}x{max(32, round(h / 32) * 32)}")
