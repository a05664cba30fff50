"""Reading and writing images, masks and normal maps (docs/design.md §2, §3).

Every reader returns arrays in the package's conventions: images float32 ``(H, W, 3)`` RGB
in [0, 1], masks bool ``(H, W)``, normals float32 ``(H, W, 3)`` unit vectors in our camera
frame (+x right, +y up, +z towards the camera) with the zero vector on invalid pixels.
Every writer is atomic (a temporary file in the target's folder, then ``os.replace``), so
an interrupted run never leaves a half-written file that a later run would trust.

Normal maps record the convention they are stored in: EXR files in the header attributes
``normalConvention`` / ``normalEncoding``, PNG and NPY files in a JSON sidecar
``<file>.json`` (e.g. ``face.png.json``).

Decoding is bounded. Every reader takes the width and height a file declares from its header
(PNG's IHDR chunk, JPEG's frame header, EXR's ``dataWindow``, NPY's shape) and refuses an
image above the pixel limit before decoding it, so a small compressed file cannot take
gigabytes of memory. The limit is the readers' ``max_pixels`` keyword, else the environment
variable ``CROSSMODAL_MAX_IMAGE_PIXELS``, else :data:`MAX_IMAGE_PIXELS` (8192 x 8192).
Images and masks are PNG or JPEG, told apart by their content whatever their suffix: those
are the formats whose header is read here, so other formats OpenCV could decode are refused
rather than decoded unchecked. OpenCV has its own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``,
2^30 by default), met only when ours is raised above it.

Every failure is one :class:`~crossmodal.errors.InputError` naming the file, so OpenCV's own
log lines are silenced on import (set ``OPENCV_LOG_LEVEL`` to see them).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import OpenEXR

from .errors import InputError
from .fileutil import atomic_write, open_for_reading, read_text
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
    "MAX_IMAGE_PIXELS",
    "MAX_PIXELS_ENV",
    "NORMAL_SUFFIXES",
    "check_pixels",
    "max_image_pixels",
    "quantize",
    "read_image",
    "read_mask",
    "read_normals",
    "read_photo",
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

#: The largest image (width x height) the readers decode unless told otherwise: 8192 x 8192
#: = 67.1 megapixels. That passes every camera photo up to 61 MP (full-frame sensors, the
#: 48-50 MP modes of phones) and an 8K square texture, and bounds what reading one costs:
#: about 27 bytes a pixel at the peak of read_image (the 8-bit decode, its float32 copy and
#: the channel-flipped one), 1.8 GB. A 20,000 x 20,000 PNG of zeros, a few hundred kB on
#: disk, would take 11 GB.
MAX_IMAGE_PIXELS = 8192 * 8192
#: The environment variable that sets the limit when a reader's ``max_pixels`` is not given.
MAX_PIXELS_ENV = "CROSSMODAL_MAX_IMAGE_PIXELS"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_START = b"\xff\xd8"
# JPEG markers of a frame header (SOF0-3, 5-7, 9-11, 13-15), which holds the size, and those
# without a length field (TEM, RST0-7); SOS starts the entropy-coded data.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_BARE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_SOS = 0xDA

PathLike = str | os.PathLike

if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


# --------------------------------------------------------------------------- helpers


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The readers' pixel limit: ``max_pixels`` if given, else the environment variable
    ``CROSSMODAL_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        InputError: the value given is not a positive integer.
    """
    if max_pixels is not None:
        name, given = "max_pixels", max_pixels
    elif os.environ.get(MAX_PIXELS_ENV):
        name, given = MAX_PIXELS_ENV, os.environ[MAX_PIXELS_ENV]
    else:
        return MAX_IMAGE_PIXELS
    try:
        limit = 0 if isinstance(given, (bool, float)) else int(given)
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"{name}={given!r} is not a whole number of pixels; set it to a "
                         f"positive integer such as {MAX_IMAGE_PIXELS}")
    return limit


def check_pixels(path: Path, what: str, width: int, height: int,
                 max_pixels: int | None) -> None:
    """Refuse a ``width`` x ``height`` image above :func:`max_image_pixels`."""
    limit, pixels = max_image_pixels(max_pixels), width * height
    if pixels > limit:
        raise InputError(f"{what} {path} is {width}x{height} = {pixels:,} pixels, above the "
                         f"limit of {limit:,} that bounds the memory decoding takes; shrink "
                         f"the image, or raise the limit: {MAX_PIXELS_ENV}={pixels} "
                         f"(max_pixels= in Python)")


def _raster_size(file: BinaryIO) -> tuple[int, int] | None:
    """``(width, height)`` declared by the header of a PNG or JPEG file open at its start;
    None when the header is cut short or malformed. Reads only the header."""
    head = file.read(24)
    if head.startswith(_PNG_SIGNATURE):
        # The first chunk is IHDR: length (4 bytes), type (4), width (4), height (4).
        return struct.unpack(">II", head[16:24]) if head[12:16] == b"IHDR" else None
    file.seek(len(_JPEG_START))
    while True:  # segment by segment: marker, length, body, up to the frame header
        marker = file.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        while kind == 0xFF:  # fill bytes may pad a marker
            byte = file.read(1)
            if not byte:
                return None
            kind = byte[0]
        if kind in _JPEG_BARE:
            continue
        if kind == _JPEG_SOS:  # image data before any frame header
            return None
        # Length (2 bytes, counting itself), then a frame's precision (1), height, width.
        field = file.read(7)
        length = int.from_bytes(field[:2], "big")
        if kind in _JPEG_FRAMES:
            return struct.unpack(">HH", field[3:7])[::-1] if len(field) == 7 else None
        if len(field) < 2 or length < 2:
            return None
        file.seek(length - len(field), os.SEEK_CUR)


#: OpenCV's flags decoding a JPEG at 1/2, 1/4 or 1/8 of its size: libjpeg scales the DCT
#: blocks, so the whole-size image is never in memory (for PNG they decode it all first).
_JPEG_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


def _jpeg_reduction(width: int, height: int, max_pixels: int | None) -> int:
    """The smallest of 1, 2, 4, 8 that brings a ``width`` x ``height`` JPEG within
    :func:`max_image_pixels` (1 when it already is; 8 even when that is not enough, which
    :func:`check_pixels` then refuses)."""
    limit = max_image_pixels(max_pixels)
    return next((f for f in (1, 2, 4, 8) if -(-width // f) * -(-height // f) <= limit), 8)


def _decode_raster(path: Path, flags: int, what: str, max_pixels: int | None, *,
                   reduce: bool = False) -> tuple[np.ndarray, int]:
    """Decode a PNG or JPEG file with OpenCV once the size its header declares is within
    :func:`max_image_pixels`; channels stay in OpenCV's BGR(A) order. With ``reduce``, a JPEG
    above the limit is decoded at 1/2, 1/4 or 1/8 of its size instead (colour, 8-bit, EXIF
    orientation applied). Returns the image and that factor (1: full size)."""
    with open_for_reading(path, what) as file:
        start = file.read(len(_PNG_SIGNATURE))
        if not start.startswith((_PNG_SIGNATURE, _JPEG_START)):
            raise InputError(f"cannot read {what} {path}: not a PNG or JPEG file; re-export it "
                             f"as PNG or JPEG")
        file.seek(0)
        size = _raster_size(file)
        if size is not None and 0 not in size:
            factor = (_jpeg_reduction(*size, max_pixels)
                      if reduce and start.startswith(_JPEG_START) else 1)
            check_pixels(path, what, -(-size[0] // factor), -(-size[1] // factor),
                         max_pixels)
            if factor > 1:
                flags = _JPEG_REDUCED[factor]
                logger.info("%s is %dx%d, above the limit of %s pixels: decoded at 1/%d of "
                            "its size", path, *size, f"{max_image_pixels(max_pixels):,}",
                            factor)
            file.seek(0)
            # imdecode on the bytes (rather than imread) handles non-ASCII paths on every OS.
            data = np.frombuffer(file.read(), dtype=np.uint8)
            try:
                image = cv2.imdecode(data, flags)
            except cv2.error as err:
                if "CV_IO_MAX_IMAGE" in str(err):
                    raise InputError(f"OpenCV refused {what} {path} ({size[0]}x{size[1]}) as "
                                     f"above its own size limit; raise "
                                     f"OPENCV_IO_MAX_IMAGE_PIXELS (or _WIDTH, _HEIGHT) too, or "
                                     f"lower {MAX_PIXELS_ENV} below it") from None
                image = None  # other malformed data: OpenCV raises where it used to return None
            if image is not None:
                return image, factor
    raise InputError(f"cannot read {what} {path}: truncated or corrupt; re-export it as PNG "
                     f"or JPEG")


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


def read_image(path: PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an RGB image (PNG or JPEG) as float32 ``(H, W, 3)`` in [0, 1].

    8- and 16-bit files keep their precision (scaled by 255 or 65535). Grayscale is
    replicated to three channels; an alpha channel is dropped, not composited. The EXIF
    orientation of JPEGs is applied so photos come out upright. ``max_pixels``: the largest
    width x height decoded (:func:`max_image_pixels`).
    """
    path = Path(path)
    # IMREAD_COLOR | ANYDEPTH gives 3-channel BGR at the file's bit depth: OpenCV replicates
    # grey, drops alpha and applies EXIF orientation (IMREAD_UNCHANGED would ignore it).
    bgr, _ = _decode_raster(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH, "image", max_pixels)
    return np.ascontiguousarray(_to_unit_float(bgr, path)[..., ::-1])


def read_photo(path: PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """Read a photo like :func:`read_image` (float32 RGB ``(H, W, 3)`` in [0, 1], upright by
    its EXIF orientation; grey, alpha and 16-bit handled), except that a JPEG above the
    pixel limit is decoded at 1/2, 1/4 or 1/8 of its size, never whole, rather than refused
    (a camera's 100-megapixel JPEG still gives a usable face); a PNG above it is refused.

    Returns:
        ``(image, factor)``: the image and how many times smaller than the file it is
        (1, 2, 4 or 8); photo pixel ``(x, y)`` is file pixel ``(x, y) * factor`` roughly.
    """
    path = Path(path)
    bgr, factor = _decode_raster(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH, "photo",
                                 max_pixels, reduce=True)
    return np.ascontiguousarray(_to_unit_float(bgr, path)[..., ::-1]), factor


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


def read_mask(path: PathLike, shape: tuple[int, ...] | None = None, *,
              max_pixels: int | None = None) -> np.ndarray:
    """Read a mask (PNG or JPEG) as bool ``(H, W)``.

    Stored as uint8 0/255 (0/1 and 16-bit are accepted too); a pixel is in when above half
    the full scale. A 3-channel file is accepted when its channels are equal. ``shape``:
    the expected ``(H, W)`` (trailing dimensions are ignored); a mismatch is an error.
    ``max_pixels``: the largest width x height decoded (:func:`max_image_pixels`).
    """
    path = Path(path)
    raw, _ = _decode_raster(path, cv2.IMREAD_UNCHANGED, "mask", max_pixels)
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


def _read_exr(path: Path, max_pixels: int | None) -> tuple[dict[str, str], np.ndarray]:
    """An EXR file's ``{'convention', 'encoding'}`` (either may be absent) and float
    ``(H, W, 3)`` R, G, B data, once the size its header declares is within the limit."""

    def corrupt(err: Exception) -> InputError:
        return InputError(f"cannot read EXR file {path}: truncated or corrupt ({err}); "
                          f"re-export it")

    # Opened here first: OpenEXR itself calls a missing or unreadable file corrupt.
    with open_for_reading(path, "normal map"):
        try:
            (x0, y0), (x1, y1) = OpenEXR.File(str(path), header_only=True).header()[
                "dataWindow"]
        except (RuntimeError, ValueError, OSError, KeyError, TypeError) as err:
            raise corrupt(err) from None
        check_pixels(path, "normal map", int(x1 - x0) + 1, int(y1 - y0) + 1, max_pixels)
        try:
            exr = OpenEXR.File(str(path), separate_channels=True)
            header, channels = exr.header(), exr.channels()
        except (RuntimeError, ValueError, OSError) as err:
            raise corrupt(err) from None
    missing = [c for c in "RGB" if c not in channels]
    if missing:
        raise InputError(f"{path}: EXR normal map needs channels R, G, B; found "
                         f"{', '.join(sorted(channels)) or 'none'}; re-export it with the "
                         f"(x, y, z) components in R, G, B")
    declared = {}
    for key, attr in (("convention", _EXR_CONVENTION), ("encoding", _EXR_ENCODING)):
        if attr in header:
            value = header[attr]
            declared[key] = value.decode() if isinstance(value, bytes) else str(value)
    # Half-float channels are widened; float32 ones are kept bit-exact.
    return declared, np.stack([channels[c].pixels.astype(np.float32) for c in "RGB"], axis=-1)


def _read_npy(path: Path, max_pixels: int | None) -> np.ndarray:
    """An NPY file's float ``(H, W, 3)`` array, once its shape is within the limit."""
    with open_for_reading(path, "normal map"):
        try:
            # Memory-mapped, only the header is read until the array is copied below.
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"cannot read NPY file {path}: truncated or corrupt ({err}); "
                             f"re-export it") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise InputError(f"{path}: an NPZ archive, not an NPY array; save the normal map with "
                         f"numpy.save")
    if not np.issubdtype(data.dtype, np.floating) or data.ndim != 3 or data.shape[2] != 3:
        raise InputError(f"{path}: expected a float (H, W, 3) normal map, got {data.dtype} "
                         f"{data.shape}")
    check_pixels(path, "normal map", data.shape[1], data.shape[0], max_pixels)
    return np.array(data)


def _read_sidecar(path: Path) -> dict[str, str]:
    """The ``{'convention', 'encoding'}`` a PNG or NPY file's JSON sidecar declares
    (either may be absent; no sidecar: none)."""
    sidecar = _sidecar(path)
    if not os.path.lexists(sidecar):
        return {}
    text = read_text(sidecar, "normal-map sidecar", "fix or delete it")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{sidecar}: invalid JSON sidecar ({err}); fix or delete it") \
            from None
    if not isinstance(meta, dict):
        raise InputError(f"{sidecar}: expected a JSON object, got {type(meta).__name__}; fix "
                         f"or delete it")
    return {k: str(meta[k]) for k in ("convention", "encoding") if k in meta}


def _load_normal_file(path: Path, suffix: str,
                      max_pixels: int | None) -> tuple[dict[str, str], np.ndarray]:
    """The file's own ``{'convention', 'encoding'}`` (either may be absent) and its data.

    Data: float ``(H, W, 3)`` for EXR/NPY, float32 in [0, 1] for PNG.
    """
    if suffix == ".exr":
        return _read_exr(path, max_pixels)
    declared = _read_sidecar(path)
    if suffix == ".npy":
        return declared, _read_npy(path, max_pixels)
    raw, _ = _decode_raster(path, cv2.IMREAD_UNCHANGED, "normal map", max_pixels)
    n_channels = 1 if raw.ndim == 2 else raw.shape[2]
    if n_channels != 3:
        raise InputError(f"{path}: expected a 3-channel RGB normal map, got {n_channels} "
                         f"channels; save the normals as RGB")
    return declared, _to_unit_float(raw[..., ::-1], path)


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
    max_pixels: int | None = None,
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
        max_pixels: the largest width x height read (:func:`max_image_pixels`).

    Returns:
        ``(normals, valid)``: float32 ``(H, W, 3)`` unit vectors, (0, 0, 0) where invalid,
        and bool ``(H, W)``. Zero vectors (black pixels in RGB encodings) are invalid.

    Raises:
        InputError: missing or unreadable file, above the pixel limit, wrong channels,
            mask of another size, unknown convention, or (without ``renormalize``) NaN /
            non-unit valid vectors.
    """
    path = Path(path)
    suffix = _suffix(path)
    declared, data = _load_normal_file(path, suffix, max_pixels)
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
