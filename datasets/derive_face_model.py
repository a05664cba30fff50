"""Derive the packaged face model from ICT-FaceKit Light.

Reads a folder holding ICT-FaceKit Light in compact form (``ict_face_model_light.npz``
with ``FORMAT.md``, ``LICENSE`` and ``CREDITS.md``; ``datasets/README.md`` describes it and
where the model comes from) and writes ``crossmodal/assets/ict_face_light/``:

- ``face_model.npz``: the geometry that rendering faces needs. The transparent
  overlay regions (lacrimal fluid, eye blend, eye occlusion, eyelashes) and the
  triangles of overlay materials are dropped, vertices/uvs/materials/regions are
  reindexed, and the identity and expression deltas are stored as integers with one
  float32 scale per (mode, axis), ``delta = q * scale``: int16 with a common step of
  0.00025 cm by default, or (``--int8``) symmetric int8 with
  ``scale = max|delta| / 127``. No pickled objects; the zip is written with fixed
  timestamps, so every run gives the same bytes.
- ``LICENSE``: the MIT licence of ICT-FaceKit, copied verbatim.
- ``ATTRIBUTION.md``: source, citation, credits, what was changed and the
  measured quantisation errors.

Usage (from the repository root)::

    python datasets/derive_face_model.py --source DIR [--out DIR] [--step CM | --int8]

The loader is :class:`crossmodal.synth.FaceModel`.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger("derive_face_model")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "crossmodal" / "assets" / "ict_face_light"
SOURCE_NPZ = "ict_face_model_light.npz"
ASSET_NAME = "face_model.npz"
FORMAT_VERSION = 1
MAX_ASSET_BYTES = 10 * 1024 * 1024
# Quantisation step of the int16 deltas: adds at most 0.000125 cm, well below the
# float16 source's own 0.001 cm error against the OBJs. (int8 with a per-mode scale,
# --int8, is 2.6 MB smaller but moves vertex normals by about 1 degree on average,
# 6 degrees at the 99th percentile, on the small triangles of eyelids and lips.)
DEFAULT_STEP_CM = 0.00025

# Regions rendered into normal maps, in the source's order.
KEEP_REGIONS = (
    "face", "head_neck", "mouth_socket", "eye_socket_L", "eye_socket_R",
    "gums_tongue", "teeth", "eyeball_L", "eyeball_R",
)
# Transparent overlay geometry: never rendered into normal maps.
DROP_REGIONS = (
    "lacrimal_L", "lacrimal_R", "eyeblend_L", "eyeblend_R",
    "eye_occlusion_L", "eye_occlusion_R", "eyelashes_L", "eyelashes_R",
)
DROP_MATERIALS = ("M_EyeBlend", "M_EyeLashes", "M_EyeOcclusion", "M_LacrimalFluid")

# A fixed zip timestamp (the earliest zip can store) makes the output reproducible.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def quantise(deltas: np.ndarray, step: float | None = DEFAULT_STEP_CM
             ) -> tuple[np.ndarray, np.ndarray]:
    """Quantise ``(K, V, 3)`` deltas to integers with one float32 scale per (mode, axis).

    Returns ``q`` as ``(K, 3, V)`` (each axis contiguous, which compresses about 30 %
    better than ``(K, V, 3)``) and ``scale`` as ``(K, 3)`` float32, with
    ``delta ~= q * scale``.

    - ``step=None``: symmetric int8, ``scale = max|delta| / 127`` (an all-zero
      (mode, axis) gets scale 0). The error is up to ``max|delta| / 254`` per mode.
    - ``step=S`` (cm): int16 with the same step ``S`` for every (mode, axis) (raised to
      ``max|delta| / 32767`` where that would overflow), so the error is at most
      ``S / 2`` everywhere. For a fixed size, one common step is the allocation that
      minimises the error of a weighted sum of modes.
    """
    deltas = np.asarray(deltas, dtype=np.float32)
    peak = np.abs(deltas).max(axis=1)                                   # (K, 3)
    if step is None:
        scale, limit, dtype = peak / np.float32(127.0), 127, np.int8
    else:
        scale = np.maximum(np.float32(step), peak / np.float32(32767.0))
        limit, dtype = 32767, np.int16
    scale = scale.astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(deltas / safe[:, None, :]), -limit, limit).astype(dtype)
    return np.ascontiguousarray(q.transpose(0, 2, 1)), scale


def dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantise`: ``(K, 3, V)`` integers -> ``(K, V, 3)`` float32."""
    return (q.astype(np.float32) * scale[:, :, None]).transpose(0, 2, 1)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (float64)."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[triangles[:, 1]] - v[triangles[:, 0]], v[triangles[:, 2]] - v[triangles[:, 0]])
    n = np.stack([np.bincount(triangles.ravel(), weights=np.repeat(fn[:, k], 3),
                              minlength=len(v)) for k in range(3)], axis=1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def normal_error(src: dict[str, np.ndarray], out: dict[str, np.ndarray], samples: int = 8
                 ) -> dict[str, float]:
    """Angle (degrees) between face-region vertex normals of random faces built from the
    float16 source deltas and from the quantised ones: identity weights N(0, 1) on all
    modes plus three main expressions at U(0, 1). Seeded, so the numbers are stable."""
    rng = np.random.default_rng(0)
    tri = out["triangles"].astype(np.int64)
    face = out["vertex_region"] == list(out["region_names"]).index("face")
    neutral = out["neutral_vertices"].astype(np.float64)
    idx = out["source_vertex_index"]
    bases = {}
    for kind in ("identity", "expression"):
        bases[kind] = (src[f"{kind}_deltas"][:, idx].astype(np.float64),
                       dequantise(out[f"{kind}_q"], out[f"{kind}_scale"]).astype(np.float64))
    angles = []
    for _ in range(samples):
        w_id = rng.normal(size=bases["identity"][0].shape[0])
        w_ex = np.zeros(bases["expression"][0].shape[0])
        pick = rng.choice(int(out["n_main_expressions"]), 3, replace=False)
        w_ex[pick] = rng.uniform(0.0, 1.0, 3)
        meshes = [neutral + np.tensordot(w_id, bases["identity"][i], 1)
                  + np.tensordot(w_ex, bases["expression"][i], 1) for i in (0, 1)]
        na, nb = (vertex_normals(m, tri)[face] for m in meshes)
        angles.append(np.degrees(np.arccos(np.clip((na * nb).sum(axis=1), -1.0, 1.0))))
    a = np.concatenate(angles)
    return {"mean": float(a.mean()), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def reindex(keep: np.ndarray) -> np.ndarray:
    """Old -> new index map for a boolean keep mask (-1 for dropped entries)."""
    old_to_new = np.full(keep.shape[0], -1, dtype=np.int64)
    old_to_new[keep] = np.arange(int(keep.sum()))
    return old_to_new


def names_to_ids(names: np.ndarray, wanted, what: str) -> np.ndarray:
    names = [str(n) for n in names]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise SystemExit(f"source has no {what} {missing}; known: {names}")
    return np.array([names.index(w) for w in wanted], dtype=np.int64)


def derive(src: dict[str, np.ndarray], step: float | None = DEFAULT_STEP_CM
           ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Subset, reindex and quantise the source model; returns (arrays, stats).

    ``step``: see :func:`quantise` (None: int8 with a per-(mode, axis) scale)."""
    region_names = src["region_names"]
    if sorted(map(str, region_names)) != sorted(KEEP_REGIONS + DROP_REGIONS):
        raise SystemExit(f"unexpected source regions {list(region_names)}")
    keep_region_ids = names_to_ids(region_names, KEEP_REGIONS, "region")
    material_names = [str(n) for n in src["material_names"]]
    drop_material_ids = names_to_ids(src["material_names"], DROP_MATERIALS, "material")

    vertex_region = src["vertex_region"].astype(np.int64)
    triangles = src["triangles"].astype(np.int64)
    tri_material = src["triangle_material"].astype(np.int64)
    tri_uvs = src["triangle_uvs"].astype(np.int64)
    n_src_vertices = vertex_region.shape[0]

    keep_vertex = np.isin(vertex_region, keep_region_ids)
    overlay_material = np.isin(tri_material, drop_material_ids)
    all_kept = keep_vertex[triangles].all(axis=1)
    keep_tri = all_kept & ~overlay_material
    log.info("triangles: %d source, %d of overlay materials, %d touching dropped regions, "
             "%d kept", len(triangles), int(overlay_material.sum()),
             int((~all_kept).sum()), int(keep_tri.sum()))
    if (overlay_material & all_kept).any():
        log.info("  %d overlay-material triangles lie inside kept regions (dropped too)",
                 int((overlay_material & all_kept).sum()))
    if (~all_kept & ~overlay_material).any():
        log.warning("  %d non-overlay triangles touch a dropped region (dropped)",
                    int((~all_kept & ~overlay_material).sum()))

    # A kept vertex that no kept triangle uses would be dead weight: drop it as well.
    used = np.zeros(n_src_vertices, dtype=bool)
    used[triangles[keep_tri].ravel()] = True
    if (keep_vertex & ~used).any():
        log.info("  %d vertices of kept regions are unused by kept triangles (dropped)",
                 int((keep_vertex & ~used).sum()))
    keep_vertex &= used
    v_map = reindex(keep_vertex)
    new_triangles = v_map[triangles[keep_tri]]
    assert (new_triangles >= 0).all(), "a kept triangle uses a dropped vertex"

    # UVs: keep only those the kept triangles use.
    uv_used = np.zeros(src["uvs"].shape[0], dtype=bool)
    uv_used[tri_uvs[keep_tri].ravel()] = True
    uv_map = reindex(uv_used)
    new_tri_uvs = uv_map[tri_uvs[keep_tri]]
    assert (new_tri_uvs >= 0).all()

    # Materials: the non-overlay ones, in source order.
    keep_material_ids = [i for i in range(len(material_names)) if i not in drop_material_ids]
    m_map = np.full(len(material_names), -1, dtype=np.int64)
    m_map[keep_material_ids] = np.arange(len(keep_material_ids))
    new_tri_material = m_map[tri_material[keep_tri]]
    assert (new_tri_material >= 0).all()

    # Regions: the kept names, in source order.
    r_map = np.full(len(region_names), -1, dtype=np.int64)
    r_map[keep_region_ids] = np.arange(len(keep_region_ids))
    new_vertex_region = r_map[vertex_region[keep_vertex]]
    assert (new_vertex_region >= 0).all()

    landmarks = v_map[src["landmarks68"].astype(np.int64)]
    assert landmarks.shape == (68,) and (landmarks >= 0).all(), "a landmark was dropped"

    source_index = np.flatnonzero(keep_vertex)
    neutral = src["neutral_vertices"].astype(np.float32)[keep_vertex]

    stats: dict[str, object] = {}
    out: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        "neutral_vertices": np.ascontiguousarray(neutral),
        "triangles": new_triangles.astype(np.int32),
        "uvs": np.ascontiguousarray(src["uvs"].astype(np.float32)[uv_used]),
        "triangle_uvs": new_tri_uvs.astype(np.int32),
        "triangle_material": new_tri_material.astype(np.int16),
        "material_names": np.array([material_names[i] for i in keep_material_ids]),
        "vertex_region": new_vertex_region.astype(np.int16),
        "region_names": np.array(KEEP_REGIONS),
        "landmarks68": landmarks.astype(np.int32),
        "source_vertex_index": source_index.astype(np.int32),
        "identity_names": np.array([str(n) for n in src["identity_names"]]),
        "expression_names": np.array([str(n) for n in src["expression_names"]]),
        "n_main_expressions": np.array(int(src["n_main_expressions"]), dtype=np.int32),
    }
    for kind in ("identity", "expression"):
        source = src[f"{kind}_deltas"][:, keep_vertex]          # float16 (K, V, 3)
        q, scale = quantise(source.astype(np.float32), step)
        err = np.abs(dequantise(q, scale) - source.astype(np.float32))
        max_err = float(err.max())
        stats[f"{kind}_max_error_cm"] = max_err
        stats[f"{kind}_max_abs_cm"] = float(np.abs(source.astype(np.float32)).max())
        stats[f"{kind}_modes"] = int(q.shape[0])
        log.info("%s: %d modes, max |delta| %.4f cm, max quantisation error %.6f cm "
                 "(%.4f mm)", kind, q.shape[0], stats[f"{kind}_max_abs_cm"], max_err,
                 10 * max_err)
        out[f"{kind}_q"] = q
        out[f"{kind}_scale"] = scale
        out[f"{kind}_max_error"] = np.array(max_err, dtype=np.float32)

    stats["quantisation"] = (f"int16, step {step:g} cm" if step is not None
                             else "int8, scale = max|delta| / 127 per (mode, axis)")
    stats["normal_error_deg"] = normal_error(src, out)
    log.info("vertex-normal change from quantisation on random faces (face region): "
             "mean %.3f, p99 %.3f, max %.3f degrees", *stats["normal_error_deg"].values())
    stats.update(
        n_source_vertices=n_src_vertices, n_vertices=int(keep_vertex.sum()),
        n_source_triangles=int(len(triangles)), n_triangles=int(keep_tri.sum()),
        n_source_uvs=int(src["uvs"].shape[0]), n_uvs=int(uv_used.sum()),
        n_main_expressions=int(src["n_main_expressions"]),
    )
    log.info("kept %d / %d vertices, %d / %d triangles, %d / %d uvs",
             stats["n_vertices"], n_src_vertices, stats["n_triangles"], len(triangles),
             stats["n_uvs"], src["uvs"].shape[0])
    return out, stats


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed npz, byte-for-byte reproducible (np.savez_compressed stamps the
    current time into the zip, so two runs would differ)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            value = np.asarray(value)
            assert value.dtype != object, key
            member = io.BytesIO()
            np.lib.format.write_array(member, value, allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE_TIME)
            info.create_system = 3                     # "Unix", whatever the host
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)                    # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def attribution(source_dir: Path, stats: dict[str, object], asset_bytes: int) -> str:
    fmt = (source_dir / "FORMAT.md").read_text(encoding="utf-8")
    m = re.search(r"(github\.com/\S+?),\s*commit\s+([0-9a-f]{40})", fmt)
    if not m:
        raise SystemExit(f"{source_dir / 'FORMAT.md'}: no 'github.com/..., commit <sha>' line")
    repo, commit = m.group(1), m.group(2)
    credits = (source_dir / "CREDITS.md").read_text(encoding="utf-8").strip()
    credits = re.sub(r"^#", "###", credits, flags=re.M)         # nest its headings
    s = stats
    ne = stats["normal_error_deg"]
    return f"""# ICT-FaceKit Light: attribution

`face_model.npz` in this folder is derived from the **ICT-FaceKit** face model
(ICT Face Model Light), copyright 2020 USC Institute for Creative Technologies,
released under the MIT licence (`LICENSE` in this folder, copied verbatim; keep it
and this attribution wherever the data or anything derived from it ships).

- Source: https://{repo}, commit `{commit}`, folder `FaceXModel/`.
- Citation: Ruilong Li, Karl Bladin, Yajie Zhao, Chinmay Chinara, Owen Ingraham,
  Pengda Xiang, Xinglei Ren, Pratusha Prasad, Bipin Kishore, Jun Xing, Hao Li.
  "Learning Formation of Physically-Based Face Attributes." CVPR 2020.

```bibtex
@inproceedings{{li2020learning,
  title     = {{Learning Formation of Physically-Based Face Attributes}},
  author    = {{Li, Ruilong and Bladin, Karl and Zhao, Yajie and Chinara, Chinmay and
               Ingraham, Owen and Xiang, Pengda and Ren, Xinglei and Prasad, Pratusha and
               Kishore, Bipin and Xing, Jun and Li, Hao}},
  booktitle = {{Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)}},
  year      = {{2020}}
}}
```

## Credits (from the toolkit's CREDITS.md)

{credits}

## What was changed

Produced by `datasets/derive_face_model.py` from the toolkit's OBJ files (converted
to a compact npz with float16 deltas; those differ from the OBJs by at most 0.001 cm):

- **Regions dropped** (transparent overlay geometry, never part of a rendered normal
  map): {", ".join(DROP_REGIONS)}; and every triangle of the overlay materials
  {", ".join(DROP_MATERIALS)}.
  Kept regions: {", ".join(KEEP_REGIONS)}.
- **Reindexed**: vertices, triangles, UVs (unused ones dropped), materials and regions
  (names kept), the 68 iBUG landmarks (all kept). `source_vertex_index` maps each
  vertex to the source mesh. The original quads and the toolkit's fitting vertex sets
  are not included.

  | | kept | source |
  |---|---|---|
  | vertices | {s["n_vertices"]} | {s["n_source_vertices"]} |
  | triangles | {s["n_triangles"]} | {s["n_source_triangles"]} |
  | uvs | {s["n_uvs"]} | {s["n_source_uvs"]} |

- **Quantised**: all {s["identity_modes"]} identity modes (+1 sigma deltas) and all
  {s["expression_modes"]} expression blendshapes (the {s["n_main_expressions"]} main
  ones, then cheekRaiser_L/R and PupilDilate_L/R) are stored as integers `q` with one
  float32 scale per (mode, axis), `delta = q * scale`
  ({s["quantisation"]}). Maximum error against the float16 source:

  | deltas | max \\|delta\\| (cm) | max quantisation error (cm) |
  |---|---|---|
  | identity | {s["identity_max_abs_cm"]:.4f} | {s["identity_max_error_cm"]:.6f} |
  | expression | {s["expression_max_abs_cm"]:.4f} | {s["expression_max_error_cm"]:.6f} |

  Effect on shading: on random faces (identity weights N(0, 1), three main
  expressions at U(0, 1)), face-region vertex normals move by {ne["mean"]:.3f} degrees
  on average, {ne["p99"]:.3f} at the 99th percentile and {ne["max"]:.2f} at most.

- Units and frame unchanged: centimetres, +y up, +z towards the viewer.
- Asset size: {asset_bytes} bytes ({asset_bytes / 2**20:.2f} MiB).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True,
                        help="folder with ict_face_model_light.npz, FORMAT.md, LICENSE, "
                             "CREDITS.md (see datasets/README.md)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: %(default)s)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--step", type=float, default=DEFAULT_STEP_CM,
                       help="int16 quantisation step in cm (default: %(default)s)")
    group.add_argument("--int8", action="store_true",
                       help="int8 deltas with scale max|delta|/127 per (mode, axis): "
                            "smaller, but coarser normals")
    args = parser.parse_args(argv)
    if not args.int8 and not args.step > 0:
        parser.error("--step must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    source_dir: Path = args.source
    needed = [SOURCE_NPZ, "FORMAT.md", "LICENSE", "CREDITS.md"]
    missing = [n for n in needed if not (source_dir / n).is_file()]
    if missing:
        print(f"error: {source_dir} lacks {', '.join(missing)}; pass --source DIR, the "
              "compact ICT-FaceKit Light folder described in datasets/README.md",
              file=sys.stderr)
        return 2
    src_path = source_dir / SOURCE_NPZ
    log.info("reading %s (%d bytes)", src_path, src_path.stat().st_size)
    with np.load(src_path, allow_pickle=False) as npz:
        src = {k: npz[k] for k in npz.files}

    arrays, stats = derive(src, None if args.int8 else args.step)
    data = npz_bytes(arrays)
    if len(data) > MAX_ASSET_BYTES:
        raise SystemExit(f"asset is {len(data)} bytes, over the {MAX_ASSET_BYTES} budget")

    # Round trip: loads without pickle and dequantises to what was measured.
    with np.load(io.BytesIO(data), allow_pickle=False) as check:
        for key, value in arrays.items():
            assert np.array_equal(check[key], value), key
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in sorted(zf.infolist(), key=lambda i: -i.compress_size)[:6]:
            log.info("  %-24s %9d bytes compressed (%d raw)", info.filename,
                     info.compress_size, info.file_size)

    out: Path = args.out
    write_atomic(out / ASSET_NAME, data)
    write_atomic(out / "LICENSE", (source_dir / "LICENSE").read_bytes())
    write_atomic(out / "ATTRIBUTION.md",
                 attribution(source_dir, stats, len(data)).encode("utf-8"))
    for name in (ASSET_NAME, "LICENSE", "ATTRIBUTION.md"):
        log.info("wrote %s (%d bytes)", out / name, (out / name).stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
