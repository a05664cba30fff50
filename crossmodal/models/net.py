"""The cross-modal network (paper §3.1-3.2, Fig. 2), its ablation variants (Fig. 6) and the
model config, which also selects the Pix2Pix baseline (:mod:`crossmodal.models.pix2pix`).

Two encoder/decoder pairs share one latent space: image (E_I, D_I) and normal (E_N, D_N),
with deactivable skip connections from E_I to D_N. The default configuration reproduces
the authors' released ``ResNetUNet`` exactly (docs/design.md §7), so their ``model.pth`` loads
through :mod:`crossmodal.checkpoint.official`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..image_size import check_image_size
from .decoder import Decoder
from .encoder import ResNetEncoder, encoder_channels
from .resnet import load_imagenet_weights

__all__ = ["MODEL_VARIANTS", "OUTPUT_ACTIVATIONS", "PIX2PIX", "ROUTES", "ROUTE_INPUTS",
           "ROUTE_OUTPUTS", "VARIANTS", "CrossModalNet", "ModelConfig"]

#: Fig. 6: (a) the full model, (b) without skip connections, (c) without E_N (standard
#: skips), (d) without E_N and D_I, i.e. a plain U-Net with standard skips.
VARIANTS = ("full", "no_skips", "no_normal_encoder", "plain_unet")
#: The baseline of "Normal Map Estimation in the Wild" (docs/design.md §10): another
#: family, :class:`~crossmodal.models.pix2pix.Pix2PixGenerator`, not a CrossModalNet, so it
#: is not in :data:`VARIANTS`, which code and tests iterate to build CrossModalNets.
PIX2PIX = "pix2pix"
#: Every value of ``model.variant``; :func:`crossmodal.models.build_network` builds each.
MODEL_VARIANTS = (*VARIANTS, PIX2PIX)
#: The passes of the training schedule (§3.3).
ROUTES = ("image_to_normal", "normal_to_normal", "image_to_image")
#: What each pass reads: an image or a normal map, ``(B, 3, H, W)``.
ROUTE_INPUTS = {"image_to_normal": "image", "normal_to_normal": "normals",
                "image_to_image": "image"}
#: The maps each pass can return; image->normal also decodes the image from the same
#: encoding (Fig. 2), when the variant has D_I and the caller asks for it.
ROUTE_OUTPUTS = {"image_to_normal": ("normals", "image"), "normal_to_normal": ("normals",),
                 "image_to_image": ("image",)}
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

    The fields up to ``imagenet_weights`` define the cross-modal network; the variant
    ``pix2pix`` ignores them (they are neither used nor checked) and reads the last three.

    Attributes:
        variant: one of :data:`MODEL_VARIANTS`: a cross-modal variant (:data:`VARIANTS`) or
            ``pix2pix``, the Pix2Pix baseline.
        trunk_width: base width w of both encoders' ResNet-18 trunks (stages of w, w, 2w,
            4w, 8w channels) and of their full-resolution branch; the skips then have
            4w, 2w, w, w, w channels (deep to shallow) and the latent 8w. The default, 64,
            is ResNet-18, the authors'; smaller widths are for tests and smoke runs.
        normal_decoder_widths: channels entering D_N's five 3x3 convs (the authors':
            768, 640, 320, 320, 192, of which 256, 128, 64, 64, 64 take the skips); each
            must exceed its skip's channels.
        image_decoder_widths: channels entering D_I's five 3x3 convs (the first is the
            latent's 8w, 512 theirs).
        head_channels: channels before each decoder's 1x1 output conv.
        output_activation: 'none' (the authors') or 'tanh' (as in "Normal Map Estimation in
            the Wild", docs/design.md §10) before the L2 normalisation of the normal output.
        imagenet_weights: optional path to a local torchvision ``resnet18`` state dict
            initialising both encoders' trunks; None keeps random init as in the paper.
            Must stay None for ``pix2pix``, whose init is N(0, 0.02).
        pix2pix_width: ``pix2pix``'s generator base width w: its four encoder levels have
            w, 2w, 4w, 8w channels (Pix2Pix's 64 ... 512 at the default, 64).
        discriminator_width: ``pix2pix``'s PatchGAN first-layer channels (Pix2Pix: 64),
            doubled per layer up to 8x.
        discriminator_layers: ``pix2pix``'s PatchGAN stride-2 layers n (Pix2Pix: 3, the
            70x70 PatchGAN); its logits are H / 2^n - 2 on a side.
    """

    variant: str = "full"
    trunk_width: int = 64
    normal_decoder_widths: tuple[int, ...] = (768, 640, 320, 320, 192)
    image_decoder_widths: tuple[int, ...] = (512, 512, 256, 256, 128)
    head_channels: int = 64
    output_activation: str = "none"
    imagenet_weights: str | None = None
    pix2pix_width: int = 64
    discriminator_width: int = 64
    discriminator_layers: int = 3

    def __post_init__(self) -> None:
        self.normal_decoder_widths = tuple(int(w) for w in self.normal_decoder_widths)
        self.image_decoder_widths = tuple(int(w) for w in self.image_decoder_widths)
        for name, value, valid in (("variant", self.variant, MODEL_VARIANTS),
                                   ("output_activation", self.output_activation,
                                    OUTPUT_ACTIVATIONS)):
            if value not in valid:
                raise InputError(f"model.{name} {value!r} is not one of {', '.join(valid)}")
        if self.variant == PIX2PIX:
            self._check_pix2pix()
        else:
            self._check_cross_modal()

    def _check_pix2pix(self) -> None:
        for name in ("pix2pix_width", "discriminator_width", "discriminator_layers"):
            if getattr(self, name) < 1:
                raise InputError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.imagenet_weights:
            raise InputError(f"model.imagenet_weights initialises the cross-modal ResNet-18 "
                             f"trunks, which the {PIX2PIX!r} variant does not have; leave it "
                             f"unset")

    def _check_cross_modal(self) -> None:
        if self.trunk_width < 1:
            raise InputError(f"model.trunk_width must be positive, got {self.trunk_width}")
        channels = encoder_channels(self.trunk_width)
        skips = channels.skips[::-1]
        for name, widths in (("normal_decoder_widths", self.normal_decoder_widths),
                             ("image_decoder_widths", self.image_decoder_widths)):
            if len(widths) != 5 or min(widths) < 1:
                raise InputError(f"model.{name} needs 5 positive widths, got {list(widths)}")
        # Deactivable skips fuse into the last C channels; concat skips are appended, so
        # the conv feeding each stage must still have room for at least one channel.
        if any(w <= s for w, s in zip(self.normal_decoder_widths, skips)):
            raise InputError(f"model.normal_decoder_widths {list(self.normal_decoder_widths)} "
                             f"must exceed the skip channels {list(skips)} of trunk_width "
                             f"{self.trunk_width} stage by stage")
        if self.image_decoder_widths[0] != channels.latent:
            raise InputError(f"model.image_decoder_widths must start with the latent's "
                             f"{channels.latent} channels (8 x trunk_width "
                             f"{self.trunk_width}), got {self.image_decoder_widths[0]}")
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
        if config.variant not in VARIANTS:
            raise InputError(f"model.variant {config.variant!r} is not a cross-modal variant "
                             f"({', '.join(VARIANTS)}); build the network with "
                             f"crossmodal.models.build_network")
        has_normal_encoder, has_image_decoder, skip_mode = _STRUCTURE[config.variant]
        width = config.trunk_width
        self.image_encoder = ResNetEncoder(full_resolution=skip_mode != "none", width=width)
        # E_N's skips are never used (§3.2); the full model keeps its full-resolution
        # branch anyway because the authors' released checkpoint has it.
        self.normal_encoder = (ResNetEncoder(full_resolution=config.variant == "full",
                                             width=width)
                               if has_normal_encoder else None)
        channels = encoder_channels(width)
        skip_channels = channels.skips[::-1]  # the decoder goes deep to shallow
        self.normal_decoder = Decoder(config.normal_decoder_widths, skip_channels, skip_mode,
                                      project_latent=True, latent_channels=channels.latent,
                                      head_channels=config.head_channels)
        self.image_decoder = (
            Decoder(config.image_decoder_widths, skip_channels, "none", project_latent=False,
                    latent_channels=channels.latent, head_channels=config.head_channels)
            if has_image_decoder else None)
        if config.imagenet_weights:
            for encoder in (self.image_encoder, self.normal_encoder):
                if encoder is not None:
                    load_imagenet_weights(encoder.trunk, config.imagenet_weights)

    @property
    def routes(self) -> tuple[str, ...]:
        """The passes this variant can run."""
        return tuple(r for r in ROUTES if (r != "normal_to_normal" or self.normal_encoder)
                     and (r != "image_to_image" or self.image_decoder))

    def forward(self, x: torch.Tensor, route: str = "image_to_normal",
                outputs: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Run one pass of the training schedule (one entry point, so DDP sees every pass).

        Args:
            x: ``(B, 3, H, W)``: an image for 'image_to_normal' / 'image_to_image', a
                normal map for 'normal_to_normal'.
            route: one of :attr:`routes`.
            outputs: the maps to compute, among the route's :data:`ROUTE_OUTPUTS`; None
                for all that this variant produces. Only what is asked for runs: an
                image->normal pass for inference skips D_I (a third of its cost at 256 px).

        Returns:
            ``{"normals": (B, 3, H, W) unit vectors}`` and/or ``{"image": (B, 3, H, W)}``.
        """
        _check_input(x)
        if route not in self.routes:
            raise InputError(f"route {route!r} is not available in the "
                             f"{self.config.variant!r} variant; valid: {', '.join(self.routes)}")
        available = tuple(o for o in ROUTE_OUTPUTS[route]
                          if o != "image" or self.image_decoder is not None)
        if outputs is None:
            outputs = available
        elif not set(outputs) <= set(available):
            raise InputError(f"the {route} pass of the {self.config.variant!r} variant "
                             f"produces {', '.join(available)}; asked for {', '.join(outputs)}")
        if route == "normal_to_normal":
            # Skips deactivated: D_N decodes E_N's latent alone (§3.2).
            return {"normals": self._normals(self.normal_decoder(self.normal_encoder(
                x, with_skips=False).latent))}
        with_skips = "normals" in outputs and bool(self.normal_decoder.skips)
        features = self.image_encoder(x, with_skips=with_skips)
        out = {}
        if "normals" in outputs:
            skips = features.skips[::-1] if with_skips else None
            out["normals"] = self._normals(self.normal_decoder(features.latent, skips))
        if "image" in outputs:
            out["image"] = self.image_decoder(features.latent)
        return out

    def _normals(self, raw: torch.Tensor) -> torch.Tensor:
        if self.config.output_activation == "tanh":
            raw = torch.tanh(raw)
        return F.normalize(raw, dim=1, eps=1e-6)


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    check_image_size(tuple(x.shape[-2:]), "input size", "crop or resize to")
