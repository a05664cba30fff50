"""Reading and writing images, masks and normal maps (docs/design.md §2, §3).

Every reader returns arrays in the package's conventions: images float32 ``(H, W, 3)`` RGB
in [0, 1], masks bool ``(H, W)``, normals float32 ``(H, W, 3)`` unit vectors in our camera
frame (+x right, +y up, +z towards the camera) with the zero vector on invalid pixels.
Every writer is atomic (a temporary file in the target's folder, then ``os.replace``), so
an interrupted run never leaves a half-written file that a later run would trust.

Normal maps record the convention they are stored in: EXR files in the header attributes
``normalConvention`` / ``normalEncoding``, PNG and NPY files in a JSON sidecar
``<file>.json`` (e.g. ``face.png.json``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import OpenEXR

from .errors import InputError
from .fileutil import atomic_write
from .normals import (
    check_normals,
    decode_rgb,
    encode_rgb,
    from_convention,
    get_convention,
    normalize,
    to_convention,
)

__all__ = [
    "ENCODINGS",
    "IMAGE_SUFFIXES",
    "NORMAL_SUFFIXES",
    "quantize",
    "read_image",
    "read_mask",
    "read_normals",
    "write_image",
    "write_mask",
    "write_normals",
]

logger = logging.getLogger(__name__)

NORMAL_SUFFIXES = (".exr", ".png", ".npy")
#: 'vector': raw components of the convention; 'rgb': the convention's RGB encoding in [0, 1].
ENCODINGS = ("vector", "rgb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_SIDECAR_FORMAT = "crossmodal-normals"
_SIDECAR_VERSION = 1
_EXR_CONVENTION = "normalConvention"
_EXR_ENCODING = "normalEncoding"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- helpers


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file; check the path")


def _decode_raster(path: Path, flags: int, what: str) -> np.ndarray:
    """Decode an image file with OpenCV; channels stay in OpenCV's BGR(A) order."""
    _require_file(path, what)
    # imdecode on the bytes (rather than imread) handles non-ASCII paths on every OS and
    # lets an empty or foreign file be told apart from a missing one.
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise InputError(f"cannot read {what} {path}: not an image or corrupt; re-export it "
                         f"as PNG or JPEG")
    return image


def _to_unit_float(image: np.ndarray, path: Path) -> np.ndarray:
    """Scale an integer image by its dtype's maximum to float32 in [0, 1]."""
    if image.dtype in (np.uint8, np.uint16):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise InputError(f"{path}: unsupported pixel type {image.dtype}; save it as 8- or 16-bit")


def quantize(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """float in [0, 1] (clipped, NaN -> 0) or uint8/uint16 -> uint8 or uint16 of ``bits``."""
    image = np.asarray(image)
    if image.dtype in (np.uint8, np.uint16):
        if image.dtype == (np.uint8 if bits == 8 else np.uint16):
            return image
        image = image.astype(np.float64) / np.iinfo(image.dtype).max
    elif not np.issubdtype(image.dtype, np.floating):
        raise InputError(f"image of type {image.dtype} not supported; pass float in [0, 1], "
                         f"uint8 or uint16")
    top = 255 if bits == 8 else 65535
    scaled = np.rint(np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * top)
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)


def _encode_raster(path: Path, image: np.ndarray) -> Callable[[Path], None]:
    """A writer for :func:`atomic_write` of an RGB or grey integer image (PNG/JPEG)."""

    def write(tmp: Path) -> None:
        bgr = image[..., ::-1] if image.ndim == 3 else image
        ok, buf = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(bgr))
        if not ok:
            raise OSError(f"OpenCV could not encode {path}")
        tmp.write_bytes(buf.tobytes())

    return write


def _binarise(mask: np.ndarray) -> np.ndarray:
    """bool, 0/1 or 0/255 (0/65535) -> bool: in where above half of the full scale."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.size and np.nanmax(mask) <= 1:
        full = 1.0  # a 0/1 mask: any non-zero is in
    else:
        full = 65535.0 if mask.dtype == np.uint16 else 255.0
    return mask > full / 2


def _check_shape(mask: np.ndarray, shape: tuple[int, ...], path: Path, what: str) -> None:
    if mask.shape[:2] != tuple(shape[:2]) or mask.ndim != 2:
        raise InputError(f"{path}: mask of shape {mask.shape} does not match the {what} of "
                         f"shape {tuple(shape[:2])}; resize the mask to {shape[0]}x{shape[1]} "
                         f"(nearest neighbour) or use the matching mask")


# --------------------------------------------------------------------------- images


def read_image(path: PathLike) -> np.ndarray:
    """Read an RGB image as float32 ``(H, W, 3)`` in [0, 1].

    8- and 16-bit files keep their precision (scaled by 255 or 65535). Grayscale is
    replicated to three channels; an alpha channel is dropped, not composited. The EXIF
    orientation of JPEGs is applied so photos come out upright.
    """
    path = Path(path)
    # IMREAD_COLOR | ANYDEPTH gives 3-channel BGR at the file's bit depth: OpenCV replicates
    # grey, drops alpha and applies EXIF orientation (IMREAD_UNCHANGED would ignore it).
    bgr = _decode_raster(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH, "image")
    return np.ascontiguousarray(_to_unit_float(bgr, path)[..., ::-1])


def write_image(path: PathLike, image: np.ndarray, *, bits: int = 8) -> Path:
    """Write an ``(H, W, 3)`` RGB or ``(H, W)`` grey image as PNG (8/16-bit) or JPEG (8-bit).

    ``image`` is float in [0, 1] (clipped) or uint8/uint16 (rescaled if ``bits`` differs).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: cannot write images as {suffix or 'no suffix'!r}; use one "
                         f"of {', '.join(IMAGE_SUFFIXES)}")
    if bits not in (8, 16) or (bits == 16 and suffix != ".png"):
        raise InputError(f"{path}: cannot write {bits}-bit {suffix}; PNG takes 8 or 16 bits, "
                         f"JPEG only 8")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise InputError(f"{path}: image must be (H, W, 3) or (H, W), got {image.shape}")
    return atomic_write(path, _encode_raster(path, quantize(image, bits)))


# --------------------------------------------------------------------------- masks


def read_mask(path: PathLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a mask as bool ``(H, W)``.

    Stored as uint8 0/255 (0/1 and 16-bit are accepted too); a pixel is in when above half
    the full scale. A 3-channel file is accepted when its channels are equal. ``shape``:
    the expected ``(H, W)`` (trailing dimensions are ignored); a mismatch is an error.
    """
    path = Path(path)
    raw = _decode_raster(path, cv2.IMREAD_UNCHANGED, "mask")
    if raw.ndim == 3:
        if raw.shape[2] != 3:
            raise InputError(f"{path}: expected a 1- or 3-channel mask, got {raw.shape[2]} "
                             f"channels; save it as a grayscale PNG (0/255)")
        if not (np.array_equal(raw[..., 0], raw[..., 1])
                and np.array_equal(raw[..., 0], raw[..., 2])):
            raise InputError(f"{path}: a colour mask must have equal R, G and B channels; save "
                             f"it as a grayscale PNG (0/255)")
        raw = raw[..., 0]
    mask = _binarise(raw)
    if shape is not None and mask.shape != tuple(shape[:2]):
        raise InputError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but "
                         f"{shape[0]}x{shape[1]} is expected; resize it to the image's size "
                         f"(nearest neighbour) or use the matching mask")
    return mask


def write_mask(path: PathLike, mask: np.ndarray) -> Path:
    """Write a bool, 0/1 or 0/255 ``(H, W)`` mask as a uint8 0/255 PNG."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: masks are written as PNG; use the .png suffix")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"{path}: mask must be (H, W), got {mask.shape}")
    return atomic_write(path, _encode_raster(path, _binarise(mask).astype(np.uint8) * 255))


# --------------------------------------------------------------------------- normals


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in NORMAL_SUFFIXES:
        raise InputError(f"{path}: unknown normal-map format {suffix or '(no suffix)'!r}; use "
                         f"one of {', '.join(NORMAL_SUFFIXES)}")
    return suffix


def _check_encoding(path: Path, suffix: str, encoding: str) -> None:
    valid = ("rgb",) if suffix == ".png" else ENCODINGS  # a PNG cannot hold raw vectors
    if encoding not in valid:
        raise InputError(f"{path}: unsupported normal encoding {encoding!r} for {suffix}; "
                         f"valid: {', '.join(valid)}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _load_normal_file(path: Path, suffix: str) -> tuple[dict[str, str], np.ndarray]:
    """The file's own ``{'convention', 'encoding'}`` (either may be absent) and its data.

    Data: float ``(H, W, 3)`` for EXR/NPY, float32 in [0, 1] for PNG.
    """
    declared: dict[str, str] = {}
    if suffix == ".exr":
        try:
            exr = OpenEXR.File(str(path), separate_channels=True)
            header, channels = exr.header(), exr.channels()
        except (RuntimeError, ValueError, OSError) as err:
            raise InputError(f"cannot read EXR file {path}: truncated or corrupt ({err}); "
                             f"re-export it") from None
        missing = [c for c in "RGB" if c not in channels]
        if missing:
            raise InputError(f"{path}: EXR normal map needs channels R, G, B; found "
                             f"{', '.join(sorted(channels)) or 'none'}; re-export it with the "
                             f"(x, y, z) components in R, G, B")
        for key, attr in (("convention", _EXR_CONVENTION), ("encoding", _EXR_ENCODING)):
            if attr in header:
                value = header[attr]
                declared[key] = value.decode() if isinstance(value, bytes) else str(value)
        # Half-float channels are widened; float32 ones are kept bit-exact.
        data = np.stack([channels[c].pixels.astype(np.float32) for c in "RGB"], axis=-1)
        return declared, data

    sidecar = _sidecar(path)
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            declared = {k: str(meta[k]) for k in ("convention", "encoding") if k in meta}
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
            raise InputError(f"{sidecar}: invalid JSON sidecar ({err}); fix or delete it") \
                from None
    if suffix == ".png":
        raw = _decode_raster(path, cv2.IMREAD_UNCHANGED, "normal map")
        n_channels = 1 if raw.ndim == 2 else raw.shape[2]
        if n_channels != 3:
            raise InputError(f"{path}: expected a 3-channel RGB normal map, got {n_channels} "
                             f"channels; save the normals as RGB")
        return declared, _to_unit_float(raw[..., ::-1], path)
    _require_file(path, "normal map")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"cannot read NPY file {path}: truncated or corrupt ({err}); "
                         f"re-export it") from None
    if not np.issubdtype(data.dtype, np.floating) or data.ndim != 3 or data.shape[2] != 3:
        raise InputError(f"{path}: expected a float (H, W, 3) normal map, got {data.dtype} "
                         f"{data.shape}")
    return declared, data


def _resolve(path: Path, declared: dict[str, str], key: str, given: str | None,
             default: str) -> str:
    """Argument over the file's declaration over the default; warn when they disagree."""
    if given is not None and key in declared and declared[key] != given:
        logger.warning("%s declares %s %r; using %r as asked", path, key, declared[key], given)
    return given if given is not None else declared.get(key, default)


def read_normals(
    path: PathLike,
    *,
    convention: str | None = None,
    mask: np.ndarray | None = None,
    renormalize: bool = False,
    encoding: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a normal map (``.exr``, ``.png`` or ``.npy``) into our convention.

    Args:
        convention, encoding: how the file is stored; default: what the file declares (EXR
            header / JSON sidecar), else 'opengl' and 'vector' ('rgb' for PNG). Given
            explicitly they override the declaration (with a warning if they disagree),
            e.g. ``convention='datagen', encoding='rgb'`` for Datagen's EXR files.
        mask: ``(H, W)`` bool or 0/1/0-255; pixels outside it become invalid.
        renormalize: rescale valid vectors to unit length and drop non-finite ones as
            invalid instead of raising; a correction, so use it only on maps known to be
            merely unnormalised.

    Returns:
        ``(normals, valid)``: float32 ``(H, W, 3)`` unit vectors, (0, 0, 0) where invalid,
        and bool ``(H, W)``. Zero vectors (black pixels in RGB encodings) are invalid.

    Raises:
        InputError: unreadable file, wrong channels, mask of another size, unknown
            convention, or (without ``renormalize``) NaN / non-unit valid vectors.
    """
    path = Path(path)
    suffix = _suffix(path)
    declared, data = _load_normal_file(path, suffix)
    conv_name = _resolve(path, declared, "convention", convention, "opengl")
    enc = _resolve(path, declared, "encoding", encoding, "rgb" if suffix == ".png" else "vector")
    try:
        conv = get_convention(conv_name)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    _check_encoding(path, suffix, enc)
    user_mask = None
    if mask is not None:
        user_mask = np.asarray(mask)
        _check_shape(user_mask, data.shape, path, "normal map")
        user_mask = _binarise(user_mask)

    if enc == "rgb":
        # Integer images are quantised, so decode_rgb's renormalisation is always right
        # for them; float RGB files may still carry NaN, which must not pass silently.
        finite = np.isfinite(data).all(axis=-1)
        claimed = np.any(data != 0, axis=-1) if user_mask is None else user_mask
        if not renormalize and not finite[claimed].all():
            raise InputError(f"{path}: non-finite values among valid pixels; re-export it, "
                             f"mask them out or pass renormalize=True to drop them")
        # Blacken whole non-finite pixels: decode_rgb treats black as invalid.
        return decode_rgb(np.where(finite[..., None], data, np.float32(0)), conv, user_mask)

    ours = from_convention(data.astype(np.float32, copy=False), conv)
    if renormalize:
        return normalize(ours, user_mask)
    # The zero vector marks an invalid pixel; NaN counts as claimed-valid so it is caught.
    valid = np.any(ours != 0, axis=-1) | ~np.isfinite(ours).all(axis=-1)
    if user_mask is not None:
        valid &= user_mask
    check_normals(ours, valid, source=str(path))
    normals = np.where(valid[..., None], ours, np.float32(0)).astype(np.float32, copy=False)
    return normals, valid


def write_normals(
    path: PathLike,
    normals: np.ndarray,
    *,
    convention: str = "opengl",
    mask: np.ndarray | None = None,
    encoding: str | None = None,
) -> Path:
    """Write our ``(H, W, 3)`` normals stored in ``convention``; the file records it.

    ``.exr``: float32 R, G, B (ZIP), encoding 'vector' (default) or 'rgb' (Datagen style),
    in header attributes. ``.png``: 16-bit ``encode_rgb``. ``.npy``: float32 vectors (or
    'rgb'). PNG and NPY get a JSON sidecar ``<path>.json``. Pixels outside ``mask`` and zero
    vectors are written as invalid (zero vector / black).
    """
    path = Path(path)
    suffix = _suffix(path)
    conv = get_convention(convention)
    enc = encoding or ("rgb" if suffix == ".png" else "vector")
    _check_encoding(path, suffix, enc)
    normals = np.asarray(normals, dtype=np.float32)
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise InputError(f"{path}: normals must be (H, W, 3), got {normals.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        _check_shape(mask, normals.shape, path, "normal map")
        normals = np.where(_binarise(mask)[..., None], normals, np.float32(0))
    # encode_rgb already blackens zero vectors; to_convention maps them to zero.
    stored = encode_rgb(normals, conv) if enc == "rgb" else to_convention(normals, conv)

    if suffix == ".exr":
        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage,
                  _EXR_CONVENTION: conv.name, _EXR_ENCODING: enc}
        channels = {c: np.ascontiguousarray(stored[..., i], dtype=np.float32)
                    for i, c in enumerate("RGB")}
        return atomic_write(path, lambda tmp: OpenEXR.File(header, channels).write(str(tmp)))

    if suffix == ".png":
        atomic_write(path, _encode_raster(path, quantize(stored, 16)))
    else:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a handle, so numpy does not append another .npy
                np.save(f, stored.astype(np.float32, copy=False))

        atomic_write(path, save)
    meta = {"format": _SIDECAR_FORMAT, "version": _SIDECAR_VERSION, "convention": conv.name,
            "encoding": enc}
    atomic_write(_sidecar(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return path
