"""The network's input-size rule: image sides are multiples of 32, because the encoders
halve the resolution five times down to the latent (paper §3.1, Fig. 2) and the decoders
double it back.

Torch-free, so that the dataset generator checks its ``--size`` without loading the model.
"""

from __future__ import annotations

from .errors import InputError

__all__ = ["SIZE_MULTIPLE", "check_image_size"]

#: Every input side must be a positive multiple of this (2**5: five stride-2 stages).
SIZE_MULTIPLE = 32


def check_image_size(size: int | tuple[int, int], what: str, fix: str) -> None:
    """Raise unless every side of ``size`` (a square side, or ``(height, width)``) is a
    positive multiple of :data:`SIZE_MULTIPLE`.

    Args:
        size: the side, or ``(height, width)``, in pixels.
        what: names the setting or input in the message (``data.image_size``, ``--size``).
        fix: what to do, completed in the message by the nearest valid size, e.g. "crop or
            resize to" gives "crop or resize to e.g. 96x64".

    Raises:
        InputError: ``"{what} {size} is not a positive multiple of 32 (...); {fix} e.g. N"``,
            sizes written ``WxH`` as image tools do.
    """
    sides = (size,) if isinstance(size, int) else tuple(size)
    if all(side >= SIZE_MULTIPLE and side % SIZE_MULTIPLE == 0 for side in sides):
        return
    nearest = [max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in sides]

    def shown(values: list[int] | tuple[int, ...]) -> str:
        return "x".join(str(v) for v in reversed(values))

    raise InputError(f"{what} {shown(sides)} is not a positive multiple of {SIZE_MULTIPLE} "
                     f"(the encoder halves it 5 times); {fix} e.g. {shown(nearest)}")
