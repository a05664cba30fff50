"""Tests of the packaged ICT-FaceKit Light asset, crossmodal.synth.FaceModel and the
derivation script datasets/derive_face_model.py.

The derivation runs on a small source model built here in the source's format
(datasets/README.md). The comparisons with the real source, and the byte-for-byte
reproduction of the asset, are opt-in: set ``CROSSMODAL_ICT_SOURCE`` to the folder holding
it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import CrossmodalError, InputError
from crossmodal.synth import FaceModel

REPO = Path(__file__).resolve().parents[1]
ASSET_DIR = REPO / "crossmodal" / "assets" / "ict_face_light"
ASSET = ASSET_DIR / "face_model.npz"
#: Names the folder of the real ICT-FaceKit Light source (compact form, datasets/README.md).
SOURCE_ENV = "CROSSMODAL_ICT_SOURCE"
SOURCE_DIR = Path(os.environ[SOURCE_ENV]) if os.environ.get(SOURCE_ENV) else None

KEPT_REGIONS = ("face", "head_neck", "mouth_socket", "eye_socket_L", "eye_socket_R",
                "gums_tongue", "teeth", "eyeball_L", "eyeball_R")
OVERLAY_REGIONS = ("lacrimal_L", "lacrimal_R", "eyeblend_L", "eyeblend_R",
                   "eye_occlusion_L", "eye_occlusion_R", "eyelashes_L", "eyelashes_R")
OVERLAY_MATERIALS = {"M_EyeBlend", "M_EyeLashes", "M_EyeOcclusion", "M_LacrimalFluid"}

needs_source = pytest.mark.skipif(
    SOURCE_DIR is None, reason=f"set {SOURCE_ENV}=DIR, the ICT-FaceKit Light source folder "
    f"(datasets/README.md), to compare the asset with its source")


def _derive_module():
    """``datasets/derive_face_model.py`` imported as a module (it is a script, not a
    package module)."""
    spec = importlib.util.spec_from_file_location(
        "derive_face_model", REPO / "datasets" / "derive_face_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def source():
    npz_path = SOURCE_DIR / "ict_face_model_light.npz"
    assert npz_path.is_file(), f"{SOURCE_ENV}={SOURCE_DIR} holds no ict_face_model_light.npz"
    with np.load(npz_path, allow_pickle=False) as npz:
        yield {k: npz[k] for k in npz.files}


# ------------------------------------------------------------------ the asset

def test_asset_size_within_budget():
    assert ASSET.stat().st_size <= 10 * 1024 * 1024


def test_asset_loads_without_pickle():
    with np.load(ASSET, allow_pickle=False) as npz:
        for key in npz.files:
            assert npz[key].dtype != object, key


def test_kept_regions_and_materials(model):
    assert model.region_names == KEPT_REGIONS
    assert not OVERLAY_MATERIALS & set(model.material_names)
    # Every vertex lies in a kept region and is used by a kept triangle.
    assert set(np.unique(model.vertex_region)) == set(range(len(KEPT_REGIONS)))
    used = np.zeros(model.n_vertices, bool)
    used[model.triangles.ravel()] = True
    assert used.all()
    for name in KEPT_REGIONS:
        assert model.region_mask(name).any(), name


def test_indices_valid(model):
    v, t = model.n_vertices, model.n_triangles
    assert model.neutral.shape == (v, 3) and model.neutral.dtype == np.float32
    assert model.triangles.shape == (t, 3) and model.triangles.dtype == np.int64
    assert model.triangles.min() >= 0 and model.triangles.max() < v
    # No degenerate triangles (repeated vertex).
    tri = model.triangles
    assert ((tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])).all()
    assert model.triangle_uvs.shape == (t, 3)
    assert model.triangle_uvs.min() >= 0 and model.triangle_uvs.max() < len(model.uvs)
    assert len(np.unique(model.triangle_uvs)) == len(model.uvs)  # no unused uvs
    assert model.triangle_material.shape == (t,)
    assert set(np.unique(model.triangle_material)) <= set(range(len(model.material_names)))
    assert model.vertex_region.shape == (v,)


def test_sizes(model):
    assert model.n_identity == len(model.identity_names) == 100
    assert model.n_expression == len(model.expression_names) == 57
    assert model.n_main_expressions == 53
    assert "jawOpen" in model.expression_names[:53]
    assert model.identity_basis.shape == (100, model.n_vertices * 3)
    assert model.expression_basis.shape == (57, model.n_vertices * 3)
    assert model.identity_basis.dtype == model.expression_basis.dtype == np.float32


def test_arrays_are_read_only(model):
    with pytest.raises(ValueError):
        model.neutral[0, 0] = 1.0
    with pytest.raises(ValueError):
        model.identity_basis[0, 0] = 1.0


def test_landmarks_are_face_vertices_in_ibug_order(model):
    lm = model.landmarks68
    assert lm.shape == (68,) and lm.dtype == np.int64 and len(np.unique(lm)) == 68
    assert model.region_mask("face")[lm].all()
    p = model.landmarks(model.neutral)
    assert p.shape == (68, 3)
    # Nose tip (30) is the foremost of all 68 points; the nose bridge and tip lie on x = 0.
    assert np.argmax(p[:, 2]) == 30
    assert np.abs(p[27:31, 0]).max() < 1e-3
    # Bridge 27 -> 30 descends; chin (8) is the lowest jaw point.
    assert (np.diff(p[27:31, 1]) < 0).all()
    assert np.argmin(p[0:17, 1]) == 8
    # Mirror pairs: subject's right (iBUG 36, 39, 0, 48) at -x, left (45, 42, 16, 54) at +x.
    for right, left in ((36, 45), (39, 42), (0, 16), (48, 54), (31, 35)):
        assert p[right, 0] < -0.5 and p[left, 0] > 0.5
        assert abs(p[right, 0] + p[left, 0]) < 0.01, (right, left)
        np.testing.assert_allclose(p[right, 1:], p[left, 1:], atol=0.01)
    # Eyes above the nose tip, mouth below it.
    assert p[36:48, 1].min() > p[30, 1] > p[48:68, 1].max()


def test_region_and_material_masks(model):
    face = model.region_mask("face")
    assert face.dtype == bool and face.shape == (model.n_vertices,)
    both = model.region_mask("eyeball_L", "eyeball_R")
    assert both.sum() == model.region_mask("eyeball_L").sum() + model.region_mask("eyeball_R").sum()
    iris = model.material_vertices("M_IrisLeft")
    assert iris.any() and (iris <= model.region_mask("eyeball_L")).all()
    with pytest.raises(InputError, match="eyelashes_L"):
        model.region_mask("eyelashes_L")
    with pytest.raises(InputError):
        model.region_mask()
    with pytest.raises(InputError):
        model.material_vertices("M_EyeLashes")


# ------------------------------------------------------- against the source

@needs_source
def test_geometry_matches_source(model, source):
    idx = model.source_vertex_index
    np.testing.assert_array_equal(model.neutral, source["neutral_vertices"][idx])
    np.testing.assert_array_equal(idx[model.landmarks68], source["landmarks68"])
    src_regions = [str(n) for n in source["region_names"]]
    np.testing.assert_array_equal(
        np.array(model.region_names)[model.vertex_region],
        np.array(src_regions)[source["vertex_region"][idx]])
    # Triangles map back onto source triangles (same corners, same order).
    src_tris = {tuple(t) for t in source["triangles"].tolist()}
    assert all(tuple(t) in src_tris for t in idx[model.triangles].tolist())


@needs_source
@pytest.mark.parametrize("kind, modes", [("identity", (0, 1, 3, 50, 99)),
                                         ("expression", (0, 26, 28, 53, 56))])
def test_deltas_match_source(model, source, kind, modes):
    basis = getattr(model, f"{kind}_basis")
    max_error = getattr(model, f"{kind}_max_error")
    assert 0 < max_error <= 0.0002  # cm, what derive_face_model.py measured
    idx = model.source_vertex_index
    for k in modes:
        expected = source[f"{kind}_deltas"][k][idx].astype(np.float32)
        got = basis[k].reshape(-1, 3)
        assert np.abs(got - expected).max() <= max_error + 1e-6, (kind, k)


def _npz_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _stable_text(path: Path) -> str:
    """ATTRIBUTION.md without the figures that depend on the zlib build (compressed
    size) or on floating-point summation order (the shading statistics)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"Asset size: .*", "", text)
    return re.sub(r"Effect on shading:.*?at most\.", "", text, flags=re.S)


@needs_source
def test_derivation_is_deterministic_and_reproduces_the_asset(tmp_path):
    """Two runs give identical bytes, and the same arrays as the committed asset."""
    derive = _derive_module()
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert derive.main(["--source", str(SOURCE_DIR), "--out", str(out)]) == 0
    for name in ("face_model.npz", "LICENSE", "ATTRIBUTION.md"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert _npz_members(runs[0] / "face_model.npz") == _npz_members(ASSET)
    assert _stable_text(runs[0] / "ATTRIBUTION.md") == _stable_text(ASSET_DIR / "ATTRIBUTION.md")
    assert (ASSET_DIR / "LICENSE").read_bytes() == (SOURCE_DIR / "LICENSE").read_bytes()


# ------------------------------------------------ derivation on a small source

TINY_COMMIT = "0123456789abcdef0123456789abcdef01234567"
#: Source order differs from KEPT_REGIONS on purpose: the output follows KEPT_REGIONS.
TINY_REGIONS = ("eyelashes_L", *KEPT_REGIONS[::-1],
                *(r for r in OVERLAY_REGIONS if r != "eyelashes_L"))
TINY_MATERIALS = ("M_Skin", "M_EyeLashes", "M_Teeth", "M_EyeBlend", "M_EyeOcclusion",
                  "M_LacrimalFluid", "M_IrisLeft")


def _tiny_source(folder: Path) -> dict[str, np.ndarray]:
    """Write a small ICT-FaceKit Light source folder (datasets/README.md's format) and
    return its arrays.

    A 16 x 16 grid of vertices on a bumpy surface, two triangles per cell. Vertex regions:
    a 3 x 3 eyelash patch (dropped with every triangle touching it), a teeth row (kept),
    the rest face; one extra face vertex that no triangle uses (dropped as unused). Every
    7th triangle of the top four rows of cells is of an overlay material (dropped), every
    5th triangle of another kept material.
    """
    rng = np.random.default_rng(0)
    n = 16
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    grid = np.stack([x, y, np.sin(x / 3) * np.cos(y / 4)], axis=-1).reshape(-1, 3)
    vertices = np.concatenate([grid, [[20.0, 20.0, 0.0]]]).astype(np.float32)
    region = np.full((n, n), TINY_REGIONS.index("face"))
    region[1:4, 6:9] = TINY_REGIONS.index("eyelashes_L")
    region[14, :] = TINY_REGIONS.index("teeth")
    vertex_region = np.concatenate([region.ravel(), [TINY_REGIONS.index("face")]])
    triangles = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            triangles += [(a, b, e), (a, e, d)]
    triangles = np.array(triangles, dtype=np.int32)
    material = np.zeros(len(triangles), dtype=np.int16)
    material[::5] = TINY_MATERIALS.index("M_IrisLeft")
    material[:120:7] = TINY_MATERIALS.index("M_EyeBlend")  # in the cells of rows 0-3
    # Landmarks: 68 face vertices of rows 5-9, which no dropped triangle touches.
    landmarks = np.array([r * n + c for r in range(5, 10) for c in range(n)][:68], np.int32)
    uvs = rng.uniform(0, 1, (len(vertices) + 5, 2)).astype(np.float32)  # 5 never used
    arrays = {
        "neutral_vertices": vertices,
        "identity_deltas": rng.normal(0, 0.5, (4, len(vertices), 3)).astype(np.float16),
        "expression_deltas": rng.normal(0, 1.0, (5, len(vertices), 3)).astype(np.float16),
        "identity_names": np.array([f"identity{k}" for k in range(4)]),
        "expression_names": np.array(["jawOpen", "eyeBlink_L", "mouthSmile_L",
                                      "cheekRaiser_L", "PupilDilate_L"]),
        "n_main_expressions": np.array(3, dtype=np.int32),
        "triangles": triangles,
        "triangle_uvs": triangles.copy(),
        "uvs": uvs,
        "triangle_material": material,
        "material_names": np.array(TINY_MATERIALS),
        "vertex_region": vertex_region.astype(np.int16),
        "region_names": np.array(TINY_REGIONS),
        "landmarks68": landmarks,
    }
    folder.mkdir(parents=True)
    np.savez(folder / "ict_face_model_light.npz", **arrays)
    (folder / "FORMAT.md").write_text(
        f"Source: github.com/ICT-VGL/ICT-FaceKit, commit {TINY_COMMIT},\nfolder FaceXModel/.\n")
    (folder / "LICENSE").write_text("MIT License\n\nCopyright (c) a test\n")
    (folder / "CREDITS.md").write_text("# Tiny - Credits\n## Core\n* A. Tester\n")
    return arrays


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(source arrays, source folder, [two output folders])``: the derivation run twice."""
    root = tmp_path_factory.mktemp("tiny_ict")
    src = _tiny_source(root / "source")
    derive = _derive_module()
    runs = [root / "a", root / "b"]
    for out in runs:
        assert derive.main(["--source", str(root / "source"), "--out", str(out)]) == 0
    return src, root / "source", runs


def test_derivation_keeps_the_rendered_geometry_in_source_order(tiny):
    src, _, runs = tiny
    model = FaceModel.load(runs[0] / "face_model.npz")
    regions = np.array(TINY_REGIONS)[src["vertex_region"]]
    materials = np.array(TINY_MATERIALS)[src["triangle_material"]]
    kept_tri = (np.isin(regions[src["triangles"]], KEPT_REGIONS).all(axis=1)
                & ~np.isin(materials, list(OVERLAY_MATERIALS)))
    assert 0 < kept_tri.sum() < len(kept_tri) - 40  # the case drops plenty

    # Vertices: exactly those of kept triangles (so no eyelash and no unused one), in order.
    idx = model.source_vertex_index
    np.testing.assert_array_equal(idx, np.unique(src["triangles"][kept_tri]))
    assert len(src["neutral_vertices"]) - 1 not in idx
    np.testing.assert_array_equal(model.neutral, src["neutral_vertices"][idx])
    # Triangles, their materials and UVs map back onto the kept source triangles, in order.
    np.testing.assert_array_equal(idx[model.triangles], src["triangles"][kept_tri])
    assert model.material_names == ("M_Skin", "M_Teeth", "M_IrisLeft")
    np.testing.assert_array_equal(np.array(model.material_names)[model.triangle_material],
                                  materials[kept_tri])
    np.testing.assert_array_equal(model.uvs[model.triangle_uvs],
                                  src["uvs"][src["triangle_uvs"][kept_tri]])
    assert len(np.unique(model.triangle_uvs)) == len(model.uvs)
    # Regions renamed to KEPT_REGIONS' order; landmarks follow their vertices.
    assert model.region_names == KEPT_REGIONS
    np.testing.assert_array_equal(np.array(model.region_names)[model.vertex_region],
                                  regions[idx])
    np.testing.assert_array_equal(idx[model.landmarks68], src["landmarks68"])
    assert model.expression_names == tuple(src["expression_names"])
    assert model.n_main_expressions == 3


def test_derivation_quantises_deltas_within_half_a_step(tiny):
    src, _, runs = tiny
    model = FaceModel.load(runs[0] / "face_model.npz")
    idx = model.source_vertex_index
    for kind in ("identity", "expression"):
        expected = src[f"{kind}_deltas"][:, idx].astype(np.float32).reshape(-1, len(idx) * 3)
        error = np.abs(getattr(model, f"{kind}_basis") - expected).max()
        recorded = getattr(model, f"{kind}_max_error")
        # Half the default 0.00025 cm step, plus float32 rounding of values of a few cm.
        assert 0 < error <= 0.000125 + 1e-6
        assert recorded == pytest.approx(error, rel=1e-6)


def test_derivation_is_reproducible_and_credits_the_source(tiny):
    _, source, runs = tiny
    for name in ("face_model.npz", "LICENSE", "ATTRIBUTION.md"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert (runs[0] / "LICENSE").read_bytes() == (source / "LICENSE").read_bytes()
    attribution = (runs[0] / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert f"https://github.com/ICT-VGL/ICT-FaceKit, commit `{TINY_COMMIT}`" in attribution
    assert "### Tiny - Credits" in attribution and "* A. Tester" in attribution
    with np.load(runs[0] / "face_model.npz", allow_pickle=False) as npz:
        assert npz["identity_q"].dtype == np.int16


def test_derivation_needs_a_complete_source(tmp_path, capsys):
    derive = _derive_module()
    with pytest.raises(SystemExit) as exit_info:
        derive.main([])  # --source is required: nothing outside the repository is assumed
    assert exit_info.value.code == 2
    assert "--source" in capsys.readouterr().err
    (tmp_path / "LICENSE").write_text("MIT")
    assert derive.main(["--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} lacks ict_face_model_light.npz, FORMAT.md, CREDITS.md" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ vertices()

def test_vertices_neutral(model):
    for v in (model.vertices(), model.vertices(np.zeros(100), np.zeros(57)),
              model.vertices([], [])):
        assert v.shape == (model.n_vertices, 3) and v.dtype == np.float32
        np.testing.assert_array_equal(v, model.neutral)
    v = model.vertices()
    v[0] = 99.0                            # a fresh array, not a view of the model
    assert model.neutral[0, 0] != 99.0


def test_vertices_is_the_weighted_sum(model):
    rng = np.random.default_rng(3)
    w_id, w_ex = rng.standard_normal(100), rng.uniform(0, 1, 57)
    expected = model.neutral.astype(np.float64).copy()
    for k in range(100):
        expected += w_id[k] * model.identity_basis[k].reshape(-1, 3)
    for j in range(57):
        expected += w_ex[j] * model.expression_basis[j].reshape(-1, 3)
    np.testing.assert_allclose(model.vertices(w_id, w_ex), expected, atol=1e-4)

    # Shorter arrays weight the leading modes.
    expected = (model.neutral + 1.5 * model.identity_basis[0].reshape(-1, 3)
                - 0.5 * model.identity_basis[1].reshape(-1, 3)
                + 0.7 * model.expression_basis[0].reshape(-1, 3))
    np.testing.assert_allclose(model.vertices([1.5, -0.5], [0.7]), expected, atol=1e-5)


def test_vertices_expression_by_name(model):
    j = model.expression_names.index("jawOpen")
    w = np.zeros(model.n_expression)
    w[j] = 0.6
    np.testing.assert_array_equal(model.vertices(expression={"jawOpen": 0.6}),
                                  model.vertices(expression=w))
    # The jaw opens: the chin (landmark 8) moves down.
    chin = model.landmarks(model.vertices(expression={"jawOpen": 1.0}))[8]
    assert chin[1] < model.neutral[model.landmarks68[8], 1] - 1.0


@pytest.mark.parametrize("identity, expression, match", [
    (np.zeros(101), None, "101 identity weights"),
    (None, np.zeros(58), "58 expression weights"),
    (np.zeros((2, 100)), None, "1-D"),
    ([np.nan], None, "NaN"),
    (None, {"notAShape": 1.0}, "unknown expression"),
])
def test_vertices_bad_weights(model, identity, expression, match):
    with pytest.raises(InputError, match=match):
        model.vertices(identity, expression)


def test_landmarks_bad_shape(model):
    with pytest.raises(InputError):
        model.landmarks(np.zeros((10, 3)))
    batch = np.stack([model.neutral, model.neutral + 1])
    assert model.landmarks(batch).shape == (2, 68, 3)


# -------------------------------------------------------------------- loading

def test_load_is_cached(model):
    assert FaceModel.load() is model
    by_path = FaceModel.load(ASSET)
    assert FaceModel.load(str(ASSET)) is by_path
    np.testing.assert_array_equal(by_path.neutral, model.neutral)


def test_load_missing_or_corrupt(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(CrossmodalError, match="nowhere.npz.*reinstall"):
        FaceModel.load(missing)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(CrossmodalError, match="garbage.npz: not a valid face model"):
        FaceModel.load(garbage)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(ASSET.read_bytes()[: 3_000_000])
    with pytest.raises(CrossmodalError, match="truncated.npz"):
        FaceModel.load(truncated)

    partial = tmp_path / "partial.npz"
    with np.load(ASSET, allow_pickle=False) as npz:
        np.savez_compressed(partial, **{k: npz[k] for k in npz.files if k != "triangles"})
    with pytest.raises(CrossmodalError, match="missing arrays triangles"):
        FaceModel.load(partial)

    bad_index = tmp_path / "bad_index.npz"
    with np.load(ASSET, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["landmarks68"] = arrays["landmarks68"].copy()
    arrays["landmarks68"][0] = 10**6
    np.savez_compressed(bad_index, **arrays)
    with pytest.raises(CrossmodalError, match="landmarks68"):
        FaceModel.load(bad_index)


def test_missing_packaged_asset_says_reinstall(monkeypatch, tmp_path):
    import crossmodal.synth.face_model as fm
    monkeypatch.setattr(fm, "ASSET_RESOURCE", "assets/ict_face_light/absent.npz")
    fm._load_cached.cache_clear()
    try:
        with pytest.raises(CrossmodalError, match="absent.npz.*reinstall crossmodal"):
            FaceModel.load()
    finally:
        fm._load_cached.cache_clear()


def test_wheel_contains_asset_and_licence(tmp_path):
    """The asset, its LICENSE and ATTRIBUTION.md ship in the wheel (setup.cfg
    package_data). Built from a copy so the checkout gets no build/ folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "crossmodal", src / "crossmodal",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("crossmodal-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        prefix = "crossmodal/assets/ict_face_light/"
        for name in ("face_model.npz", "LICENSE", "ATTRIBUTION.md"):
            assert prefix + name in names, name
        assert zf.read(prefix + "face_model.npz") == ASSET.read_bytes()
