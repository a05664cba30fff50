"""VGG16's convolutional part with torchvision's parameter names, and the perceptual loss of
"Normal Map Estimation in the Wild" ("Training": L_vgg, "a perceptual loss [Johnson et al.
2016] using the VGG16 model pretrained on ImageNet").

torchvision cannot be used here, so :class:`VGG16` restates ``torchvision.models.vgg16``'s
``features`` (configuration "D") layer for layer: its parameters are named
``features.{i}.weight`` / ``features.{i}.bias`` with the convs at ``i`` in
:data:`VGG16_CONV_INDICES`, exactly as torchvision numbers them, so torchvision's ImageNet
state dict, kept locally by the user, loads with :func:`load_vgg16_weights`. Nothing is
downloaded. Where the file lives is the training config's business; the loss takes the
loaded network.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CrossmodalError
from ..fileutil import load_torch_file
from .pretrained import check_state_dict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PERCEPTUAL_LAYERS", "VGG16", "VGG16_CFG",
           "VGG16_CONV_INDICES", "VGG16_FILE", "VGG16_URL", "PerceptualLoss",
           "load_vgg16_weights"]

#: torchvision's configuration "D": conv output channels (3x3, padding 1, each followed by a
#: ReLU) and "M", a 2x2 stride-2 max pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")
#: Positions of the 13 convs in ``features`` (a ReLU follows each, a pool each group).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: The ReLUs whose outputs the perceptual loss compares, by their VGG names -> index in
#: ``features``: the last of each of the first four groups, Johnson et al.'s style layers.
PERCEPTUAL_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
#: torchvision's ImageNet ``vgg16`` state dict, the file :func:`load_vgg16_weights` reads.
VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
#: The statistics torchvision's ImageNet models were trained with, on RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16(nn.Module):
    """``torchvision.models.vgg16().features``: 31 layers, 14,714,688 parameters.

    ``forward((B, 3, H, W), taps)`` runs the layers up to the last index in ``taps`` only
    and returns the outputs of those layers, e.g. ``(B, 64, H, W)``, ``(B, 128, H/2, W/2)``,
    ``(B, 256, H/4, W/4)``, ``(B, 512, H/8, W/8)`` for :data:`PERCEPTUAL_LAYERS`. Inputs
    are ImageNet-normalised RGB (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`). PyTorch's
    default init: meaningful only once :func:`load_vgg16_weights` has filled it.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                # Not in place (torchvision's are): the tapped ReLU outputs are kept.
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU()]
                channels = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor,
                taps: tuple[int, ...] = tuple(PERCEPTUAL_LAYERS.values())) -> list[torch.Tensor]:
        """The outputs of ``features[i]`` for each ``i`` in ``taps`` (increasing)."""
        out = []
        for i, layer in enumerate(self.features[:max(taps) + 1]):
            x = layer(x)
            if i in taps:
                out.append(x)
        return out


def load_vgg16_weights(path: str | Path) -> VGG16:
    """A frozen (no gradients, eval mode) :class:`VGG16` holding torchvision's ImageNet
    ``vgg16`` state dict saved at ``path`` (read with ``weights_only=True``).

    Its ``classifier.*`` tensors are ignored; any other missing, extra or mismatched tensor
    is an error naming it, so a wrong file never half-loads.

    Raises:
        CrossmodalError: one line naming ``path``: missing (an ``InputError`` saying where
            to get :data:`VGG16_FILE`), unreadable, or not a torchvision vgg16 state dict.
    """
    path = Path(path)
    state = load_torch_file(path, what="VGG16 weights",
                            fix=f"download torchvision's ImageNet vgg16 state dict {VGG16_URL} "
                            f"and place it at that path")
    if not isinstance(state, dict):
        raise CrossmodalError(f"{path} holds a {type(state).__name__}, not a state dict; "
                              f"use torchvision's {VGG16_FILE}")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    vgg = VGG16()
    own = vgg.state_dict()
    check_state_dict(own, state, path, "vgg16", f"use {VGG16_FILE}")
    vgg.load_state_dict(state)
    return vgg.requires_grad_(False).eval()


class PerceptualLoss(nn.Module):
    """L_vgg: the sum over :data:`PERCEPTUAL_LAYERS` (relu1_2, relu2_2, relu3_3, relu4_3) of
    the mean squared difference between the VGG16 features of the predicted and target
    normal maps (Johnson et al.'s feature reconstruction loss, each layer normalised by its
    size, equally weighted).

    Each map ``(B, 3, H, W)`` of unit vectors is seen as an image: mapped to [0, 1] by
    ``(n + 1) / 2`` (the normal-map image encoding) and ImageNet-normalised. ``vgg`` (e.g.
    from :func:`load_vgg16_weights`) is frozen here: no gradients, and kept in eval mode
    whatever ``train()`` is called with; gradients reach the prediction only.
    """

    def __init__(self, vgg: VGG16) -> None:
        super().__init__()
        self.vgg = vgg.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss, a scalar, for ``prediction`` and ``target`` ``(B, 3, H, W)`` unit
        normals; 0 when they are equal."""
        # One VGG pass over both halves: half the kernel launches of two.
        x = (torch.cat([prediction, target]) + 1) / 2
        features = self.vgg((x - self.mean) / self.std)
        losses = [F.mse_loss(p, t.detach()) for p, t in (f.chunk(2) for f in features)]
        return torch.stack(losses).sum()
