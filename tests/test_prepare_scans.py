"""``crossmodal prepare scans|florence|ict3drfe|bjut3d``: the scan readers and the render
recipe, on scans fabricated here (nothing downloads)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from crossmodal import io
from crossmodal.data.format import read_dataset
from crossmodal.errors import InputError
from crossmodal.prepare import meshes, scans
from crossmodal.synth.appearance import sample_look, vertex_colors
from crossmodal.synth.face_model import FaceModel

AXES = np.array([8.0, 10.0, 6.0])  # an ellipsoid's semi-axes, in mm


def run_recipe(name: str, raw: Path, out: Path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    scans.register(parser.add_subparsers())
    args = parser.parse_args([name, "--raw", str(raw), "--out", str(out), *extra])
    args.quiet = True
    assert args.func(args) == 0
    return json.loads((out / "prepare_report.json").read_text())


def write_obj(path: Path, vertices: np.ndarray, triangles: np.ndarray,
              colors: np.ndarray | None = None) -> None:
    rows = vertices if colors is None else np.hstack([vertices, colors])
    lines = ["v " + " ".join(f"{x:.6f}" for x in row) for row in rows]
    lines += [f"f {a} {b} {c}" for a, b, c in triangles + 1]
    path.write_text("\n".join(lines) + "\n")


def ellipsoid_scan(folder: Path, name: str = "blob") -> Path:
    """An ellipsoid OBJ (off-centre, in mm) with a sidecar of 68 points on its front."""
    sphere = trimesh.creation.icosphere(subdivisions=5)
    centre = np.array([3.0, -2.0, 5.0])
    path = folder / f"{name}.obj"
    write_obj(path, sphere.vertices * AXES + centre, sphere.faces)
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    radius = np.linspace(0.2, 0.6, 68)
    unit = np.stack([radius * np.cos(angles), radius * np.sin(angles) * 0.8], -1)
    front = np.sqrt(1 - (unit ** 2).sum(-1))
    points = np.column_stack([unit, front]) * AXES + centre
    np.savetxt(meshes.landmarks_path(path), points)
    return path


def test_rendered_normals_are_the_rotated_analytic_normals_and_the_crop_is_the_protocol(
        tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    ellipsoid_scan(raw)
    run_recipe("scans", raw, out, "--renders", "3", "--size", "96", "--workers", "1")
    info, samples = read_dataset(out)
    assert len(samples) == 3 and info.image_size == 96
    records = json.loads((out / "renders.json").read_text())
    centre = np.array([3.0, -2.0, 5.0])
    for sample in samples:
        record = records[sample.id]
        assert record["landmarks_source"] == "sidecar"
        rotation = np.array(record["rotation"])
        normals = io.read_normals(sample.normal)[0]
        mask = io.read_mask(sample.mask)
        # Each mask pixel's ray, in the scan's frame, meets the analytic ellipsoid.
        fx, fy, cx, cy = record["intrinsics"]
        v, u = np.nonzero(mask)
        rays = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones(len(u))], -1)
        origin = rotation.T @ np.array([0, 0, record["distance_cm"]]) / record["scale"] \
            + np.array(record["centre"]) - centre
        d = rays @ rotation / record["scale"]  # rotation.T applied to each row
        a = ((d / AXES) ** 2).sum(-1)
        b = 2 * ((d * origin) / AXES ** 2).sum(-1)
        c = ((origin / AXES) ** 2).sum() - 1
        t = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)
        hit = origin + t[:, None] * d
        gradient = hit / AXES ** 2
        expected = gradient @ rotation.T
        expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
        cosine = np.clip((normals[v, u] * expected).sum(-1), -1, 1)
        assert np.degrees(np.arccos(cosine)).mean() < 1.0
        # The crop: 1.2 x the projected landmarks' longer side, centred on their box.
        points = np.array(record["landmarks_full"])
        low, high = points.min(0), points.max(0)
        x0, y0, side = record["crop_box"]
        assert side == pytest.approx(1.2 * (high - low).max())
        np.testing.assert_allclose([x0 + side / 2, y0 + side / 2], (low + high) / 2)


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray, np.ndarray, FaceModel]:
    model = FaceModel.load()
    colors = vertex_colors(model, sample_look(np.random.default_rng(0)))
    return model.neutral.astype(np.float64), model.triangles, colors, model


def texture_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.clip(0.6 + 0.1 * rng.standard_normal((64, 64, 3)), 0, 1).astype(np.float32)


def export_face(folder: Path, fmt: str, face) -> Path:
    """The bundled face in ``fmt``: obj (colours), obj_tex, ply, glb, wrl (colours),
    wrl_tex."""
    vertices, triangles, colors, model = face
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "obj":
        path = folder / "face.obj"
        write_obj(path, vertices, triangles, colors)
    elif fmt == "obj_tex":
        path = folder / "face.obj"
        io.write_image(folder / "face.png", texture_image())
        (folder / "face.mtl").write_text("newmtl skin\nmap_Kd face.png\n")
        lines = ["mtllib face.mtl"] + [f"v {x} {y} {z}" for x, y, z in vertices]
        lines += [f"vt {u} {v}" for u, v in model.uvs] + ["usemtl skin"]
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc)
                  in zip(triangles + 1, model.triangle_uvs + 1)]
        path.write_text("\n".join(lines) + "\n")
    elif fmt in ("ply", "glb"):
        path = folder / f"face.{fmt}"
        mesh = trimesh.Trimesh(vertices, triangles, process=False,
                               vertex_colors=(colors * 255).round().astype(np.uint8))
        mesh.export(path)
    else:
        path = folder / "face.wrl"
        point = " ".join(f"{x} {y} {z}," for x, y, z in vertices)
        index = " ".join(f"{a} {b} {c} -1" for a, b, c in triangles)
        if fmt == "wrl":
            extra = "color Color { color [ %s ] }" % " ".join(
                f"{r:.5f} {g:.5f} {b:.5f}" for r, g, b in colors)
            appearance = ""
        else:
            io.write_image(folder / "face.png", texture_image())
            extra = "texCoord TextureCoordinate { point [ %s ] } texCoordIndex [ %s ]" % (
                " ".join(f"{u} {v}" for u, v in model.uvs),
                " ".join(f"{a} {b} {c} -1" for a, b, c in model.triangle_uvs))
            appearance = 'appearance Appearance { texture ImageTexture { url "face.png" } }'
        path.write_text(
            "#VRML V2.0 utf8\n# a comment\nTransform { translation 0 0 0 children [\n"
            f"Shape {{ {appearance} geometry DEF face IndexedFaceSet {{ solid FALSE\n"
            f"coord Coordinate {{ point [ {point} ] }}\ncoordIndex [ {index} ] {extra} }} }}"
            "\n] }\n")
    return path


FORMATS = ["obj", "obj_tex", "ply", "glb", "wrl", "wrl_tex"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_the_same_face(tmp_path, fmt, face):
    vertices, triangles, colors, model = face
    scan = meshes.read_scan(export_face(tmp_path, fmt, face))
    # Readers may reorder or split vertices (glTF): compare the triangles' corners.
    got = np.sort(np.round(scan.vertices[scan.triangles], 3).reshape(len(scan.triangles), -1),
                  axis=0)
    want = np.sort(np.round(vertices[triangles], 3).reshape(len(triangles), -1), axis=0)
    np.testing.assert_allclose(got, want, atol=2e-3)
    if fmt.endswith("_tex"):
        np.testing.assert_allclose(scan.texture, texture_image(), atol=1 / 255)
        uv_ids = scan.triangles if scan.triangle_uvs is None else scan.triangle_uvs
        np.testing.assert_allclose(np.sort(scan.uvs[uv_ids].ravel()),
                                   np.sort(model.uvs[model.triangle_uvs].ravel()), atol=1e-5)
    else:
        assert "vertex_colors" in scan.appearance()
        np.testing.assert_allclose(np.sort(scan.vertex_colors[scan.triangles].ravel()),
                                   np.sort(colors[triangles].ravel()), atol=1 / 255 + 1e-5)


def test_prepare_with_dlib_on_exported_faces(tmp_path, face):
    raw = tmp_path / "raw"
    export_face(raw / "a", "obj", face)
    export_face(raw / "b", "wrl_tex", face)
    report = run_recipe("scans", raw, tmp_path / "out", "--renders", "1", "--size", "64",
                        "--workers", "1", "--subject-from", "folder", "--val-fraction", "0.5")
    info, samples = read_dataset(tmp_path / "out")
    records = json.loads((tmp_path / "out" / "renders.json").read_text())
    assert [s.id for s in samples] == ["a_face_r00", "b_face_r00"], report["skipped"]
    assert {s.split for s in samples} == {"train", "val"}
    assert all(records[s.id]["landmarks_source"] == "dlib" for s in samples)
    assert all(s.kind == "paired" for s in samples)


@pytest.mark.parametrize("content", [b"v 1 2 3\nv 4 5", b"#VRML V2.0 utf8\nShape { geometry "
                                     b"IndexedFaceSet { coord Coordinate { point [ 1 2 ",
                                     b"\x00\xff garbage"])
def test_corrupt_scans_raise_one_line(tmp_path, content):
    path = tmp_path / ("bad.obj" if content.startswith(b"v") else "bad.wrl")
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad") as err:
        meshes.read_scan(path)
    assert "\n" not in str(err.value)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_resume_and_corrupt_scans(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    ellipsoid_scan(raw, "a")
    ellipsoid_scan(raw, "b")
    (raw / "cut.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1")
    (raw / "junk.wrl").write_bytes(b"#VRML V2.0 utf8\nShape { geometry IndexedFaceSet {")
    args = ("--renders", "2", "--size", "64", "--workers", "1", "--val-fraction", "0")
    report = run_recipe("scans", raw, out, *args)
    assert sorted(s["item"] for s in report["skipped"]) == ["cut.obj", "junk.wrl"]
    assert all(s["reason"] for s in report["skipped"])
    assert report["counts"] == {"paired": 4}
    first = tree(out)

    calls = []
    real = scans._render_job
    monkeypatch.setattr(scans, "_render_job", lambda job: calls.append(job) or real(job))
    run_recipe("scans", raw, out, *args)
    assert [c.relative for c in calls] == ["cut.obj"] * 2 + ["junk.wrl"] * 2  # reads only
    assert tree(out) == first

    # An interrupted run: rows lost from samples.csv, files deleted.
    (out / "images" / "a_r01.png").unlink()
    (out / "normals" / "b_r00.exr").unlink()
    lines = (out / "samples.csv").read_text().splitlines()
    (out / "samples.csv").write_text("\n".join(lines[:2]) + "\n")
    calls.clear()
    run_recipe("scans", raw, out, *args)
    assert sorted(c.id for c in calls if c.relative.startswith(("a", "b"))) == [
        "a_r01", "b_r00", "b_r01"]
    assert tree(out) == first


def test_presets_and_workers_give_identical_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("crossmodal.parallel.available_cores", lambda: 2)
    raw = tmp_path / "raw"
    for subject in ("s1", "s2", "s3"):
        (raw / subject).mkdir(parents=True)
        ellipsoid_scan(raw / subject, "neutral")
    folders = {}
    for name, expect in (("florence", {"test"}), ("ict3drfe", {"train", "val"}),
                         ("bjut3d", {"train", "val"})):
        for workers in ("1", "2"):
            out = tmp_path / f"workers{workers}" / name
            report = run_recipe(name, raw, out, "--renders", "2", "--size", "32",
                                "--workers", workers)
            folders[name, workers] = tree(out)
        info, samples = read_dataset(out)
        assert {s.split for s in samples} == expect
        assert {s.kind for s in samples} == {"normal" if name == "bjut3d" else "paired"}
        assert report["paper"] == scans.PRESETS[name].paper
        assert folders[name, "1"] == folders[name, "2"]
