"""The one normal-map convention of the package, its RGB encoding and converters.

Inside the package every normal map is in **camera space, right-handed: +x right, +y up,
+z towards the camera** (the OpenGL/Blender camera frame, docs/design.md §2). A surface facing
the camera has n = (0, 0, 1). Arrays are float32 ``(H, W, 3)`` (numpy) with unit vectors;
invalid pixels carry the zero vector and mask 0.

As an image a normal is stored as ``rgb = (n + 1) / 2``, so a frontal surface is
(0.5, 0.5, 1.0). Pure black, which no unit vector encodes to, marks invalid pixels.

Other tools use other frames. Each :class:`Convention` is a signed axis permutation from
ours to theirs plus the RGB encoding that tool writes; :func:`convert`,
:func:`to_convention` and :func:`from_convention` move vectors between them and
:func:`encode_rgb`/:func:`decode_rgb` write and read their images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = [
    "CONVENTIONS",
    "EPS",
    "Convention",
    "check_normals",
    "convert",
    "decode_rgb",
    "encode_rgb",
    "from_convention",
    "get_convention",
    "normalize",
    "to_convention",
]

#: Vectors shorter than this have no direction: invalid normals, excluded from losses
#: and metrics.
EPS = 1e-6
#: Default tolerance on ``| |n| - 1 |`` for a normal map to count as unit-length. An 8-bit
#: encoding is off by at most ~0.7% (half a grey level on each of three channels).
UNIT_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Convention:
    """A normal-map convention: a camera frame and the way a tool writes it as RGB.

    Attributes:
        name: key in :data:`CONVENTIONS`.
        axes: ``(3, 3)`` signed permutation; a vector ``n`` of ours is ``axes @ n`` in
            this convention. Orthogonal, so the inverse is the transpose.
        rgb_signs: the tool stores component ``c`` of its own vector as
            ``(rgb_signs[c] * v[c] + 1) / 2`` in channel ``c`` (R, G, B).
        description: the frame in words, and where it comes from.
        verified: False where the definition is read from code or documents but has not
            been checked against the tool's real output.
    """

    name: str
    axes: tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]
    rgb_signs: tuple[int, int, int]
    description: str
    verified: bool = True

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.axes, dtype=np.float32)


_IDENTITY = ((1, 0, 0), (0, 1, 0), (0, 0, 1))

CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention(
            "opengl",
            _IDENTITY,
            (1, 1, 1),
            "ours: +x right, +y up, +z towards the camera (OpenGL/Blender camera frame)",
        ),
        Convention(
            "opencv",
            ((1, 0, 0), (0, -1, 0), (0, 0, -1)),
            (1, 1, 1),
            "OpenCV camera: +x right, +y down, +z forward (away from the camera)",
        ),
        Convention(
            # Datagen's normal maps (docs/design.md §10): "+Z is the camera direction" (the
            # way the camera looks), stored as x = 2R - 1, y = 2G - 1, z = 1 - 2B. A
            # camera-facing surface has z = -1 and B = 1, so the file's RGB equals our
            # encoding while its vectors differ in z.
            "datagen",
            ((1, 0, 0), (0, 1, 0), (0, 0, -1)),
            (1, 1, -1),
            "Datagen's synthetic-face EXR: +x right, +y up, +z along the viewing "
            "direction; written as R = (x + 1) / 2, G = (y + 1) / 2, B = (1 - z) / 2",
        ),
        Convention(
            # SfSNet's test script (test_SfSNet.m) only reorders BGR to RGB and maps
            # [0, 1] -> [-1, 1]; its maps are drawn in image axes, row index downwards.
            "sfsnet",
            ((1, 0, 0), (0, -1, 0), (0, 0, 1)),
            (1, 1, 1),
            "SfSNet (Sengupta et al. 2018) as decoded by its released test script: "
            "+x right, +y down (image rows), +z towards the camera. Unverified against "
            "SfSNet's released weights",
            verified=False,
        ),
        Convention(
            # The authors' tester.py L2-normalises the output and writes 127.5 * (n + 1)
            # as RGB; the frame is assumed to be ours until the released weights are run
            # on a face with known geometry.
            "official",
            _IDENTITY,
            (1, 1, 1),
            "output of the authors' released model.pth (their tester.py writes "
            "127.5 * (n + 1) as RGB); frame assumed to be ours, unverified until the real "
            "weights are tried",
            verified=False,
        ),
    )
}


def get_convention(name: str | Convention) -> Convention:
    """Look a convention up by name; an unknown name is an error listing the valid ones."""
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        valid = ", ".join(sorted(CONVENTIONS))
        raise InputError(f"unknown normal convention {name!r}; valid: {valid}") from None


def _as_vectors(normals: np.ndarray, what: str = "normal map") -> np.ndarray:
    normals = np.asarray(normals)
    if normals.ndim < 1 or normals.shape[-1] != 3:
        raise InputError(f"{what} must have 3 components on its last axis, got shape "
                         f"{normals.shape}")
    return normals


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == len(shape) + 1 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise InputError(f"mask of shape {mask.shape} does not match the {what} of shape "
                         f"{shape}; resize the mask to the {what}'s size")
    return mask.astype(bool)


def normalize(
    normals: np.ndarray, mask: np.ndarray | None = None, *, eps: float = EPS
) -> tuple[np.ndarray, np.ndarray]:
    """Renormalise a normal map to unit vectors and find its valid pixels.

    Args:
        normals: ``(..., 3)`` vectors of any length.
        mask: optional ``(...)`` mask (bool or 0/1/255); pixels outside it become invalid.
        eps: vectors shorter than this are invalid.

    Returns:
        ``(unit, valid)``: float32 ``(..., 3)`` unit vectors with invalid pixels set to
        (0, 0, 0), and the bool ``(...)`` mask of valid pixels (finite, longer than
        ``eps``, inside ``mask``).
    """
    normals = _as_vectors(normals).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        length = np.linalg.norm(normals, axis=-1)
    valid = np.isfinite(length) & (length > eps)
    user_mask = _as_mask(mask, normals.shape[:-1], "normal map")
    if user_mask is not None:
        valid &= user_mask
    unit = np.zeros(normals.shape, dtype=np.float32)
    unit[valid] = normals[valid] / length[valid, None]
    return unit, valid


def check_normals(
    normals: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    tol: float = UNIT_TOLERANCE,
    source: str = "normal map",
) -> np.ndarray:
    """Check that a normal map holds unit vectors wherever it claims to be valid.

    Valid pixels are those inside ``mask`` or, without a mask, the non-zero vectors (the
    zero vector marks an invalid pixel). A non-finite or non-unit valid vector is an
    error: such a map is silently wrong for every metric and shading computed from it.

    Returns:
        The bool ``(...)`` mask of valid pixels.

    Raises:
        InputError: naming ``source``, the count of bad pixels and the fix.
    """
    normals = _as_vectors(normals, source)
    user_mask = _as_mask(mask, normals.shape[:-1], source)
    with np.errstate(invalid="ignore", over="ignore"):
        length = np.linalg.norm(normals.astype(np.float64), axis=-1)
    finite = np.isfinite(normals).all(axis=-1)
    valid = user_mask if user_mask is not None else ~(finite & (length == 0))
    n_nan = int((valid & ~finite).sum())
    n_off = int((valid & finite & (np.abs(length - 1.0) > tol)).sum())
    if n_nan or n_off:
        worst = float(np.abs(length[valid & finite] - 1.0).max(initial=0.0))
        raise InputError(
            f"{source}: {n_nan} non-finite and {n_off} non-unit vectors among valid pixels "
            f"(worst | |n| - 1 | = {worst:.3g}, tolerance {tol:g}); renormalise it "
            f"(renormalize=True / --renormalize) or mask those pixels out"
        )
    return valid


def to_convention(normals: np.ndarray, name: str | Convention) -> np.ndarray:
    """Our ``(..., 3)`` vectors expressed in convention ``name``."""
    normals = _as_vectors(normals)
    out = normals @ get_convention(name).matrix.T
    return out.astype(np.result_type(normals.dtype, np.float32), copy=False)


def from_convention(vectors: np.ndarray, name: str | Convention) -> np.ndarray:
    """``(..., 3)`` vectors of convention ``name`` expressed in ours."""
    vectors = _as_vectors(vectors)
    # A signed permutation is orthogonal: its inverse is its transpose.
    out = vectors @ get_convention(name).matrix
    return out.astype(np.result_type(vectors.dtype, np.float32), copy=False)


def convert(vectors: np.ndarray, src: str | Convention, dst: str | Convention) -> np.ndarray:
    """Re-express ``(..., 3)`` vectors of convention ``src`` in convention ``dst``."""
    return to_convention(from_convention(vectors, src), dst)


def encode_rgb(normals: np.ndarray, convention: str | Convention = "opengl") -> np.ndarray:
    """Encode our unit normals as the RGB image a tool of ``convention`` writes.

    Args:
        normals: ``(..., 3)`` unit vectors in our convention; zero vectors are invalid.

    Returns:
        float32 ``(..., 3)`` in [0, 1]; invalid pixels are black (0, 0, 0).
    """
    normals = _as_vectors(normals)
    conv = get_convention(convention)
    theirs = to_convention(normals, conv)
    rgb = (np.asarray(conv.rgb_signs, np.float32) * theirs + 1.0) / 2.0
    invalid = ~np.any(normals != 0, axis=-1)
    rgb[invalid] = 0.0
    return np.clip(rgb, 0.0, 1.0).astype(np.float32, copy=False)


def decode_rgb(
    rgb: np.ndarray,
    convention: str | Convention = "opengl",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode an RGB normal image written in ``convention`` into our unit normals.

    Args:
        rgb: ``(..., 3)`` float in [0, 1] (scale integer images first).
        mask: optional mask of the facial region; black pixels are always invalid.

    Returns:
        ``(normals, valid)`` as :func:`normalize` returns them; renormalisation undoes
        quantisation of 8- and 16-bit images.
    """
    rgb = _as_vectors(rgb, "RGB normal image").astype(np.float32, copy=False)
    conv = get_convention(convention)
    theirs = np.asarray(conv.rgb_signs, np.float32) * (2.0 * rgb - 1.0)
    ours = from_convention(theirs, conv)
    not_black = np.any(rgb != 0, axis=-1)
    user_mask = _as_mask(mask, rgb.shape[:-1], "RGB normal image")
    return normalize(ours, not_black if user_mask is None else not_black & user_mask)
