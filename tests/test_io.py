"""Tests of crossmodal.io: images, masks and normal maps on disk."""

from __future__ import annotations

import json
import logging
import struct

import cv2
import numpy as np
import OpenEXR
import pytest

from crossmodal.errors import InputError
from crossmodal.io import (
    NORMAL_SUFFIXES,
    read_image,
    read_mask,
    read_normals,
    write_image,
    write_mask,
    write_normals,
)
from crossmodal.shapes import orthographic_sphere


def random_normals(shape=(24, 32), seed=0, invalid_fraction=0.2):
    """Random float32 unit vectors with some zero (invalid) pixels."""
    rng = np.random.default_rng(seed)
    n = rng.normal(size=(*shape, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    valid = rng.random(shape) > invalid_fraction
    n[~valid] = 0.0
    return n, valid


def angles_deg(a, b):
    # atan2 of |a x b| and a . b stays accurate for tiny angles, unlike arccos near 1.
    a, b = a.astype(np.float64), b.astype(np.float64)
    sin = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(sin, np.sum(a * b, axis=-1)))


def write_exr(path, rgb, header=None):
    """Write float ``(H, W, 3)`` as R, G, B channels straight through OpenEXR."""
    h = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage, **(header or {})}
    channels = {c: np.ascontiguousarray(rgb[..., i]) for i, c in enumerate("RGB")}
    OpenEXR.File(h, channels).write(str(path))


def raw_exr(path):
    f = OpenEXR.File(str(path), separate_channels=True)
    ch = f.channels()
    return f.header(), np.stack([ch[c].pixels for c in "RGB"], axis=-1)


# --------------------------------------------------------------------------- EXR


def test_exr_round_trip_is_bit_exact_and_records_convention(tmp_path):
    n, valid = random_normals()
    p = tmp_path / "sub" / "n.exr"
    write_normals(p, n)
    header, raw = raw_exr(p)
    assert header["normalConvention"] == "opengl"
    assert header["normalEncoding"] == "vector"
    assert raw.dtype == np.float32 and np.array_equal(raw, n)
    back, back_valid = read_normals(p)
    assert back.dtype == np.float32 and back.shape == n.shape
    assert np.array_equal(back, n)
    assert np.array_equal(back_valid, valid)
    assert not list(p.parent.glob(".*tmp*"))  # the atomic write left no temporary


def test_exr_opencv_convention_on_disk_and_back(tmp_path):
    n, valid = random_normals(seed=1)
    p = tmp_path / "cv.exr"
    write_normals(p, n, convention="opencv")
    header, raw = raw_exr(p)
    assert header["normalConvention"] == "opencv"
    np.testing.assert_array_equal(raw, n * np.float32([1, -1, -1]))
    back, back_valid = read_normals(p)
    np.testing.assert_allclose(back, n, atol=1e-7, rtol=0)
    assert np.array_equal(back_valid, valid)


def test_exr_half_channels_are_accepted(tmp_path):
    n, valid = random_normals(seed=2)
    p = tmp_path / "half.exr"
    write_exr(p, n.astype(np.float16))
    back, back_valid = read_normals(p)
    assert back.dtype == np.float32
    assert np.array_equal(back_valid, valid)
    assert angles_deg(back[valid], n[valid]).max() < 0.2


def test_datagen_rgb_exr_decodes_to_sphere_normals(tmp_path):
    sphere = orthographic_sphere(64)
    ours = sphere.normals
    # Datagen stores +z along the viewing direction, B = (1 - z_datagen) / 2.
    z_datagen = -ours[..., 2]
    rgb = np.stack([(ours[..., 0] + 1) / 2, (ours[..., 1] + 1) / 2, (1 - z_datagen) / 2],
                   axis=-1)
    rgb[~sphere.mask] = 0.0
    p = tmp_path / "datagen.exr"
    write_exr(p, rgb.astype(np.float32))
    back, valid = read_normals(p, convention="datagen", encoding="rgb")
    assert np.array_equal(valid, sphere.mask)
    assert angles_deg(back[valid], ours[valid]).max() < 1e-3
    centre = back[31:33, 31:33].reshape(-1, 3)  # the pixels nearest the camera
    np.testing.assert_allclose(centre[:, 2], 1.0, atol=1e-3)
    assert np.all(centre[:, 2] > np.abs(centre[:, :2]).max())
    # Our writer produces the same file format, and declares it.
    q = tmp_path / "ours_as_datagen.exr"
    write_normals(q, ours, convention="datagen", encoding="rgb")
    header, raw = raw_exr(q)
    assert (header["normalConvention"], header["normalEncoding"]) == ("datagen", "rgb")
    np.testing.assert_allclose(raw, rgb, atol=1e-6)
    back2, valid2 = read_normals(q)  # the declaration is enough
    assert np.array_equal(valid2, sphere.mask)
    assert angles_deg(back2[valid2], ours[valid2]).max() < 1e-3


def test_explicit_convention_overrides_declaration_with_warning(tmp_path, caplog):
    n, _ = random_normals(seed=3)
    p = tmp_path / "cv.exr"
    write_normals(p, n, convention="opencv")
    with caplog.at_level(logging.WARNING, logger="crossmodal.io"):
        back, _ = read_normals(p, convention="opengl")
    assert "opencv" in caplog.text
    np.testing.assert_array_equal(back, n * np.float32([1, -1, -1]))


def test_exr_without_attributes_is_read_as_argument_or_opengl(tmp_path):
    n, _ = random_normals(seed=4)
    p = tmp_path / "plain.exr"
    write_exr(p, n * np.float32([1, -1, -1]))
    back, _ = read_normals(p)
    np.testing.assert_array_equal(back, n * np.float32([1, -1, -1]))
    back, _ = read_normals(p, convention="opencv")
    np.testing.assert_array_equal(back, n)


def test_write_normals_mask_marks_pixels_invalid(tmp_path):
    n, valid = random_normals(seed=5, invalid_fraction=0.0)
    mask = np.zeros(n.shape[:2], np.uint8)
    mask[4:10, 5:20] = 255
    p = tmp_path / "m.exr"
    write_normals(p, n, mask=mask)
    back, back_valid = read_normals(p)
    assert np.array_equal(back_valid, mask > 0)
    assert np.array_equal(back[mask > 0], n[mask > 0])
    assert not back[mask == 0].any()
    # A mask given at read time restricts the valid pixels further.
    read_mask_arr = np.zeros_like(mask, dtype=bool)
    read_mask_arr[4:6] = True
    _, v2 = read_normals(p, mask=read_mask_arr)
    assert np.array_equal(v2, read_mask_arr & (mask > 0))


# --------------------------------------------------------------------------- PNG / NPY


def test_png16_round_trip_and_sidecar(tmp_path):
    n, valid = random_normals(seed=6)
    p = tmp_path / "n.png"
    write_normals(p, n, convention="opencv")
    raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (*n.shape[:2], 3)
    meta = json.loads((tmp_path / "n.png.json").read_text())
    assert meta == {"format": "crossmodal-normals", "version": 1, "convention": "opencv",
                    "encoding": "rgb"}
    back, back_valid = read_normals(p)
    assert np.array_equal(back_valid, valid)
    assert angles_deg(back[valid], n[valid]).max() < 0.01
    np.testing.assert_allclose(np.linalg.norm(back[valid], axis=-1), 1.0, atol=1e-6)
    # Without the sidecar the same file is read as 'opengl': y and z flip.
    (tmp_path / "n.png.json").unlink()
    wrong, _ = read_normals(p)
    assert angles_deg(wrong[valid] * [1, -1, -1], n[valid]).max() < 0.01


def test_png8_normals_within_half_a_degree(tmp_path):
    n, valid = random_normals(seed=7)
    rgb = np.rint((n + 1) / 2 * 255).astype(np.uint8)
    rgb[~valid] = 0
    p = tmp_path / "n8.png"
    cv2.imwrite(str(p), rgb[..., ::-1])
    back, back_valid = read_normals(p)
    assert np.array_equal(back_valid, valid)
    assert angles_deg(back[valid], n[valid]).max() < 0.5


def test_npy_round_trip_exact_and_sidecar_honoured(tmp_path):
    n, valid = random_normals(seed=8)
    p = tmp_path / "n.npy"
    write_normals(p, n, convention="opencv")
    np.testing.assert_array_equal(np.load(p), n * np.float32([1, -1, -1]))
    assert json.loads((tmp_path / "n.npy.json").read_text())["convention"] == "opencv"
    back, back_valid = read_normals(p)
    np.testing.assert_array_equal(back, n)
    assert np.array_equal(back_valid, valid)
    p2 = tmp_path / "plain.npy"
    write_normals(p2, n)
    np.testing.assert_array_equal(read_normals(p2)[0], n)


# --------------------------------------------------------------------------- images


def test_read_image_8bit_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), rgb[..., ::-1])
    img = read_image(p)
    assert img.dtype == np.float32 and img.shape == (10, 12, 3)
    np.testing.assert_array_equal(np.rint(img * 255).astype(np.uint8), rgb)


def test_read_image_16bit_keeps_precision(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    p = tmp_path / "a16.png"
    cv2.imwrite(str(p), rgb[..., ::-1])
    img = read_image(p)
    np.testing.assert_allclose(img, rgb / 65535.0, atol=0.5 / 65535)
    np.testing.assert_array_equal(np.rint(img.astype(np.float64) * 65535), rgb)


def test_read_image_grey_and_rgba(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], grey / np.float32(255))
    rgba = np.random.default_rng(2).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: must not be composited away
    cv2.imwrite(str(tmp_path / "a.png"), rgba[..., [2, 1, 0, 3]])
    img = read_image(tmp_path / "a.png")
    assert img.shape == (6, 8, 3)
    np.testing.assert_array_equal(np.rint(img * 255).astype(np.uint8), rgba[..., :3])


def test_read_image_applies_exif_orientation(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    # A minimal EXIF block: IFD0 with Orientation = 6 (rotate 90 degrees clockwise).
    tiff = (b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
            + struct.pack("<I", 0))
    app1 = b"Exif\x00\x00" + tiff
    p = tmp_path / "rot.jpg"
    p.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])
    assert read_image(p).shape == (40, 20, 3)


@pytest.mark.parametrize("bits", [8, 16])
def test_write_read_image_round_trip(tmp_path, bits):
    img = np.random.default_rng(3).random((9, 11, 3)).astype(np.float32)
    p = tmp_path / "deep" / f"w{bits}.png"
    write_image(p, img, bits=bits)
    raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == (np.uint8 if bits == 8 else np.uint16)
    top = 2**bits - 1
    np.testing.assert_allclose(read_image(p), img, atol=0.5 / top + 1e-7)


def test_write_image_clips_and_jpeg(tmp_path):
    img = np.full((4, 5, 3), 2.0, np.float32)
    img[0, 0] = -1.0
    write_image(tmp_path / "c.png", img)
    back = read_image(tmp_path / "c.png")
    assert back[0, 0].tolist() == [0, 0, 0] and back[1, 1].tolist() == [1, 1, 1]
    flat = np.full((16, 16, 3), [200, 100, 50], np.uint8)
    write_image(tmp_path / "j.jpg", flat)
    np.testing.assert_allclose(read_image(tmp_path / "j.jpg") * 255, flat, atol=3)
    with pytest.raises(InputError, match="JPEG"):
        write_image(tmp_path / "j16.jpg", flat, bits=16)


def test_read_image_bad_files(tmp_path):
    with pytest.raises(InputError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(InputError, match="junk.png"):
        read_image(junk)


# --------------------------------------------------------------------------- masks


def test_mask_round_trip_and_formats(tmp_path):
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    p = tmp_path / "m" / "mask.png"
    write_mask(p, mask)
    raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    assert np.array_equal(read_mask(p, shape=(7, 9)), mask)
    # 0/1 on disk, and 0/1 or 0/255 given to the writer.
    cv2.imwrite(str(tmp_path / "01.png"), mask.astype(np.uint8))
    assert np.array_equal(read_mask(tmp_path / "01.png"), mask)
    write_mask(tmp_path / "w01.png", mask.astype(np.uint8))
    assert np.array_equal(read_mask(tmp_path / "w01.png"), mask)
    # Equal-channel colour masks are fine, unequal ones are not.
    cv2.imwrite(str(tmp_path / "c.png"), np.repeat(raw[..., None], 3, axis=-1))
    assert np.array_equal(read_mask(tmp_path / "c.png"), mask)
    bad = np.repeat(raw[..., None], 3, axis=-1)
    bad[0, 0, 1] = 255
    cv2.imwrite(str(tmp_path / "bad.png"), bad)
    with pytest.raises(InputError, match="bad.png"):
        read_mask(tmp_path / "bad.png")


def test_mask_shape_mismatch_names_file_and_sizes(tmp_path):
    p = tmp_path / "mask.png"
    write_mask(p, np.ones((7, 9), bool))
    with pytest.raises(InputError) as err:
        read_mask(p, shape=(8, 10))
    msg = str(err.value)
    assert "mask.png" in msg and "7x9" in msg and "8x10" in msg and "resize" in msg


# --------------------------------------------------------------------------- bad input


def test_truncated_exr_is_an_input_error(tmp_path):
    n, _ = random_normals((64, 64), seed=9)
    p = tmp_path / "cut.exr"
    write_normals(p, n)
    data = p.read_bytes()
    for size in (len(data) // 2, 40):
        p.write_bytes(data[:size])
        with pytest.raises(InputError, match=r"cut\.exr.*truncated or corrupt"):
            read_normals(p)


def test_exr_without_rgb_channels_names_channels(tmp_path):
    p = tmp_path / "xyz.exr"
    a = np.zeros((4, 4), np.float32)
    OpenEXR.File({"type": OpenEXR.scanlineimage}, {"X": a, "Y": a, "Z": a}).write(str(p))
    with pytest.raises(InputError, match="X, Y, Z"):
        read_normals(p)


@pytest.mark.parametrize("channels", [1, 4])
def test_png_normals_wrong_channel_count(tmp_path, channels):
    shape = (6, 6) if channels == 1 else (6, 6, channels)
    p = tmp_path / f"c{channels}.png"
    cv2.imwrite(str(p), np.full(shape, 40000, np.uint16))
    with pytest.raises(InputError, match=f"3-channel RGB normal map, got {channels} channels"):
        read_normals(p)


def test_non_unit_normals_need_renormalize(tmp_path):
    n, valid = random_normals(seed=10)
    p = tmp_path / "long.exr"
    write_normals(p, n * 2.0)
    with pytest.raises(InputError, match=r"long\.exr.*renormali"):
        read_normals(p)
    back, back_valid = read_normals(p, renormalize=True)
    assert np.array_equal(back_valid, valid)
    np.testing.assert_allclose(np.linalg.norm(back[valid], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(back, n, atol=1e-6)


def test_nan_pixel_is_an_error(tmp_path):
    n, valid = random_normals(seed=11)
    n[valid.nonzero()[0][0], valid.nonzero()[1][0], 1] = np.nan
    p = tmp_path / "nan.exr"
    write_exr(p, n)
    with pytest.raises(InputError, match=r"nan\.exr.*1 non-finite"):
        read_normals(p)
    back, back_valid = read_normals(p, renormalize=True)
    assert back_valid.sum() == valid.sum() - 1 and np.isfinite(back).all()
    # The same in an rgb-encoded file.
    q = tmp_path / "nan_rgb.exr"
    write_exr(q, np.where(np.isnan(n), np.nan, (n + 1) / 2).astype(np.float32))
    with pytest.raises(InputError, match="non-finite"):
        read_normals(q, encoding="rgb")


def test_mask_of_another_size_is_an_error(tmp_path):
    n, _ = random_normals(seed=12)
    p = tmp_path / "n.exr"
    write_normals(p, n)
    with pytest.raises(InputError, match=r"n\.exr.*\(5, 5\)"):
        read_normals(p, mask=np.ones((5, 5), bool))
    with pytest.raises(InputError, match="shape"):
        write_normals(tmp_path / "w.exr", n, mask=np.ones((5, 5), bool))


def test_unknown_suffix_lists_formats(tmp_path):
    n, _ = random_normals(seed=13)
    for call in (lambda p: read_normals(p), lambda p: write_normals(p, n)):
        with pytest.raises(InputError) as err:
            call(tmp_path / "n.tiff")
        assert all(s in str(err.value) for s in NORMAL_SUFFIXES)


def test_unknown_convention_lists_valid_names(tmp_path):
    n, _ = random_normals(seed=14)
    p = tmp_path / "n.exr"
    write_normals(p, n)
    for call in (lambda: read_normals(p, convention="blender"),
                 lambda: write_normals(tmp_path / "w.exr", n, convention="blender")):
        with pytest.raises(InputError) as err:
            call()
        assert "blender" in str(err.value)
        assert all(name in str(err.value) for name in ("opengl", "opencv", "datagen"))
    # A declaration the package does not know is reported with the file name.
    write_exr(tmp_path / "odd.exr", n, {"normalConvention": "blender"})
    with pytest.raises(InputError, match=r"odd\.exr.*valid: "):
        read_normals(tmp_path / "odd.exr")


def test_missing_normal_file(tmp_path):
    for suffix in NORMAL_SUFFIXES:
        with pytest.raises(InputError, match=f"missing{suffix}"):
            read_normals(tmp_path / f"missing{suffix}")


def test_png_cannot_hold_raw_vectors(tmp_path):
    n, _ = random_normals(seed=15)
    with pytest.raises(InputError, match="encoding 'vector'.*valid: rgb"):
        write_normals(tmp_path / "v.png", n, encoding="vector")
    write_normals(tmp_path / "ok.png", n)
    with pytest.raises(InputError, match="encoding 'vector'"):
        read_normals(tmp_path / "ok.png", encoding="vector")
