"""The ICT-FaceKit Light face model packaged with crossmodal.

A mesh is ``neutral + identity @ identity_basis + expression @ expression_basis``, in
centimetres, +y up, +z towards the viewer. The packaged asset
(``crossmodal/assets/ict_face_light/face_model.npz``, derived by
``datasets/derive_face_model.py``; MIT licence and attribution next to it) keeps the
regions rendered into normal maps (face, head and neck, mouth socket, eye sockets,
gums and tongue, teeth, eyeballs), all 100 identity modes (deltas at +1 sigma, so
identity weights are N(0, 1)) and the 57 expression blendshapes (53 ARKit-style main
ones, then cheekRaiser_L/R and PupilDilate_L/R, weights in [0, 1]).

>>> model = FaceModel.load()
>>> v = model.vertices(identity=rng.standard_normal(model.n_identity),
...                    expression={"jawOpen": 0.4})
>>> model.landmarks(v)          # (68, 3), iBUG 300-W order
"""

from __future__ import annotations

from collections.abc import Sequence

import functools
import io
import zipfile
import zlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import CrossmodalError, InputError

__all__ = ["FaceModel", "ASSET_RESOURCE", "FORMAT_VERSION"]

ASSET_RESOURCE = "assets/ict_face_light/face_model.npz"
FORMAT_VERSION = 1
_REQUIRED = (
    "format_version", "neutral_vertices", "triangles", "uvs", "triangle_uvs",
    "triangle_material", "material_names", "vertex_region", "region_names", "landmarks68",
    "identity_names", "expression_names", "n_main_expressions", "identity_q",
    "identity_scale", "expression_q", "expression_scale",
)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _basis(q: np.ndarray, scale: np.ndarray, n_vertices: int) -> np.ndarray:
    """``(K, 3, V)`` integers and ``(K, 3)`` scales -> ``(K, V*3)`` float32 deltas with
    the ``(x, y, z)`` of each vertex adjacent, matching ``neutral.reshape(-1)``."""
    if q.ndim != 3 or q.shape[1:] != (3, n_vertices) or scale.shape != (q.shape[0], 3):
        raise ValueError(f"delta arrays of shapes {q.shape} and {scale.shape} do not fit "
                         f"{n_vertices} vertices")
    deltas = q.astype(np.float32) * scale.astype(np.float32)[:, :, None]
    return deltas.transpose(0, 2, 1).reshape(q.shape[0], n_vertices * 3)


class FaceModel:
    """A linear face model: neutral mesh, identity modes and expression blendshapes.

    Load it with :meth:`FaceModel.load` (cached per path; the arrays are read-only and
    shared, copy before modifying). Attributes:

    - ``neutral`` ``(V, 3)`` float32, cm; ``triangles`` ``(T, 3)`` int64;
      ``uvs`` ``(U, 2)`` float32 and ``triangle_uvs`` ``(T, 3)`` int64;
    - ``vertex_region`` ``(V,)`` int64 indexing ``region_names``;
      ``triangle_material`` ``(T,)`` int64 indexing ``material_names``;
    - ``landmarks68`` ``(68,)`` int64 vertex indices of the iBUG 300-W landmarks;
    - ``identity_names``, ``expression_names``; ``n_identity``, ``n_expression``,
      ``n_main_expressions`` (the first 53 expressions are the toolkit's main list);
    - ``identity_basis`` ``(n_identity, V*3)`` and ``expression_basis``
      ``(n_expression, V*3)`` float32 deltas (cm; identity at +1 sigma);
    - ``identity_max_error``, ``expression_max_error``: the largest quantisation error
      of the stored deltas against the float16 source, cm (0 if unknown);
    - ``source_vertex_index`` ``(V,)`` int64: vertex index in the full ICT mesh.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], source: str = "<memory>"):
        self.source = source
        neutral = np.asarray(arrays["neutral_vertices"], dtype=np.float32)
        if neutral.ndim != 2 or neutral.shape[1] != 3:
            raise ValueError(f"neutral_vertices has shape {neutral.shape}, expected (V, 3)")
        n_vertices = neutral.shape[0]
        self.neutral = _readonly(neutral)
        self.triangles = _readonly(np.asarray(arrays["triangles"], dtype=np.int64))
        self.uvs = _readonly(np.asarray(arrays["uvs"], dtype=np.float32))
        self.triangle_uvs = _readonly(np.asarray(arrays["triangle_uvs"], dtype=np.int64))
        self.vertex_region = _readonly(np.asarray(arrays["vertex_region"], dtype=np.int64))
        self.region_names = tuple(str(n) for n in arrays["region_names"])
        self.triangle_material = _readonly(
            np.asarray(arrays["triangle_material"], dtype=np.int64))
        self.material_names = tuple(str(n) for n in arrays["material_names"])
        self.landmarks68 = _readonly(np.asarray(arrays["landmarks68"], dtype=np.int64))
        self.identity_names = tuple(str(n) for n in arrays["identity_names"])
        self.expression_names = tuple(str(n) for n in arrays["expression_names"])
        self.n_main_expressions = int(arrays["n_main_expressions"])
        self.identity_basis = _readonly(
            _basis(arrays["identity_q"], arrays["identity_scale"], n_vertices))
        self.expression_basis = _readonly(
            _basis(arrays["expression_q"], arrays["expression_scale"], n_vertices))
        self.identity_max_error = float(arrays.get("identity_max_error", 0.0))
        self.expression_max_error = float(arrays.get("expression_max_error", 0.0))
        src_index = arrays.get("source_vertex_index", np.arange(n_vertices))
        self.source_vertex_index = _readonly(np.asarray(src_index, dtype=np.int64))
        self._check()

    def _check(self) -> None:
        """Consistency of the arrays (a corrupt or foreign file fails here)."""
        v, t = self.n_vertices, self.n_triangles

        def indexes(a: np.ndarray, shape: tuple[int, ...], n: int) -> bool:
            return a.shape == shape and a.size > 0 and a.min() >= 0 and a.max() < n

        problems = []
        if not indexes(self.triangles, (t, 3), v):
            problems.append("triangles are not (T, 3) vertex indices")
        if self.uvs.ndim != 2 or self.uvs.shape[1] != 2 or not indexes(
                self.triangle_uvs, (t, 3), len(self.uvs)):
            problems.append("triangle_uvs/uvs do not match the triangles")
        if not indexes(self.vertex_region, (v,), len(self.region_names)):
            problems.append("vertex_region does not match the vertices/region_names")
        if not indexes(self.triangle_material, (t,), len(self.material_names)):
            problems.append("triangle_material does not match the triangles/material_names")
        if not indexes(self.landmarks68, (68,), v):
            problems.append("landmarks68 is not 68 vertex indices")
        if self.source_vertex_index.shape != (v,):
            problems.append("source_vertex_index does not match the vertices")
        if len(self.identity_names) != self.n_identity:
            problems.append("identity_names does not match the identity deltas")
        if len(self.expression_names) != self.n_expression:
            problems.append("expression_names does not match the expression deltas")
        if not (np.isfinite(self.neutral).all() and np.isfinite(self.identity_basis).all()
                and np.isfinite(self.expression_basis).all()):
            problems.append("non-finite vertices or deltas")
        if problems:
            raise ValueError("; ".join(problems))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None) -> FaceModel:
        """The model in ``path`` (default: the packaged ICT-FaceKit Light asset).

        Cached per path: repeated calls (dataset workers) return the same object.
        A missing or corrupt file raises :class:`~crossmodal.errors.CrossmodalError`
        naming it.
        """
        key = None if path is None else str(Path(path).expanduser().resolve())
        return _load_cached(key)

    @staticmethod
    def clear_cache() -> None:
        """Forget cached models (after regenerating an asset in place)."""
        _load_cached.cache_clear()

    # --------------------------------------------------------------- properties
    @property
    def n_vertices(self) -> int:
        return int(self.neutral.shape[0])

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    def __repr__(self) -> str:
        return (f"FaceModel({self.n_vertices} vertices, {self.n_triangles} triangles, "
                f"{self.n_identity} identity modes, {self.n_expression} expressions, "
                f"source={self.source!r})")

    # ------------------------------------------------------------------ meshes
    def _weights(self, weights, names: tuple[str, ...], what: str) -> np.ndarray:
        n = len(names)
        if isinstance(weights, Mapping):
            out = np.zeros(n, dtype=np.float32)
            index = {name: i for i, name in enumerate(names)}
            for name, value in weights.items():
                if name not in index:
                    raise InputError(f"unknown {what} {name!r}; known: {', '.join(names)}")
                out[index[name]] = value
            weights = out
        w = np.asarray(weights, dtype=np.float32)
        if w.ndim != 1:
            raise InputError(f"{what} weights must be a 1-D array, got shape {w.shape}")
        if w.shape[0] > n:
            raise InputError(f"{w.shape[0]} {what} weights given, the model has {n} "
                             f"(pass at most {n}; fewer weight the leading ones)")
        if not np.isfinite(w).all():
            raise InputError(f"{what} weights contain NaN or infinity")
        return w

    def vertices(self, identity=None, expression=None) -> np.ndarray:
        """``(V, 3)`` float32 vertices (cm) of a face.

        ``identity``: up to ``n_identity`` weights (in sigmas) of the leading identity
        modes; ``expression``: up to ``n_expression`` blendshape weights, or a mapping
        ``{name: weight}``. ``None`` or shorter arrays leave the other modes at 0.
        """
        flat = self.neutral.reshape(-1).copy()
        for weights, basis, names, what in (
                (identity, self.identity_basis, self.identity_names, "identity"),
                (expression, self.expression_basis, self.expression_names, "expression")):
            if weights is None:
                continue
            w = self._weights(weights, names, what)
            if w.shape[0]:
                flat += w @ basis[: w.shape[0]]
        return flat.reshape(self.n_vertices, 3)

    def landmarks(self, vertices: np.ndarray) -> np.ndarray:
        """The 68 iBUG landmarks of ``vertices`` ``(..., V, 3)`` -> ``(..., 68, 3)``."""
        v = np.asarray(vertices)
        if v.ndim < 2 or v.shape[-2:] != (self.n_vertices, 3):
            raise InputError(f"vertices of shape {v.shape}; expected (..., "
                             f"{self.n_vertices}, 3) from FaceModel.vertices")
        return v[..., self.landmarks68, :]

    # ------------------------------------------------------------------- masks
    @staticmethod
    def _indices(names: tuple[str, ...], known: Sequence[str], what: str) -> list[int]:
        """Indices of ``names`` in ``known``; none or an unknown name is an InputError."""
        if not names:
            raise InputError(f"name at least one {what}: {', '.join(known)}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"unknown {what} {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(known)}")
        return [list(known).index(n) for n in names]

    def region_mask(self, *names: str) -> np.ndarray:
        """Boolean ``(V,)`` mask of the vertices in any of the named regions."""
        return np.isin(self.vertex_region, self._indices(names, self.region_names, "region"))

    def material_vertices(self, *names: str) -> np.ndarray:
        """Boolean ``(V,)`` mask of the vertices used by triangles of the named materials."""
        ids = self._indices(names, self.material_names, "material")
        mask = np.zeros(self.n_vertices, dtype=bool)
        mask[self.triangles[np.isin(self.triangle_material, ids)].ravel()] = True
        return mask


def _reinstall_hint(key: str | None) -> str:
    if key is None:
        return ("the packaged face model is missing or damaged; reinstall crossmodal "
                "(pip install --force-reinstall crossmodal, or pip install -e . in a "
                "checkout) or regenerate it with datasets/derive_face_model.py")
    return ("pass a face_model.npz written by datasets/derive_face_model.py, or omit the "
            "path to use the packaged model (reinstall crossmodal if that is damaged)")


@functools.lru_cache(maxsize=4)
def _load_cached(key: str | None) -> FaceModel:
    if key is None:
        resource = resources.files("crossmodal").joinpath(ASSET_RESOURCE)
        name = str(resource)
    else:
        resource = Path(key)
        name = key
    try:
        data = resource.read_bytes()
    except OSError as exc:
        raise CrossmodalError(f"{name}: cannot read the face model "
                              f"({exc.strerror or exc}); {_reinstall_hint(key)}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED if k not in npz.files]
            if missing:
                raise ValueError(f"missing arrays {', '.join(missing)}")
            arrays = {k: npz[k] for k in npz.files}
        version = int(arrays["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(f"format version {version}, this crossmodal reads "
                             f"{FORMAT_VERSION}")
        return FaceModel(arrays, source=name)
    except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise CrossmodalError(f"{name}: not a valid face model ({exc}); "
                              f"{_reinstall_hint(key)}") from None
