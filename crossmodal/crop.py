"""The face crop protocol (docs/design.md §4, paper §4.1): one implementation for every producer.

68 landmarks (iBUG 300-W order; any ``(K, 2)`` set works) → bounding box of the points →
side ``l`` = its longer side → square of side ``scale * l`` (1.2) centred on the box
centre → resized to ``size`` (256). Parts of the square outside the photo are padded, never
shifted back inside, so the face always sits at the same place in the crop. The synthetic
generator and the photo pipeline both crop through :func:`crop_from_landmarks`, and a
:class:`Crop` keeps the affine transform so predictions can be pasted back.

Coordinates are OpenCV pixel coordinates: ``x`` = column (right), ``y`` = row (down),
pixel centres at integers, so pixel ``i`` spans ``[i - 0.5, i + 0.5]``. The square
``[x0, x0 + side] x [y0, y0 + side]`` maps onto the crop's outer pixel edges
``[-0.5, size - 0.5]``; with that edge alignment the same face photographed at two
resolutions gives the same crop (a pixel-centre alignment would shift it by half a
source pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .errors import InputError
from .normals import normalize

__all__ = ["Crop", "Interpolation", "crop_from_landmarks", "landmark_mask"]

Interpolation = Literal["area", "linear", "nearest"]

_CV_FLAGS = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}

#: A resampled validity weight below this counts as touched by an invalid pixel. OpenCV's
#: bilinear weights are multiples of 1/1024, so an invalid neighbour's share after an
#: area average over k x k samples is at least 1 / (1024 k^2) >> 1e-7 for any k < 90.
_FULL = 1.0 - 1e-7


def _border(value: float | tuple[float, ...]) -> tuple[float, float, float, float]:
    """OpenCV's border Scalar: a plain number would fill only the first channel."""
    if np.isscalar(value):
        return (float(value),) * 4
    values = tuple(float(v) for v in value)
    if not 1 <= len(values) <= 4:
        raise InputError(f"border_value must be a number or 1 to 4 numbers, got {value!r}")
    return values + (0.0,) * (4 - len(values))


def _warp(
    src: np.ndarray,
    matrix: np.ndarray,
    dsize: tuple[int, int],
    interpolation: Interpolation,
    border_mode: int = cv2.BORDER_CONSTANT,
    border_value: float | tuple[float, ...] = 0.0,
) -> np.ndarray:
    """``cv2.warpAffine`` of a similarity ``matrix`` (source -> destination pixels) to
    ``dsize = (width, height)``, with a true area filter for 'area'.

    warpAffine has no area filter (it silently uses bilinear), which aliases when a large
    face is shrunk to 256 pixels. For 'area' with shrink factor ``f = 1 / scale > 1`` the
    destination is sampled bilinearly on a ``k = ceil(f)`` times finer grid (at least one
    sample per source pixel) and then box-averaged ``k x k`` with ``cv2.resize(INTER_AREA)``.
    When enlarging, 'area' is bilinear (what ``cv2.resize`` does too).
    """
    if interpolation not in ("area", "linear", "nearest"):
        raise InputError(f"unknown interpolation {interpolation!r}; use 'area', 'linear' or "
                         f"'nearest'")
    width, height = dsize
    border = _border(border_value)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    k = math.ceil(1.0 / scale - 1e-9) if interpolation == "area" else 1
    if k <= 1:
        flag = _CV_FLAGS.get(interpolation, cv2.INTER_LINEAR)
        return cv2.warpAffine(src, matrix, (width, height), flags=flag, borderMode=border_mode,
                              borderValue=border)
    # Fine pixel j of the k-times grid has its centre at coarse coordinate (j + 0.5) / k - 0.5,
    # so coarse -> fine is x * k + (k - 1) / 2 (edge-aligned, like the crop itself).
    fine = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2]]) @ np.vstack(
        [matrix, [0.0, 0.0, 1.0]])
    big = cv2.warpAffine(src, fine, (width * k, height * k), flags=cv2.INTER_LINEAR,
                         borderMode=border_mode, borderValue=border)
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)


def _check_points(points: np.ndarray, what: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise InputError(f"{what} must be a (K, 2) array of (x, y) pixel coordinates with "
                         f"K >= 2 (68 for iBUG 300-W), got shape {points.shape}")
    if not np.isfinite(points).all():
        bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
        raise InputError(f"{what} contain NaN or infinite coordinates (points "
                         f"{bad.tolist()[:5]}); the detector failed on this face: drop it or "
                         f"re-run the landmark detector")
    return points


@dataclass(frozen=True, eq=False)
class Crop:
    """A square face crop: the similarity from source pixels to crop pixels.

    Attributes:
        matrix: float64 ``(2, 3)`` affine ``[[s, 0, tx], [0, s, ty]]`` mapping source pixel
            coordinates to crop pixel coordinates (``cv2.warpAffine``'s convention, pixel
            centres at integers); read-only.
        size: side of the crop in pixels.
        box: ``(x0, y0, side)``: the square in source pixel coordinates; its edges map to
            the crop's outer pixel edges (module docstring).

    Compared by identity (``eq=False``): arrays have no single truth value.
    """

    matrix: np.ndarray
    size: int
    box: tuple[float, float, float]

    def __post_init__(self) -> None:
        matrix = np.array(self.matrix, dtype=np.float64)
        if matrix.shape != (2, 3):
            raise InputError(f"a crop matrix must be (2, 3), got {matrix.shape}")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)

    @classmethod
    def from_box(cls, x0: float, y0: float, side: float, size: int = 256) -> Crop:
        """The crop of the square ``[x0, x0 + side] x [y0, y0 + side]`` resized to ``size``."""
        if not (math.isfinite(side) and side > 0):
            raise InputError(f"crop square side must be positive, got {side}; the landmarks "
                             f"span no area")
        if int(size) != size or size < 1:
            raise InputError(f"crop size must be a positive integer, got {size!r}")
        s = size / side
        # Edge x0 maps to -0.5, edge x0 + side to size - 0.5.
        matrix = [[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5]]
        return cls(np.array(matrix), int(size), (float(x0), float(y0), float(side)))

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel (> 1 enlarges the face, < 1 shrinks it)."""
        return float(self.matrix[0, 0])

    def inverse(self) -> np.ndarray:
        """float64 ``(2, 3)`` affine from crop pixels back to source pixels."""
        return cv2.invertAffineTransform(self.matrix)

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Source pixel coordinates ``(N, 2)`` -> crop pixel coordinates ``(N, 2)`` float64."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def warp_image(
        self,
        image: np.ndarray,
        interpolation: Interpolation = "area",
        border_value: float | tuple[float, ...] = 0,
    ) -> np.ndarray:
        """Crop an ``(H, W)`` or ``(H, W, C)`` (C <= 4) image to ``(size, size[, C])``.

        The dtype is kept. 'area' (default) box-filters when shrinking (an anti-aliased
        crop of a large photo) and is bilinear when enlarging; 'linear' is always
        bilinear; 'nearest' for labels. Pixels outside the photo get ``border_value``.
        """
        image = np.asarray(image)
        return _warp(image, self.matrix, (self.size, self.size), interpolation,
                     border_value=border_value)

    def warp_mask(self, mask: np.ndarray) -> np.ndarray:
        """Crop an ``(H, W)`` mask (bool, or non-zero = inside) to bool ``(size, size)``:
        nearest neighbour, outside the photo = False."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise InputError(f"mask must be (H, W), got shape {mask.shape}")
        return _warp(mask.astype(bool).astype(np.uint8), self.matrix, (self.size, self.size),
                     "nearest").astype(bool)

    def warp_normals(
        self,
        normals: np.ndarray,
        valid: np.ndarray | None = None,
        interpolation: Interpolation = "area",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crop an ``(H, W, 3)`` normal map (our convention) to ``(size, size, 3)``.

        The crop is a uniform scale plus a translation, so the vectors keep their
        direction: they are only resampled (vectors interpolated as in
        :meth:`warp_image`, then renormalised), never rotated. A crop pixel is valid only
        if every source pixel it draws from is valid (the validity mask is resampled with
        the same filter and must stay exactly 1), so the rim of a face never mixes with
        the zero vectors around it; outside the photo is invalid.

        Args:
            valid: bool ``(H, W)``; default: the finite non-zero vectors.

        Returns:
            ``(normals, valid)``: float32 ``(size, size, 3)`` unit vectors, zero where
            invalid, and bool ``(size, size)``.
        """
        normals = np.asarray(normals, dtype=np.float32)
        if normals.ndim != 3 or normals.shape[2] != 3:
            raise InputError(f"normals must be (H, W, 3), got shape {normals.shape}")
        finite = np.isfinite(normals).all(axis=-1)
        if valid is None:
            valid = finite & np.any(normals != 0, axis=-1)
        else:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != normals.shape[:2]:
                raise InputError(f"valid mask of shape {valid.shape} does not match normals "
                                 f"of shape {normals.shape[:2]}")
            valid = valid & finite
        clean = np.where(valid[..., None], normals, np.float32(0))
        dsize = (self.size, self.size)
        warped = _warp(clean, self.matrix, dsize, interpolation)
        # float64 so that "all weights valid" is an exact 1.0 (see _FULL).
        coverage = _warp(valid.astype(np.float64), self.matrix, dsize, interpolation)
        return normalize(warped, coverage >= _FULL)

    def paste_back(
        self,
        crop_image: np.ndarray,
        source_shape: tuple[int, ...],
        interpolation: Interpolation = "linear",
        border_value: float | tuple[float, ...] = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map a ``(size, size[, C])`` crop (e.g. a prediction) back into the photo.

        Args:
            source_shape: the photo's ``(H, W, ...)``; only ``H`` and ``W`` are used.
            interpolation: 'linear' (default; the crop is usually enlarged back), 'area'
                (box filter where the crop is shrunk) or 'nearest' (masks, labels).
                Pasted normals must be renormalised by the caller.

        Returns:
            ``(image, coverage)``: ``(H, W[, C])`` of the crop's dtype, ``border_value``
            outside the crop, and the bool ``(H, W)`` mask of photo pixels whose centre
            falls inside the crop.
        """
        crop_image = np.asarray(crop_image)
        if crop_image.shape[:2] != (self.size, self.size):
            raise InputError(f"the crop to paste back must be {self.size}x{self.size}, got "
                             f"shape {crop_image.shape}")
        height, width = int(source_shape[0]), int(source_shape[1])
        # Replicate the crop's edge pixels so photo pixels just inside the crop are not
        # blended with a border colour; everything outside is blanked below.
        pasted = _warp(crop_image, self.inverse(), (width, height), interpolation,
                       border_mode=cv2.BORDER_REPLICATE)
        s, tx, ty = self.scale, self.matrix[0, 2], self.matrix[1, 2]
        lo, hi = -0.5, self.size - 0.5
        cols = (s * np.arange(width) + tx >= lo) & (s * np.arange(width) + tx < hi)
        rows = (s * np.arange(height) + ty >= lo) & (s * np.arange(height) + ty < hi)
        coverage = rows[:, None] & cols[None, :]
        pasted[~coverage] = border_value  # a number, or one per channel
        return pasted, coverage


def crop_from_landmarks(landmarks: np.ndarray, size: int = 256, scale: float = 1.2) -> Crop:
    """The protocol crop of a face from its ``(68, 2)`` (or any ``(K, 2)``) landmarks.

    Bounding box of the points, side ``l`` = its longer side, square of side
    ``scale * l`` centred on the box centre, resized to ``size``.

    Raises:
        InputError: wrong shape, NaN landmarks, all points at one spot (a zero-size
            box), or a non-positive ``scale``.
    """
    points = _check_points(landmarks, "landmarks")
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"crop scale must be positive, got {scale}")
    lo, hi = points.min(axis=0), points.max(axis=0)
    side = scale * float((hi - lo).max())
    if side <= 0:
        raise InputError(f"landmarks span a zero-size box (all at {lo.tolist()}); the "
                         f"detector failed on this face: drop it or re-run the detector")
    cx, cy = (lo + hi) / 2
    return Crop.from_box(cx - side / 2, cy - side / 2, side, size)


def landmark_mask(landmarks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The facial mask: bool ``(H, W)``, the filled convex hull of ``(K, 2)`` landmarks.

    Pixels whose centre lies inside the hull (or on its boundary, as OpenCV rasterises)
    are True; the hull is drawn with sub-pixel (1/256) vertex precision.
    """
    points = _check_points(landmarks, "landmarks")
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), dtype=np.uint8)
    shift = 8
    # cv2 takes fixed-point coordinates for sub-pixel vertices; hull in int32 as it wants.
    fixed = np.rint(points * (1 << shift)).astype(np.int32)
    hull = cv2.convexHull(fixed)
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)
