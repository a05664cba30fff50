"""Tests of the packaged ICT-FaceKit Light asset and crossmodal.synth.FaceModel."""

from __future__ import annotations

import importlib.util
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
SOURCE_DIR = REPO / ".." / "shared" / "data" / "ict_facekit"
SOURCE_NPZ = SOURCE_DIR / "ict_face_model_light.npz"

KEPT_REGIONS = ("face", "head_neck", "mouth_socket", "eye_socket_L", "eye_socket_R",
                "gums_tongue", "teeth", "eyeball_L", "eyeball_R")
OVERLAY_MATERIALS = {"M_EyeBlend", "M_EyeLashes", "M_EyeOcclusion", "M_LacrimalFluid"}

needs_source = pytest.mark.skipif(not SOURCE_NPZ.is_file(),
                                  reason=f"ICT-FaceKit source not at {SOURCE_DIR}")


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def source():
    with np.load(SOURCE_NPZ, allow_pickle=False) as npz:
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
    spec = importlib.util.spec_from_file_location(
        "derive_face_model", REPO / "datasets" / "derive_face_model.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert derive.main(["--source", str(SOURCE_DIR), "--out", str(out)]) == 0
    for name in ("face_model.npz", "LICENSE", "ATTRIBUTION.md"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert _npz_members(runs[0] / "face_model.npz") == _npz_members(ASSET)
    assert _stable_text(runs[0] / "ATTRIBUTION.md") == _stable_text(ASSET_DIR / "ATTRIBUTION.md")
    assert (ASSET_DIR / "LICENSE").read_bytes() == (SOURCE_DIR / "LICENSE").read_bytes()


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
        np.savez(partial, **{k: npz[k] for k in npz.files if k != "triangles"})
    with pytest.raises(CrossmodalError, match="missing arrays triangles"):
        FaceModel.load(partial)

    bad_index = tmp_path / "bad_index.npz"
    with np.load(ASSET, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["landmarks68"] = arrays["landmarks68"].copy()
    arrays["landmarks68"][0] = 10**6
    np.savez(bad_index, **arrays)
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
