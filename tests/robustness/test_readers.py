"""Issue 10, classes 3, 7 and the reader half of 4: every image reader checks the declared
size before decoding, text files that are not UTF-8, unreadable files and missing ones end
in one line naming the file, and a dataset's rows stay inside its folder.

Every input is fabricated in ``tmp_path``."""

import errno
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossmodal import fileutil, io
from crossmodal.data import DatasetInfo, DatasetWriter, read_dataset
from crossmodal.errors import InputError
from crossmodal.shapes import orthographic_sphere

SIZE = 8
ENV = "CROSSMODAL_MAX_IMAGE_PIXELS"


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m crossmodal ARGS`` -> (exit status, its one stderr line)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in (ENV, "OPENCV_IO_MAX_IMAGE_PIXELS")}
    result = subprocess.run([sys.executable, "-m", "crossmodal", *args], capture_output=True,
                            text=True, timeout=60, env={**environ, **(env or {})})
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossmodal: error: "), result.stderr
    return result.returncode, lines[0]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of black rows, compressed as it is written (never in memory)."""
    deflate, row = zlib.compressobj(1), b"\0" * (width + 1)  # each row: filter byte + pixels
    block = 500  # rows per compress call
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                  8, 0, 0, 0, 0)))
        for start in range(0, height, block):
            f.write(chunk(b"IDAT", deflate.compress(row * min(block, height - start))))
        f.write(chunk(b"IDAT", deflate.flush()) + chunk(b"IEND", b""))
    return path


def small_dataset(root: Path) -> Path:
    """Two paired train faces of SIZE px, each with a mask."""
    info = DatasetInfo(name="tiny", source="tests", license="MIT", image_size=SIZE,
                       created_by="tests")
    sphere = orthographic_sphere(SIZE)
    with DatasetWriter(root, info) as writer:
        for i in range(2):
            writer.add(f"f{i}", f"s{i}", "train", image=np.full((SIZE, SIZE, 3), 0.5),
                       normals=sphere.normals, mask=sphere.mask)
    return root


# --------------------------------------------------------------------------- bounded decoding


PROBE = """\
import resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "crossmodal", *sys.argv[1:]], capture_output=True,
                   text=True)
sys.stderr.write(r.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
sys.exit(r.returncode)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_a_huge_png_is_refused_before_decoding(tmp_path):
    """Acceptance: a 20,000 x 20,000 PNG of a few hundred kB (400 MB as pixels) is refused
    from its header, the whole command staying under 500 MB."""
    big = zero_png(tmp_path / "big.png", 20000, 20000)
    assert big.stat().st_size < 5e6
    normals = io.write_normals(tmp_path / "n.png", orthographic_sphere(SIZE).normals)
    environ = {k: v for k, v in os.environ.items() if k != ENV}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "convert", str(normals), str(tmp_path / "out.exr"),
         "--mask", str(big)], capture_output=True, text=True, timeout=60, env=environ)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"crossmodal: error: mask {big} is 20000x20000 = 400,000,000 pixels, above the limit "
        f"of 67,108,864 that bounds the memory decoding takes; shrink the image, or raise the "
        f"limit: {ENV}=400000000 (max_pixels= in Python)")
    assert int(result.stdout) < 500 * 1024
    assert not (tmp_path / "out.exr").exists()


def write_every_format(folder: Path) -> dict[str, tuple[Path, object]]:
    """A 40x30 file of every format the readers take -> (path, its reader)."""
    image = np.zeros((30, 40, 3), np.uint8)
    normals = np.zeros((30, 40, 3), np.float32)
    normals[..., 2] = 1
    return {
        "png image": (io.write_image(folder / "i.png", image), io.read_image),
        "jpeg image": (io.write_image(folder / "i.jpg", image), io.read_image),
        "mask": (io.write_mask(folder / "m.png", image[..., 0] > 0), io.read_mask),
        "png normal map": (io.write_normals(folder / "n.png", normals), io.read_normals),
        "exr normal map": (io.write_normals(folder / "n.exr", normals), io.read_normals),
        "npy normal map": (io.write_normals(folder / "n.npy", normals), io.read_normals),
    }


def exr_claiming(path: Path, width: int, height: int) -> Path:
    """A small EXR whose header's dataWindow claims ``width`` x ``height`` pixels."""
    normals = np.zeros((4, 4, 3), np.float32)
    normals[..., 2] = 1
    data = io.write_normals(path, normals).read_bytes()
    key = b"dataWindow\0box2i\0" + struct.pack("<i", 16)
    at = data.index(key) + len(key)
    patched = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    path.write_bytes(data[:at] + patched + data[at + 16:])
    return path


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A JPEG header (JFIF, a comment, a baseline frame of 3 components) with no scan data."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    comment = b"\xff\xfe" + struct.pack(">H", 6) + b"\xff\xc0ab"  # a fake marker inside
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    path.write_bytes(b"\xff\xd8" + app0 + comment + frame + b"\xff\xd9")
    return path


def test_every_reader_checks_the_declared_size_first(tmp_path, monkeypatch):
    """Images, JPEGs, masks and PNG, EXR and NPY normal maps: the limit comes from the
    keyword, else the environment variable; files claiming huge sizes are refused from
    their header, and formats whose header is not read are not decoded at all."""
    for name, (path, read) in write_every_format(tmp_path).items():
        read(path, max_pixels=1200)
        with pytest.raises(InputError) as err:
            read(path, max_pixels=1199)
        assert f" {path} is 40x30 = 1,200 pixels, above the limit of 1,199 " in str(err.value)
        monkeypatch.setenv(ENV, "1199")
        with pytest.raises(InputError, match=f"{ENV}=1200 "):
            read(path)
        monkeypatch.delenv(ENV)
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(InputError, match=f"{ENV}='lots' is not a whole number of pixels"):
        io.read_image(tmp_path / "i.png")
    monkeypatch.delenv(ENV)

    with pytest.raises(InputError, match=r"normal map .*big.exr is 20000x20000 = 400,000,000"):
        io.read_normals(exr_claiming(tmp_path / "big.exr", 20000, 20000))
    with pytest.raises(InputError, match=r"image .*big.jpg is 30000x20000 = 600,000,000"):
        io.read_image(jpeg_claiming(tmp_path / "big.jpg", 30000, 20000))
    ok, bmp = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(bmp.tobytes())
    with pytest.raises(InputError, match=r"cannot read image .*b.png: not a PNG or JPEG file; "
                                         r"re-export it as PNG or JPEG"):
        io.read_image(tmp_path / "b.png")


def test_opencv_limit_ends_in_one_line(tmp_path):
    """OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS): ours is checked first; when ours is
    the larger, OpenCV's refusal is one line naming both variables, not a traceback."""
    normals = io.write_normals(tmp_path / "n.png", orthographic_sphere(SIZE).normals)
    out = str(tmp_path / "o.exr")
    status, line = cli("convert", str(normals), out,
                       env={"OPENCV_IO_MAX_IMAGE_PIXELS": "10", ENV: "10"})
    assert status == 2 and f"{ENV}=64 " in line
    status, line = cli("convert", str(normals), out, env={"OPENCV_IO_MAX_IMAGE_PIXELS": "10"})
    assert status == 2
    assert line.startswith(f"crossmodal: error: OpenCV refused normal map {normals} (8x8)")
    assert line.endswith(" as above its own size limit; raise OPENCV_IO_MAX_IMAGE_PIXELS (or "
                         f"_WIDTH, _HEIGHT) too, or lower {ENV} below it")


# --------------------------------------------------------------------------- text files


def test_text_files_that_are_not_utf8(tmp_path):
    """samples.csv, dataset.json and a normal map's sidecar in Latin-1: one line naming the
    file, the byte and its line; a UTF-8 byte-order mark (Excel, Notepad) is accepted."""
    root = small_dataset(tmp_path / "ds")
    csv_path, json_path = root / "samples.csv", root / "dataset.json"
    text = csv_path.read_text(encoding="utf-8")
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.replace("s1", "Jos\u00e9").encode("utf-8"))
    assert [s.subject for s in read_dataset(root)[1]] == ["s0", "Jos\u00e9"]
    csv_path.write_bytes(text.replace("s1", "Jos\u00e9").encode("latin-1"))
    with pytest.raises(InputError) as err:
        read_dataset(root)
    assert str(err.value) == (f"dataset table {csv_path} is not UTF-8 text (byte 0xe9 on "
                              f"line 3); save it as UTF-8")
    # An unclosed quote swallows the rest of the file into one field, past csv's limit.
    csv_path.write_text(text.replace(",s1,", ',"s1' + "x" * 140000 + ","), encoding="utf-8")
    with pytest.raises(InputError, match=f"{csv_path} line 3: field larger than field limit "
                                         r"\(131072\); fix the row"):
        read_dataset(root)
    csv_path.write_text(text, encoding="utf-8")
    json_path.write_bytes(json_path.read_bytes().replace(b'"tiny"', b'"t\xefny"'))
    with pytest.raises(InputError, match=f"description {json_path} is not UTF-8 text "
                                         r"\(byte 0xef on line 2\)"):
        read_dataset(root)

    normals = io.write_normals(tmp_path / "n.png", orthographic_sphere(SIZE).normals)
    sidecar = tmp_path / "n.png.json"
    sidecar.write_bytes(b'{"convention": "opengl", "note": "\xe9"}')
    status, line = cli("convert", str(normals), str(tmp_path / "o.exr"))
    assert status == 2 and line == (f"crossmodal: error: normal-map sidecar {sidecar} is not "
                                    f"UTF-8 text (byte 0xe9 on line 1); save it as UTF-8")
    sidecar.write_text("[1, 2]")
    with pytest.raises(InputError, match=f"{sidecar}: expected a JSON object, got list"):
        io.read_normals(normals)


# --------------------------------------------------------------------------- missing / unreadable


def test_missing_is_reported_as_missing(tmp_path):
    """A missing EXR is missing, not 'corrupt'; a broken link, a folder or a pipe in place
    of a file are named as such (a pipe is never opened: reading it would block)."""
    missing = tmp_path / "gone.exr"
    with pytest.raises(InputError) as err:
        io.read_normals(missing)
    assert str(err.value) == f"normal map {missing} does not exist; check the path"
    status, line = cli("convert", str(missing), str(tmp_path / "o.exr"))
    assert status == 2 and line == f"crossmodal: error: normal map {missing} does not exist; " \
                                   f"check the path"
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(InputError, match=r"image .*link.png is a broken symbolic link \(to "
                                         r".*nowhere.png\); check the path"):
        io.read_image(tmp_path / "link.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match=r"mask .*folder.png is a folder, not a file"):
        io.read_mask(tmp_path / "folder.png")

    root = small_dataset(tmp_path / "ds")
    (root / "masks" / "f1.png").unlink()
    os.mkfifo(root / "masks" / "f1.png")
    with pytest.raises(InputError, match=r"line 3 \(id 'f1'\): mask file .*f1.png is not a "
                                         r"regular file \(a pipe, socket or device\)"):
        read_dataset(root)
    (root / "samples.csv").unlink()
    os.mkfifo(root / "samples.csv")
    with pytest.raises(InputError, match=r"dataset table .*samples.csv is not a regular file"):
        read_dataset(root)


def deny(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    """Every reader opens files through one function; a refusal there names the file and
    says what to do. (Simulated: the tests may run as root, who reads anything.)"""
    root = small_dataset(tmp_path / "ds")
    normals = io.write_normals(tmp_path / "n.exr", orthographic_sphere(SIZE).normals)
    monkeypatch.setattr(fileutil, "open", deny, raising=False)
    fix = "permission denied; make it readable for your user (chmod u+r if you own it)"
    for what, path, read in (
            ("dataset description", root / "dataset.json", lambda: read_dataset(root)),
            ("image", root / "images" / "f0.png", lambda: io.read_image(root / "images/f0.png")),
            ("normal map", normals, lambda: io.read_normals(normals))):
        with pytest.raises(InputError) as err:
            read()
        assert str(err.value) == f"cannot read {what} {path}: {fix}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file_from_the_command_line(tmp_path):
    normals = io.write_normals(tmp_path / "n.exr", orthographic_sphere(SIZE).normals)
    normals.chmod(0)
    status, line = cli("convert", str(normals), str(tmp_path / "o.exr"))
    assert status == 2 and line == (f"crossmodal: error: cannot read normal map {normals}: "
                                    f"permission denied; make it readable for your user "
                                    f"(chmod u+r if you own it)")


# --------------------------------------------------------------------------- symbolic links


def test_links_leaving_the_dataset_are_refused(tmp_path):
    """A row's file, or a folder on its way, linking outside the dataset is refused like a
    '..' path, naming the line, id and file; links inside the dataset are fine."""
    root = small_dataset(tmp_path / "ds")
    outside = small_dataset(tmp_path / "other")
    inside = root / "images" / "f0.png"
    (root / "images" / "f0.png").rename(root / "images" / "real.png")
    inside.symlink_to("real.png")
    assert read_dataset(root)[1][0].image == inside

    (root / "masks" / "f1.png").unlink()
    (root / "masks" / "f1.png").symlink_to(outside / "masks" / "f1.png")
    for check_files in (True, False):
        with pytest.raises(InputError) as err:
            read_dataset(root, check_files=check_files)
        assert str(err.value) == (
            f"{root / 'samples.csv'} line 3 (id 'f1'): mask path 'masks/f1.png' leads outside "
            f"the dataset folder through a symbolic link (to {outside / 'masks' / 'f1.png'}); "
            f"copy the file into {root} instead of linking it")
    (root / "masks" / "f1.png").unlink()
    (root / "masks").rename(root / "masks_real")
    (root / "masks").symlink_to(outside / "masks")
    with pytest.raises(InputError, match=r"line 2 \(id 'f0'\): mask path 'masks/f0.png' leads "
                                         r"outside"):
        read_dataset(root)
