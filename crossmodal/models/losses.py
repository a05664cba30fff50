"""Training losses (paper §3.3): eq. 1 cosine normal loss, eq. 2 L2 image loss, masked; the
angular error itself (``normal_angle``, DSINE's choice); and the terms of the Pix2Pix
baseline ("Normal Map Estimation in the Wild", seed 001, *Wild*):
L_rec (MSE on the normals), L_vgg (perceptual) and L_adv (adversarial).

Both losses are applied "only on facial regions": every pixel carries a weight from the
mask (a bool mask gives 0/1, a float mask its value, expected in [0, 1]) and the loss is
the weighted mean over the pixels of the **whole batch**:

    loss = sum_{b,i,j} w(b,i,j) * l(b,i,j) / sum_{b,i,j} w(b,i,j)

Batch pooling, rather than the mean over images of each image's own mean, is a choice:

- for one image it *is* eq. 1 / eq. 2 with |N| the number of mask pixels;
- every face pixel counts the same whatever the size of its face in the crop, so a
  sample with a tiny mask (a few noisy border pixels) cannot weigh as much as a full
  face, and an image with an empty mask simply contributes nothing (a per-image mean
  would be 0/0 for it);
- it is the masked mean the authors' ``loss * mask`` style implementation gives.

It equals the mean of the per-image losses weighted by each image's mask area.

Pixels whose target is unusable are left out (weight 0): a non-finite target for both
losses, and also a zero-length target normal (shorter than :data:`crossmodal.vectors.EPS`)
for eq. 1, which has no direction to compare with. When no pixel is left (an all-empty
mask), the loss is an exact 0 that is still connected to ``pred`` in the autograd graph, so
``backward()`` works and gives zero gradients instead of NaN. Predictions outside the used
pixels never reach the arithmetic (they are replaced by 0 first, so a NaN there cannot leak
into the loss or the gradients); a non-finite prediction *inside* the mask makes the loss
NaN on purpose, so a diverging network is not hidden.

The arithmetic runs in float32 at least (float64 when an input is float64): half
precision (AMP) is too coarse for ``1 - cos`` of small angles. No Python loop touches
pixels; everything stays on ``pred``'s device (``target`` and ``mask`` are moved there).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import InputError
from ..vectors import unit_vectors
from .pix2pix import adversarial_loss

__all__ = ["ANGLE_CLAMP", "CRITIC_TERMS", "LOSS_TERMS", "discriminator_loss",
           "generator_adversarial_loss", "image_loss", "masked_normals", "normal_angle_loss",
           "normal_loss", "normal_mse_loss", "perceptual_loss"]


def normal_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1: ``1 - mean over mask pixels of cos(pred, target)``.

    Args:
        pred: predicted normals ``(B, 3, H, W)``, any length (renormalised here; a
            zero-length prediction counts as cos = 0).
        target: ground-truth normals ``(B, 3, H, W)``, any length (renormalised here);
            pixels with a non-finite or zero-length target are excluded.
        mask: ``(B, H, W)`` or ``(B, 1, H, W)``, bool (facial pixels) or float weights in
            [0, 1]; None uses every pixel.

    Returns:
        A scalar tensor: ``sum w (1 - cos) / sum w`` over the batch's pixels (module
        docstring: batch-pooled, not per-image), in [0, 2]; exactly 0 (with a grad_fn)
        when no pixel is usable.
    """
    cos, weight = _masked_cosines(pred, target, mask, "normal_loss")
    return _weighted_mean(1.0 - cos, weight)


#: :func:`normal_angle_loss` clamps cosines to ``[-1 + d, 1 - d]``: the derivative of
#: arccos, ``-1 / sqrt(1 - c^2)``, is infinite at +-1 (about 700 at the clamp).
ANGLE_CLAMP = 1e-6


def normal_angle_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean angular error in radians over mask pixels, ``mean arccos(cos(pred,
    target))``: the metric itself (docs/design.md §6) as a loss, as DSINE trains (not
    the paper).

    Eq. 1's ``1 - cos`` is flat near a correct normal (its gradient shrinks as ``sin`` of
    the error), so pixels that are nearly right hardly pull; the angle's gradient has the
    same size at every error, so every pixel counts as it counts in the mean error.
    Arguments, pixels used and batch pooling as :func:`normal_loss`; cosines are clamped
    by :data:`ANGLE_CLAMP`.

    Returns:
        A scalar tensor in [0, pi]; exactly 0 (with a grad_fn) when no pixel is usable.
    """
    cos, weight = _masked_cosines(pred, target, mask, "normal_angle_loss")
    return _weighted_mean(torch.acos(cos.clamp(-1 + ANGLE_CLAMP, 1 - ANGLE_CLAMP)), weight)


def _masked_cosines(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                    what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, weight)``, both ``(B, H, W)``: the cosines of the renormalised prediction and
    target (0 where unused) and the pixel weights, 0 where the target is non-finite or
    zero-length (:func:`normal_loss`)."""
    pred, target, weight = _prepare(pred, target, mask, what, channels=3)
    t_unit, t_valid = unit_vectors(target)
    weight = weight * t_valid.squeeze(1).to(weight.dtype)
    used = (weight > 0).unsqueeze(1)
    # t_unit is NaN where the target is not finite; those pixels are unused and zeroed.
    p_unit, _ = unit_vectors(torch.where(used, pred, 0.0))
    return (p_unit * torch.where(used, t_unit, 0.0)).sum(dim=1), weight


def image_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 2: the mean over masked pixels of ``||I - Î||^2`` per pixel.

    Per pixel the squared error is *summed* over the channels (3 for RGB), then averaged
    over the mask pixels of the batch (weighted by a float mask): a uniform error of d
    in every channel gives ``3 d^2``.

    Args:
        pred: decoded image ``(B, C, H, W)``.
        target: ground-truth image ``(B, C, H, W)``; pixels with any non-finite channel
            are excluded.
        mask: ``(B, H, W)`` or ``(B, 1, H, W)``, bool or float weights in [0, 1]; None
            uses every pixel.

    Returns:
        A scalar tensor; exactly 0 (with a grad_fn) when no pixel is usable.
    """
    pred, target, weight = _prepare(pred, target, mask, "image_loss")
    t_finite = torch.isfinite(target).all(dim=1, keepdim=True)
    weight = weight * t_finite.squeeze(1).to(weight.dtype)
    used = (weight > 0).unsqueeze(1)
    diff = torch.where(used, pred, 0.0) - torch.where(used, target, 0.0)
    return _weighted_mean(diff.square().sum(dim=1), weight)


def normal_mse_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """*Wild*'s L_rec: the mean squared error of the normal maps in *Wild*'s [0, 1] encoding
    ``(n + 1) / 2``, over the 3 channels and the mask pixels (batch-pooled, as eq. 1).

    That is ``||pred - t||^2 / 12`` per pixel with ``t`` the unit target, ``(1 - cos) / 6``
    for unit predictions: kept in *Wild*'s scale so its weights (10 L_rec, 1 L_vgg,
    0.25 L_adv) keep their balance. Pixels are used as by :func:`normal_loss` (a
    non-finite or zero-length target is left out).

    Args:
        pred: predicted normals ``(B, 3, H, W)``, used as they are (not renormalised).
        target: ground-truth normals ``(B, 3, H, W)``, renormalised.
        mask: ``(B, H, W)`` or ``(B, 1, H, W)``, bool or float weights; None for all pixels.

    Returns:
        A scalar tensor; exactly 0 (with a grad_fn) when no pixel is usable.
    """
    pred, target, weight = _prepare(pred, target, mask, "normal_mse_loss", channels=3)
    t_unit, t_valid = unit_vectors(target)
    weight = weight * t_valid.squeeze(1).to(weight.dtype)
    used = (weight > 0).unsqueeze(1)
    diff = torch.where(used, pred, 0.0) - torch.where(used, t_unit, 0.0)
    return _weighted_mean(diff.square().sum(dim=1) / 12.0, weight)


def masked_normals(normals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` normals scaled by the ``(B, H, W)`` (or ``(B, 1, H, W)``) mask
    weights, exactly 0 outside it (a NaN there does not survive).

    What the networks beside the model see (VGG16 for L_vgg, the discriminator for L_adv):
    the losses are "only on facial regions", and a generator's background, which no other
    term constrains, must not be what tells a fake pair from a real one (whose background
    is 0).
    """
    weight = (mask if mask.ndim == 4 else mask.unsqueeze(1)).to(normals.dtype)
    return torch.where(weight > 0, normals * weight, 0.0)


def perceptual_loss(perceptual: nn.Module, pred: torch.Tensor,
                    batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """*Wild*'s L_vgg: ``perceptual`` (a :class:`~crossmodal.models.vgg.PerceptualLoss`) of
    the predicted and ground-truth normals ``(B, 3, H, W)`` (``batch["normals"]``), both
    :func:`masked_normals` by ``batch["mask"]``; a scalar."""
    mask = batch["mask"]
    return perceptual(masked_normals(pred, mask), masked_normals(batch["normals"], mask))


def generator_adversarial_loss(discriminator: nn.Module, pred: torch.Tensor,
                               batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """*Wild*'s L_adv for the generator: the BCE of ``discriminator``'s patch logits for
    the pair (``batch["image"]``, predicted normals ``(B, 3, H, W)``, masked) against
    "real"; a scalar. Gradients reach ``pred`` (and, unless frozen, the discriminator)."""
    fake = masked_normals(pred, batch["mask"])
    return adversarial_loss(discriminator(batch["image"], fake), real=True)


def discriminator_loss(discriminator: nn.Module, pred: torch.Tensor,
                       batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The discriminator's objective (Pix2Pix): the mean of the BCE of real pairs
    (``batch["image"]``, ground-truth ``batch["normals"]``) against 1 and of fake pairs
    (the image, ``pred`` ``(B, 3, H, W)`` detached) against 0, normals masked; a scalar.
    Pix2Pix halves the sum so that D learns at half G's pace; the mean is that."""
    image, mask = batch["image"], batch["mask"]
    real = discriminator(image, masked_normals(batch["normals"], mask))
    fake = discriminator(image, masked_normals(pred.detach(), mask))
    return (adversarial_loss(real, real=True) + adversarial_loss(fake, real=False)) / 2


def _prepare(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    what: str,
    channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes; return pred, target in the computation dtype and the (B, H, W)
    float weights, all on ``pred``'s device."""
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{what}: {name} must be a torch tensor, got {type(x).__name__}")
    if pred.ndim != 4 or (channels is not None and pred.shape[1] != channels):
        c = "C" if channels is None else channels
        raise InputError(f"{what}: pred must have shape (B, {c}, H, W), got "
                         f"{tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise InputError(f"{what}: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise InputError(f"{what}: pred and target must be floating point, got "
                         f"{pred.dtype} and {target.dtype}")
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    pred = pred.to(dtype)
    target = target.to(device=pred.device, dtype=dtype)
    b, _, h, w = pred.shape
    if mask is None:
        return pred, target, pred.new_ones(b, h, w)
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{what}: mask must be a torch tensor, got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask.squeeze(1)
    if tuple(mask.shape) != (b, h, w):
        raise InputError(f"{what}: mask must have shape ({b}, {h}, {w}) or ({b}, 1, {h}, "
                         f"{w}) to match pred {tuple(pred.shape)}, got {tuple(mask.shape)}")
    if mask.is_complex():
        raise InputError(f"{what}: mask must be bool or real weights, got {mask.dtype}")
    # A mask is data, not a parameter: no gradient flows into it.
    return pred, target, mask.detach().to(device=pred.device, dtype=dtype)


def _weighted_mean(value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * value) / sum(w)``; 0 (still in ``value``'s graph) when ``sum(w) == 0``."""
    total = weight.sum()
    # With no weight the numerator is an exact 0 (value is finite where weight is 0),
    # and any positive denominator keeps it 0 with zero gradients.
    return (weight * value).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


#: The loss terms of the training schedule (§3.3), by name: the model output each scores
#: and its function, ``(pred, target, mask) -> scalar`` where the target is the batch entry
#: of the same name as the output, or for a term of :data:`CRITIC_TERMS`
#: ``(network, pred, batch) -> scalar``.
LOSS_TERMS = {
    "normal": ("normals", normal_loss),                     # eq. 1, masked cosine
    "normal_angle": ("normals", normal_angle_loss),         # the angular error (DSINE)
    "image": ("image", image_loss),                         # eq. 2, masked L2
    "normal_mse": ("normals", normal_mse_loss),             # Wild's L_rec
    "perceptual": ("normals", perceptual_loss),             # Wild's L_vgg
    "adversarial": ("normals", generator_adversarial_loss),  # Wild's L_adv
}
#: The terms scored by a network beside the model, which the trainer builds only when a
#: pass weighs them, and the batch entries they read (the mask too): the discriminator
#: judges (image, normals) pairs, the prediction's against the ground truth's.
CRITIC_TERMS = {"perceptual": ("normals",), "adversarial": ("image", "normals")}
