"""The Pix2Pix-style baseline of "Normal Map Estimation in the Wild" (seed 001, cited below as
*Wild*): a residual U-Net generator and Pix2Pix's 70x70 PatchGAN discriminator.

The generator (*Wild*, "Architecture") has the calling convention of
:class:`~crossmodal.models.CrossModalNet` for its one pass, so the shared inference path,
``crossmodal eval``, ``predict`` and the ONNX export run it unchanged; it is selected by
``model.variant: pix2pix`` and built by :func:`crossmodal.models.build_network`. The
discriminator and :func:`adversarial_loss` are *Wild*'s L_adv ("Training": binary cross
entropy, "the same discriminator model as the one proposed in Pix2Pix"); they are training
machinery only and are not part of a checkpoint's ``model`` state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .net import PIX2PIX, ModelConfig

__all__ = ["GENERATOR_SIZE_MULTIPLE", "PatchDiscriminator", "Pix2PixGenerator",
           "ResidualBlock", "adversarial_loss", "generator_channels", "init_pix2pix_weights"]

#: Input sides must be positive multiples of this: the encoder halves them 4 times.
GENERATOR_SIZE_MULTIPLE = 16
#: Pix2Pix's init (Isola et al. 2017, §6.1.1): conv weights N(0, 0.02), batch-norm scales
#: N(1, 0.02), biases 0; *Wild* ("Architecture") keeps the N(0, 0.02).
INIT_STD = 0.02
#: Pix2Pix's slope, used by every LeakyReLU here.
LEAKY_SLOPE = 0.2
#: TF/'same' padding of a 4x4 stride-1 conv (left, right, top, bottom): the extra pixel goes
#: right and bottom, as ``padding='same'`` does, so the size is kept exactly.
_SAME_4X4 = (1, 2, 1, 2)


def generator_channels(width: int) -> tuple[int, int, int, int]:
    """Channels of the generator's four encoder levels, ``(w, 2w, 4w, 8w)``: Pix2Pix's
    doubling (64 ... 512 at the default width); its cap of 8w is reached at the fourth
    level, the bottleneck, so four levels never need it."""
    return (width, 2 * width, 4 * width, 8 * width)


def init_pix2pix_weights(module: nn.Module) -> None:
    """Pix2Pix's init on every conv and batch norm under ``module`` (:data:`INIT_STD`)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


class ResidualBlock(nn.Module):
    """*Wild*'s block: twice (4x4 conv, batch norm, LeakyReLU 0.2), with a residual
    connection "as proposed by ResNet", i.e. added before the second activation.

    ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``. With ``stride=2`` the first
    conv halves the size exactly (padding 1); every stride-1 4x4 conv is zero-padded by
    :data:`_SAME_4X4`, which keeps the size (an even kernel cannot be centred; a 4x4 kernel
    still holds any centred 3x3 one, so nothing is lost). The shortcut is the identity
    when shape is kept, else a 1x1 conv + batch norm projection as in ResNet, preceded for
    ``stride=2`` by a 2x2 average pool rather than ResNet's strided 1x1 conv: output pixel
    ``i`` of a 4x4 stride-2 padding-1 conv is centred on input pixels ``2i, 2i+1``, which
    the pool averages, while a strided 1x1 conv would sample ``2i`` half a pixel away.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        # No conv bias before a batch norm, whose shift replaces it (as Pix2Pix does).
        self.conv1 = nn.Conv2d(in_channels, out_channels, 4, stride, 1 if stride == 2 else 0,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 4, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            pool = [nn.AvgPool2d(2)] if stride == 2 else []
            self.shortcut = nn.Sequential(
                *pool, nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.act(self.bn1(self.conv1(x if self.stride == 2 else F.pad(x, _SAME_4X4))))
        out = self.bn2(self.conv2(F.pad(out, _SAME_4X4)))
        return self.act(out + identity)


class Pix2PixGenerator(nn.Module):
    """*Wild*'s generator ("Architecture"): a Pix2Pix U-Net of residual blocks.

    With w = ``config.pix2pix_width`` (64 by default) and an input ``(B, 3, H, W)``:

    - encoder ``down``: four stride-2 blocks, ``(B, w, H/2)``, ``(B, 2w, H/4)``,
      ``(B, 4w, H/8)``, ``(B, 8w, H/16)`` (the bottleneck);
    - decoder ``up``: four blocks, each after a bilinear x2 upsampling (*Wild*'s choice over
      Pix2Pix's transposed convs, against checkerboard artifacts; ``align_corners=False``,
      the pixel-area alignment of the stride-2 convs). Pix2Pix's skips: each block but the
      first reads the previous block's output concatenated with the encoder's of the same
      size, ``[skip, h]``: ``(B, 8w, H/16) -> (B, 4w, H/8)``, ``cat (B, 8w, H/8) -> (B, 2w,
      H/4)``, ``cat (B, 4w, H/4) -> (B, w, H/2)``, ``cat (B, 2w, H/2) -> (B, w, H)``;
    - ``refine``: *Wild*'s extra block after the last decoder block, ``(B, w, H, W)``, which
      puts distance between the last skip (high frequencies, specular highlights) and the
      output;
    - ``head``: a 1x1 conv to 3 channels, tanh (*Wild*), then L2 normalisation to unit
      vectors, ``(B, 3, H, W)``. *Wild* then maps them to [0, 1] for storage; here the
      network returns unit vectors in the project's convention (docs/design.md §2) and the
      file writers encode them.

    All weights follow :func:`init_pix2pix_weights`. Inputs are RGB in [0, 1] as for
    :class:`~crossmodal.models.CrossModalNet` (no mean/std normalisation), with sides that
    are positive multiples of :data:`GENERATOR_SIZE_MULTIPLE`. The cross-modal fields of
    :class:`ModelConfig` are not used.
    """

    #: The one pass there is: no normal encoder, no image decoder.
    routes: tuple[str, ...] = ("image_to_normal",)

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig(variant=PIX2PIX)
        if config.variant != PIX2PIX:
            raise InputError(f"model.variant {config.variant!r} is not {PIX2PIX!r}; build "
                             f"the network with crossmodal.models.build_network")
        c1, c2, c3, c4 = generator_channels(config.pix2pix_width)
        self.down = nn.ModuleList([ResidualBlock(3, c1, 2), ResidualBlock(c1, c2, 2),
                                   ResidualBlock(c2, c3, 2), ResidualBlock(c3, c4, 2)])
        self.up = nn.ModuleList([ResidualBlock(c4, c3), ResidualBlock(2 * c3, c2),
                                 ResidualBlock(2 * c2, c1), ResidualBlock(2 * c1, c1)])
        self.refine = ResidualBlock(c1, c1)
        self.head = nn.Conv2d(c1, 3, 1)
        init_pix2pix_weights(self)

    def forward(self, x: torch.Tensor, route: str = "image_to_normal",
                outputs: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Predict normals, in :class:`~crossmodal.models.CrossModalNet`'s convention.

        Args:
            x: images ``(B, 3, H, W)`` in [0, 1], H and W positive multiples of 16.
            route: ``"image_to_normal"``, the only one in :attr:`routes`.
            outputs: ``("normals",)``, or None for the same.

        Returns:
            ``{"normals": (B, 3, H, W) unit vectors}``.

        Raises:
            InputError: another route or output, or an input of another shape.
        """
        if route not in self.routes:
            raise InputError(f"route {route!r} is not available in the {PIX2PIX!r} variant; "
                             f"valid: {', '.join(self.routes)}")
        if outputs is not None and not set(outputs) <= {"normals"}:
            raise InputError(f"the image_to_normal pass of the {PIX2PIX!r} variant produces "
                             f"normals; asked for {', '.join(outputs)}")
        _check_input(x)
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
        for i, block in enumerate(self.up):
            if i:
                h = torch.cat([skips[-1 - i], h], dim=1)
            h = block(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        raw = torch.tanh(self.head(self.refine(h)))
        return {"normals": F.normalize(raw, dim=1, eps=1e-6)}


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    m = GENERATOR_SIZE_MULTIPLE
    if h < m or w < m or h % m or w % m:
        nearest = "x".join(str(max(m, round(s / m) * m)) for s in (w, h))
        raise InputError(f"input size {w}x{h} is not a positive multiple of {m} (the pix2pix "
                         f"generator halves it 4 times); crop or resize to e.g. {nearest}")


class PatchDiscriminator(nn.Module):
    """Pix2Pix's PatchGAN discriminator, conditioned on the image (*Wild*, "Training").

    ``forward(image (B, 3, H, W), normals (B, 3, H, W)) -> logits (B, 1, h, w)``, one per
    overlapping patch, on the concatenation ``(B, 6, H, W)`` as it is (images in [0, 1],
    unit normals in [-1, 1]). With w = ``config.discriminator_width`` and n =
    ``config.discriminator_layers`` (Pix2Pix's ``NLayerDiscriminator``): a 4x4 stride-2
    conv to w channels and LeakyReLU 0.2 (no batch norm on the first layer), n - 1 more
    stride-2 4x4 conv + batch norm + LeakyReLU layers doubling the channels (capped at 8w),
    one stride-1 such layer, and a stride-1 4x4 conv to one logit, all with padding 1. The
    default w = 64, n = 3 is C64-C128-C256-C512, the 70x70 PatchGAN: ``h = H / 2^n - 2``,
    14x14 logits for 128 px, 30x30 for 256 px. Initialised by
    :func:`init_pix2pix_weights`.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config or ModelConfig(variant=PIX2PIX)
        width, self.n_layers = config.discriminator_width, config.discriminator_layers
        layers: list[nn.Module] = [nn.Conv2d(6, width, 4, 2, 1), nn.LeakyReLU(LEAKY_SLOPE)]
        channels = width
        for k in range(1, self.n_layers + 1):
            out = width * min(2 ** k, 8)
            layers += [nn.Conv2d(channels, out, 4, 2 if k < self.n_layers else 1, 1,
                                 bias=False),
                       nn.BatchNorm2d(out), nn.LeakyReLU(LEAKY_SLOPE)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        init_pix2pix_weights(self)

    def forward(self, image: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, H / 2^n - 2, W / 2^n - 2)`` that each patch of the pair is real.

        Raises:
            InputError: the two are not ``(B, 3, H, W)`` of one shape, or too small to
                leave a patch.
        """
        if image.ndim != 4 or image.shape[1] != 3 or image.shape != normals.shape:
            raise InputError(f"the discriminator takes an image and normals of one (B, 3, H, "
                             f"W) shape, got {tuple(image.shape)} and {tuple(normals.shape)}")
        least = 3 * 2 ** self.n_layers
        if min(image.shape[-2:]) < least:
            raise InputError(f"the {self.n_layers}-layer patch discriminator needs sides of "
                             f"at least {least} px, got {image.shape[-1]}x{image.shape[-2]}")
        return self.layers(torch.cat([image, normals], dim=1))


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """*Wild*'s L_adv: binary cross entropy of the patch logits ``(B, 1, h, w)`` against all
    real (1) or all fake (0), averaged over patches and batch; a scalar."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
