"""Raw head scans read into one shape, whatever the format: :func:`read_scan`.

A :class:`Scan` is a triangle mesh with its appearance: per-vertex colours, or UVs and a
texture image, or neither. Formats:

- **OBJ** (our reader): ``v x y z [r g b]`` (colours in [0, 1], or 0-255 when any exceeds
  1), ``vt``, ``f`` with ``v``, ``v/t``, ``v//n``, ``v/t/n`` corners (negative indices count
  back), polygons fanned into triangles; the ``map_Kd`` of the ``.mtl`` named by
  ``mtllib`` is the texture (the material used by the most faces, when several have one:
  a scan has one texture map).
- **PLY**, **GLB / glTF** (trimesh): vertex colours or the UVs and the base-colour
  (baked) texture; a glTF scene's meshes are merged with their node transforms.
- **VRML 2.0** ``.wrl`` (our reader, :func:`_read_wrl`): every ``Shape`` whose geometry
  is an ``IndexedFaceSet`` (``coord``, ``coordIndex``, optional ``color`` with
  ``colorPerVertex``/``colorIndex``, ``texCoord`` + ``texCoordIndex``, ``ccw``), with the
  ``url`` of its ``ImageTexture``; ``Transform`` nodes (translation, rotation, scale,
  centre) are applied and several shapes merged. ``DEF``/``USE`` are resolved,
  ``PROTO``s and ``ROUTE``s skipped. VRML 1.0's ``Coordinate3``/``TextureCoordinate2``/
  ``Texture2`` are read the same way (geometry and texture only).

Merging shapes of different appearance keeps one: a texture when every shape has texture
coordinates into one image, else vertex colours (grey where a shape has none), else none.

An optional sidecar ``<stem>.landmarks.txt`` (68 rows ``x y z`` in the coordinates the
reader returns) gives the scan's 3D landmarks: :func:`read_landmarks`.

Anything unreadable, corrupt or empty raises a one-line :class:`InputError` naming the file.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..errors import InputError
from ..fileutil import read_text, require_file
from ..render.raycast import DEFAULT_ALBEDO

__all__ = ["SCAN_SUFFIXES", "Scan", "landmarks_path", "read_landmarks", "read_scan"]

log = logging.getLogger(__name__)

#: Suffixes of the scan files a recipe picks up (lower case).
SCAN_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".wrl")
#: The sidecar of 3D landmarks beside a scan: ``<stem>.landmarks.txt``.
LANDMARKS_SUFFIX = ".landmarks.txt"


@dataclass
class Scan:
    """A head scan.

    Attributes:
        vertices: float64 ``(V, 3)`` positions, in the file's units and frame.
        triangles: int64 ``(T, 3)`` vertex indices.
        vertex_colors: float32 ``(V, 3)`` albedo in [0, 1], or None.
        uvs: float64 ``(U, 2)`` texture coordinates (v up), or None.
        triangle_uvs: int64 ``(T, 3)`` indices into ``uvs`` (None with ``uvs``: per vertex).
        texture: float32 ``(Ht, Wt, 3)`` RGB in [0, 1], or None.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    vertex_colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    triangle_uvs: np.ndarray | None = None
    texture: np.ndarray | None = None

    def appearance(self) -> dict[str, np.ndarray]:
        """The keyword arguments of :func:`crossmodal.render.render` for the albedo."""
        if self.texture is not None:
            return {"texture": self.texture, "uvs": self.uvs, "triangle_uvs": self.triangle_uvs}
        if self.vertex_colors is not None:
            return {"vertex_colors": self.vertex_colors}
        return {}


def read_scan(path: str | Path, *, appearance: bool = True) -> Scan:
    """Read a scan file (format by suffix, module docstring).

    Args:
        appearance: also read colours and texture (False: geometry only, faster).

    Raises:
        InputError: one line naming the file: missing, unreadable, corrupt, empty, or
            indices out of range.
    """
    path = Path(path)
    require_file(path, "scan file")
    suffix = path.suffix.lower()
    readers = {".obj": _read_obj, ".wrl": _read_wrl, ".ply": _read_trimesh,
               ".glb": _read_trimesh, ".gltf": _read_trimesh}
    if suffix not in readers:
        raise InputError(f"{path}: not a scan format this reads (suffixes: "
                         f"{', '.join(SCAN_SUFFIXES)})")
    try:
        scan = readers[suffix](path, appearance)
    except InputError as err:
        message = str(err)
        raise InputError(message if str(path) in message else f"{path}: {message}") from None
    except (ValueError, IndexError, KeyError, TypeError, OSError, RecursionError) as err:
        # Parsers (ours and trimesh's) fail in many ways on a corrupt file.
        raise InputError(f"{path}: cannot read this scan ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]}); is the file complete?") from None
    return _checked(scan, path)


def landmarks_path(scan: Path) -> Path:
    """Where the 3D landmarks of ``scan`` are, if it has any."""
    return scan.with_name(scan.name[: -len(scan.suffix)] + LANDMARKS_SUFFIX)


def read_landmarks(path: str | Path) -> np.ndarray:
    """The 68 ``(x, y, z)`` rows of a landmarks sidecar: float64 ``(68, 3)``.

    Raises:
        InputError: not 68 rows of 3 finite numbers.
    """
    text = read_text(path, "landmarks file")
    try:
        points = np.array([line.replace(",", " ").split() for line in text.splitlines()
                           if line.strip() and not line.lstrip().startswith("#")], float)
    except ValueError:
        points = np.zeros(0)
    if points.shape != (68, 3) or not np.isfinite(points).all():
        raise InputError(f"{path}: expected 68 rows 'x y z' of finite numbers (iBUG order), "
                         f"got {points.shape if points.ndim == 2 else 'other text'}")
    return points


def _checked(scan: Scan, path: Path) -> Scan:
    v = np.asarray(scan.vertices, np.float64).reshape(-1, 3)
    t = np.asarray(scan.triangles, np.int64).reshape(-1, 3)
    if not len(v) or not len(t):
        raise InputError(f"{path}: the scan has no {'vertices' if not len(v) else 'faces'}")
    if not np.isfinite(v).all():
        raise InputError(f"{path}: the scan has non-finite vertex coordinates")
    if t.min() < 0 or t.max() >= len(v):
        raise InputError(f"{path}: face indices out of range 1..{len(v)}")
    if scan.texture is not None:
        uv_ids = t if scan.triangle_uvs is None else scan.triangle_uvs
        if (scan.uvs is None or not len(scan.uvs) or uv_ids.min() < 0
                or uv_ids.max() >= len(scan.uvs)):
            raise InputError(f"{path}: texture coordinate indices out of range")
    scan.vertices, scan.triangles = v, t
    return scan


def _fan(polygons: list[np.ndarray]) -> np.ndarray:
    """Triangles ``(T, 3)`` of polygons given as index arrays, fanned from their first
    corner; polygons of fewer than 3 corners give none."""
    tris = [np.stack([p[0].repeat(len(p) - 2), p[1:-1], p[2:]], axis=-1)
            for p in polygons if len(p) >= 3]
    return np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)


def _texture(path: Path) -> np.ndarray:
    """A texture map, as float32 RGB ``(H, W, 3)``."""
    require_file(path, "texture map", "place it beside the scan, as its material names it")
    return io.read_image(path)


# --------------------------------------------------------------------------- OBJ


def _numbers(lines: list[str], what: str, path: Path) -> np.ndarray:
    """Rows of numbers of equal length ``(N, K)``, from lines with the keyword removed."""
    rows = [line.split() for line in lines]
    width = min((len(r) for r in rows), default=0)
    try:
        return np.array([r[:width] for r in rows], float).reshape(len(rows), width)
    except ValueError:
        raise InputError(f"{path}: a {what} line holds something other than numbers") from None


def _read_obj(path: Path, appearance: bool) -> Scan:
    keyed: dict[str, list[str]] = {"v": [], "vt": [], "f": []}
    face_material: list[str] = []
    mtllibs: list[str] = []
    material = ""
    for line in read_text(path, "scan file").splitlines():
        key, rest = (line.split(None, 1) + ["", ""])[:2]
        if key in keyed:
            keyed[key].append(rest)
            if key == "f":
                face_material.append(material)
        elif key == "usemtl":
            material = rest.strip()
        elif key == "mtllib":
            mtllibs.append(rest.strip())
    v = _numbers(keyed["v"], "vertex", path)
    if v.shape[1] < 3:
        raise InputError(f"{path}: vertex lines need x y z")
    n_v = len(v)
    vt = _numbers(keyed["vt"], "texture coordinate", path)[:, :2] if keyed["vt"] else None
    n_vt = 0 if vt is None else len(vt)

    polygons, uv_polygons = [], []
    try:
        for rest in keyed["f"]:
            corners = [c.split("/") for c in rest.split()]
            ids = np.array([int(c[0]) for c in corners], np.int64)
            polygons.append(np.where(ids < 0, ids + n_v, ids - 1))
            if n_vt and all(len(c) > 1 and c[1] for c in corners):
                uv = np.array([int(c[1]) for c in corners], np.int64)
                uv_polygons.append(np.where(uv < 0, uv + n_vt, uv - 1))
    except ValueError:
        raise InputError(f"{path}: a face line holds something other than indices") from None
    triangles = _fan(polygons)
    scan = Scan(v[:, :3], triangles)
    if not appearance:
        return scan
    if v.shape[1] >= 6:
        colors = v[:, 3:6]
        scan.vertex_colors = (colors / 255.0 if colors.max() > 1.0 else colors).astype(np.float32)
    textures = _mtl_textures(path, mtllibs)
    used = Counter(m for m in face_material if m in textures)
    if used and len(uv_polygons) == len(polygons):
        if len(used) > 1:
            log.warning("%s: %d textured materials; using the texture of %r, the most used",
                        path, len(used), used.most_common(1)[0][0])
        scan.texture = _texture(textures[used.most_common(1)[0][0]])
        scan.uvs, scan.triangle_uvs = vt, _fan(uv_polygons)
    return scan


def _mtl_textures(obj: Path, mtllibs: list[str]) -> dict[str, Path]:
    """Material name -> its ``map_Kd`` file, from the ``.mtl`` files an OBJ names (missing
    ones are skipped with a warning: the scan then has no texture)."""
    textures: dict[str, Path] = {}
    for name in mtllibs:
        mtl = obj.parent / name
        if not mtl.is_file():
            log.warning("%s: material library %s not found; no texture", obj, mtl)
            continue
        current = ""
        for line in read_text(mtl, "material library").splitlines():
            key, rest = (line.split(None, 1) + ["", ""])[:2]
            if key == "newmtl":
                current = rest.strip()
            elif key.lower() == "map_kd" and rest.split():
                # Options (-s 1 1 1, -o ...) come first; the file name is last.
                textures[current] = mtl.parent / rest.split()[-1]
    return textures


# --------------------------------------------------------------------------- PLY, glTF


def _read_trimesh(path: Path, appearance: bool) -> Scan:
    import trimesh

    try:
        loaded = trimesh.load(path, process=False, maintain_order=True)
    except Exception as err:  # trimesh raises anything from its parsers on a corrupt file
        raise InputError(f"{path}: cannot read this scan ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]}); is the file complete?") from None
    meshes = ([g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
              if isinstance(loaded, trimesh.Scene) else [loaded])
    meshes = [m for m in meshes if isinstance(m, trimesh.Trimesh) and len(m.faces)]
    if not meshes:
        raise InputError(f"{path}: the scan holds no triangle mesh")
    parts = [_from_trimesh(m, appearance) for m in meshes]
    return _merge(parts, path)


def _from_trimesh(mesh, appearance: bool) -> Scan:
    scan = Scan(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64))
    if not appearance:
        return scan
    visual = mesh.visual
    if visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None:
            scan.texture = np.asarray(image.convert("RGB"), np.float32) / 255.0
            scan.uvs = np.asarray(visual.uv, np.float64)
            return scan
    colors = None
    if visual.kind == "vertex":
        colors = visual.vertex_colors
    elif visual.kind == "texture" and "color" in getattr(visual, "vertex_attributes", {}):
        colors = visual.vertex_attributes["color"]
    if colors is not None:
        scan.vertex_colors = (np.asarray(colors)[:, :3] / 255.0).astype(np.float32)
    return scan


def _merge(parts: list[Scan], path: Path) -> Scan:
    """One scan of several parts (module docstring: which appearance survives)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    scan = Scan(np.concatenate([p.vertices for p in parts]),
                np.concatenate([p.triangles + o for p, o in zip(parts, offsets)]))
    textured = [p for p in parts if p.texture is not None]
    same_image = all(p.texture is textured[0].texture or np.array_equal(
        p.texture, textured[0].texture) for p in textured)
    if len(textured) == len(parts) and same_image:
        uv_offsets = np.cumsum([0] + [len(p.uvs) for p in parts])
        scan.texture = parts[0].texture
        scan.uvs = np.concatenate([p.uvs for p in parts])
        scan.triangle_uvs = np.concatenate([
            (p.triangles if p.triangle_uvs is None else p.triangle_uvs) + o
            for p, o in zip(parts, uv_offsets)])
        return scan
    if textured:
        log.warning("%s: parts with different textures or without one; their textures are "
                    "dropped (vertex colours, or grey, instead)", path)
    if any(p.vertex_colors is not None for p in parts):
        scan.vertex_colors = np.concatenate([
            np.full((len(p.vertices), 3), DEFAULT_ALBEDO, np.float32)
            if p.vertex_colors is None else p.vertex_colors for p in parts])
    return scan


# --------------------------------------------------------------------------- VRML

# Strings are kept whole (a '#' inside one is no comment); commas are white space.
_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*')
_TOKEN = re.compile(r'[\s,]*("(?:[^"\\]|\\.)*"|[{}\[\]]|[^\s,{}\[\]"]+)')
_NUMBER = re.compile(r"[-+]?(?:\d|\.\d)|0x", re.IGNORECASE)
_WORD_VALUES = {"TRUE": True, "FALSE": False, "NULL": None}
#: The field under which a VRML 1.0 group keeps its children.
_CHILDREN_V1 = ""


class _Node(dict):
    """A VRML node: its fields by name; ``kind`` is its type (``Shape``, ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind


class _VrmlParser:
    """A tolerant recursive-descent reader of the VRML node syntax. Numeric arrays
    (``[ ... ]`` without nodes or strings) are converted by numpy in one go: a scan's
    hundreds of thousands of numbers never go through the token loop."""

    def __init__(self, text: str) -> None:
        self.text = _COMMENT_OR_STRING.sub(
            lambda m: m.group() if m.group().startswith('"') else " ", text)
        self.pos = 0
        self.defs: dict[str, object] = {}

    def token(self, peek: bool = False) -> str | None:
        match = _TOKEN.match(self.text, self.pos)
        if match is None:
            return None
        if not peek:
            self.pos = match.end()
        return match.group(1)

    def expect(self, want: str) -> None:
        got = self.token()
        if got != want:
            raise InputError(f"VRML syntax: expected {want!r}, got {got!r}")

    def statements(self, end: str | None) -> list[object]:
        """Nodes up to ``end`` (``]`` or the end of the text)."""
        values = []
        while (tok := self.token(peek=True)) != end:
            if tok is None:
                raise InputError(f"VRML syntax: the file ends before a closing {end!r}")
            value = self.value()
            if value is not None:
                values.append(value)
        if end is not None:
            self.token()
        return values

    def skip_block(self) -> None:
        """Skip a balanced ``{...}`` or ``[...]`` starting at the next token."""
        depth = 0
        while (tok := self.token()) is not None:
            depth += tok in "{[" and len(tok) == 1
            depth -= tok in "}]" and len(tok) == 1
            if depth == 0:
                return
        raise InputError("VRML syntax: the file ends inside a block")

    def value(self) -> object:
        tok = self.token()
        if tok is None:
            raise InputError("VRML syntax: the file ends where a value is expected")
        if tok == "[":
            return self.array()
        if tok.startswith('"'):
            return [tok[1:-1]]
        if tok == "DEF":
            name = self.token()
            node = self.value()
            self.defs[name] = node
            return node
        if tok == "USE":
            name = self.token()
            if name not in self.defs:
                raise InputError(f"VRML: USE {name} of an undefined node")
            return self.defs[name]
        if tok in ("PROTO", "EXTERNPROTO"):
            self.token()
            self.skip_block()  # the interface
            if tok == "PROTO":
                self.skip_block()  # the body
            else:
                self.value()  # the URL
            return None
        if tok == "ROUTE":
            for _ in range(3):
                self.token()
            return None
        if self.token(peek=True) == "{":
            return self.node(tok)
        if tok in _WORD_VALUES or _NUMBER.match(tok):
            words = [tok]
            while (nxt := self.token(peek=True)) is not None and (
                    nxt in ("TRUE", "FALSE") or _NUMBER.match(nxt)):
                words.append(self.token())
            return self.scalars(words)
        return tok  # an enumerated value (VRML 1.0)

    @staticmethod
    def scalars(words: list[str]) -> object:
        if words[0] in _WORD_VALUES:
            return _WORD_VALUES[words[0]]
        return np.array([float.fromhex(w) if w.lower().startswith("0x") else float(w)
                         for w in words])

    def array(self) -> object:
        end = self.text.find("]", self.pos)
        if end < 0:
            raise InputError("VRML syntax: an array '[' is never closed")
        body = self.text[self.pos:end]
        if "{" not in body and '"' not in body and "[" not in body:
            self.pos = end + 1
            try:
                return np.array(body.replace(",", " ").split(), float)
            except ValueError:
                raise InputError("VRML syntax: an array holds something other than "
                                 "numbers") from None
        values = self.statements("]")
        if all(isinstance(v, list) for v in values):  # MFString
            return [s for v in values for s in v]
        return values

    def node(self, kind: str) -> _Node:
        self.expect("{")
        node = _Node(kind)
        while True:
            start = self.pos
            tok = self.token()
            if tok == "}":
                return node
            if tok is None:
                raise InputError(f"VRML syntax: node {kind} is never closed")
            if tok in ("DEF", "USE") or self.token(peek=True) == "{":
                # VRML 1.0: a group's children follow one another without a field name.
                self.pos = start
                node.setdefault(_CHILDREN_V1, []).append(self.value())
            elif tok in ("eventIn", "eventOut"):  # a Script's interface: type and name
                self.token()
                self.token()
            elif tok == "ROUTE":
                for _ in range(3):
                    self.token()
            else:
                if tok in ("field", "exposedField"):  # a Script's: type, then name
                    self.token()
                    tok = self.token()
                node[tok] = self.value()


def _read_wrl(path: Path, appearance: bool) -> Scan:
    raw = path.read_bytes()
    if raw[:1] == b"\x1f":
        raise InputError(f"{path}: a compressed VRML file; gunzip it first")
    text = raw.decode("utf-8", errors="replace")
    if not text.lstrip().startswith("#VRML"):
        raise InputError(f"{path}: not a VRML file (no '#VRML' header)")
    parser = _VrmlParser(text)
    roots = parser.statements(None)
    parts: list[Scan] = []
    _walk(roots, np.eye(4), {}, parts, path, appearance)
    if not parts:
        raise InputError(f"{path}: no IndexedFaceSet with faces in this VRML file")
    return _merge(parts, path)


def _field(node: object, name: str, default: object = None) -> object:
    return node.get(name, default) if isinstance(node, _Node) else default


def _transform(node: _Node) -> np.ndarray:
    """The 4 x 4 matrix of a Transform: T C R S -C (scaleOrientation is ignored)."""
    def vec(name: str, default: list[float]) -> np.ndarray:
        value = np.asarray(_field(node, name, default), float).ravel()
        return value[: len(default)] if len(value) >= len(default) else np.array(default)

    t, c, s = vec("translation", [0, 0, 0]), vec("center", [0, 0, 0]), vec("scale", [1, 1, 1])
    axis_angle = vec("rotation", [0, 0, 1, 0])
    axis, angle = axis_angle[:3], axis_angle[3]
    norm = np.linalg.norm(axis)
    rotation = np.eye(3)
    if norm > 0 and angle:
        k = np.cross(np.eye(3), axis / norm)
        rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag(s)
    m[:3, 3] = t + c - m[:3, :3] @ c
    return m


def _walk(nodes: list, matrix: np.ndarray, state: dict, parts: list[Scan], path: Path,
          appearance: bool) -> None:
    """Collect the faces of ``nodes`` into ``parts``. ``state`` carries VRML 1.0's
    current coordinates, texture coordinates and texture (scoped by Separator)."""
    for node in nodes:
        if not isinstance(node, _Node):
            continue
        kind = node.kind
        if kind == "Transform":
            _walk(_field(node, "children", []), matrix @ _transform(node), dict(state), parts,
                  path, appearance)
        elif kind == "Shape":
            geometry = _field(node, "geometry")
            if isinstance(geometry, _Node) and geometry.kind == "IndexedFaceSet":
                texture = _field(_field(_field(node, "appearance"), "texture"), "url")
                parts.extend(_face_set(geometry, matrix, {**state, "url": texture}, path,
                                       appearance))
        elif kind in ("Coordinate3", "TextureCoordinate2", "Texture2"):
            key = {"Coordinate3": "point", "TextureCoordinate2": "uv",
                   "Texture2": "url"}[kind]
            state[key] = _field(node, "filename" if kind == "Texture2" else "point")
        elif kind == "IndexedFaceSet":  # VRML 1.0: the state gives its coordinates
            parts.extend(_face_set(node, matrix, state, path, appearance))
        elif kind in ("Separator", "TransformSeparator"):
            _walk(_field(node, _CHILDREN_V1, []), matrix, dict(state), parts, path, appearance)
        else:  # Group, Anchor, Billboard, Collision, LOD, Switch; VRML 1.0 groups
            for name in ("children", "level", "choice", _CHILDREN_V1):
                _walk(_field(node, name, []) or [], matrix, state, parts, path, appearance)


def _polygons(indices: object) -> list[np.ndarray]:
    """An index list with -1 ending each polygon -> one int64 array per polygon."""
    ids = np.asarray(indices if indices is not None else [], float).astype(np.int64).ravel()
    pieces = np.split(ids, np.flatnonzero(ids < 0) + 1)
    return [kept for p in pieces if len(kept := p[p >= 0])]


def _face_set(node: _Node, matrix: np.ndarray, state: dict, path: Path,
              appearance: bool) -> list[Scan]:
    coord = _field(node, "coord")
    points = _field(coord, "point") if coord is not None else state.get("point")
    points = np.asarray(points if points is not None else [], float)
    if points.size % 3:
        raise InputError("VRML: a point list whose length is not a multiple of 3")
    vertices = points.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    polygons = _polygons(_field(node, "coordIndex"))
    triangles = _fan(polygons)
    if not len(triangles):
        return []
    # Clockwise faces are turned so that every scan winds counter-clockwise.
    order = [0, 2, 1] if _field(node, "ccw", True) is False else [0, 1, 2]
    scan = Scan(vertices, triangles[:, order])
    if not appearance:
        return [scan]
    uv_node = _field(node, "texCoord")
    uvs = _field(uv_node, "point") if uv_node is not None else state.get("uv")
    url = state.get("url")
    if uvs is not None and url:
        uvs = np.asarray(uvs, float).reshape(-1, 2)
        uv_index = _field(node, "texCoordIndex", _field(node, "textureCoordIndex"))
        if uv_index is not None and len(np.ravel(uv_index)):
            uv_tris = _fan(_polygons(uv_index))
            if len(uv_tris) != len(triangles):
                raise InputError("VRML: texCoordIndex and coordIndex describe different faces")
            scan.triangle_uvs = uv_tris[:, order]
        scan.uvs = uvs
        scan.texture = _texture_from_urls(url, path)
        return [scan]
    color_node = _field(node, "color")
    colors = _field(color_node, "color")
    if colors is not None:
        scan.vertex_colors = _vertex_colors(node, np.asarray(colors, float).reshape(-1, 3),
                                            polygons, len(vertices))
    return [scan]


def _texture_from_urls(urls: object, path: Path) -> np.ndarray:
    """The first of an ``url`` list that exists beside the scan (a texture is refused
    when none does: rendering the scan grey would give wrong paired images)."""
    names = urls if isinstance(urls, list) else [urls]
    for name in names:
        candidate = path.parent / str(name).removeprefix("file://")
        if candidate.is_file():
            return _texture(candidate)
    raise InputError(f"{path}: texture {names[0]!r} not found beside the scan; place it there")


def _vertex_colors(node: _Node, colors: np.ndarray, polygons: list[np.ndarray],
                   n_vertices: int) -> np.ndarray:
    """Per-vertex colours of a face set's ``color``: per vertex, through ``colorIndex``,
    or per face; a vertex whose corners get several colours gets their mean."""
    per_vertex = _field(node, "colorPerVertex", True) is not False
    color_index = _field(node, "colorIndex")
    has_index = color_index is not None and len(np.ravel(color_index)) > 0
    corners = np.concatenate(polygons)
    if per_vertex and not has_index:
        corner_colors = corners
    elif per_vertex:
        corner_colors = np.concatenate(_polygons(color_index))
    else:
        face_ids = (np.ravel(color_index).astype(np.int64) if has_index
                    else np.arange(len(polygons)))
        corner_colors = np.repeat(face_ids[: len(polygons)], [len(p) for p in polygons])
    if len(corner_colors) != len(corners) or corner_colors.max() >= len(colors):
        raise InputError("VRML: colour indices do not match the faces")
    total = np.zeros((n_vertices, 3))
    np.add.at(total, corners, colors[corner_colors])
    count = np.bincount(corners, minlength=n_vertices)[:, None]
    mean = np.divide(total, count, out=np.full_like(total, DEFAULT_ALBEDO), where=count > 0)
    return np.clip(mean, 0.0, 1.0).astype(np.float32)
