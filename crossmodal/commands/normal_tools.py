"""Commands on normal-map files: ``conventions``, ``convert``, ``relight`` and ``mesh``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from .. import geometry, io, viz
from ..errors import CrossmodalError, InputError
from ..fileutil import atomic_write, check_output
from ..normals import CONVENTIONS

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "conventions", help="list the normal-map conventions the converters know",
        description="List the normal-map conventions: ours (opengl) and those of other "
        "tools, with their camera frames.")
    p.set_defaults(func=run_conventions)

    p = subparsers.add_parser(
        "convert", help="convert a normal map between file formats and conventions",
        description="Read a normal map (.exr, .png, .npy) declared or assumed to be in one "
        "convention and write it in another; the output records its convention.")
    p.add_argument("input", type=Path, help="normal map to read")
    p.add_argument("output", type=Path, help="normal map to write (.exr, .png or .npy)")
    _add_read_options(p)
    p.add_argument("--to", dest="dst", default="opengl", choices=sorted(CONVENTIONS),
                   help="convention of the output (default: opengl, ours)")
    p.add_argument("--to-encoding", choices=io.ENCODINGS, default=None,
                   help="EXR only: store raw vectors (default) or the RGB encoding")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "relight", help="render a normal map under several lights",
        description="Shade a normal map with Lambertian + Blinn-Phong lighting from "
        "lights circling the view axis; writes one PNG per light and a panel.")
    p.add_argument("input", type=Path, help="normal map to read")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_read_options(p)
    p.add_argument("--albedo", type=Path, help="image to use as albedo (default: grey)")
    p.add_argument("--views", type=int, default=4, help="number of lights (default: 4)")
    p.add_argument("--elevation", type=float, default=30.0,
                   help="light elevation above the image plane, degrees (default: 30)")
    p.add_argument("--ambient", type=float, default=0.1, help="ambient term (default: 0.1)")
    p.add_argument("--specular", type=float, default=0.15,
                   help="Blinn-Phong specular strength (default: 0.15)")
    p.add_argument("--shininess", type=float, default=32.0, help="specular exponent")
    p.set_defaults(func=run_relight)

    p = subparsers.add_parser(
        "mesh", help="integrate a normal map into depth and a relief mesh",
        description="Integrate a normal map over its mask (orthographic, least squares) "
        "into a depth map up to an offset and export a relief mesh (.obj or .ply).")
    p.add_argument("input", type=Path, help="normal map to read")
    p.add_argument("--out", type=Path, required=True, help="mesh to write (.obj or .ply)")
    _add_read_options(p)
    p.add_argument("--texture", type=Path, help="image whose colours go on the vertices")
    p.add_argument("--method", choices=("poisson", "fc"), default="poisson",
                   help="integrator: sparse Poisson least squares (default) or "
                   "Frankot-Chellappa")
    p.add_argument("--pixel-size", type=float, default=1.0,
                   help="size of a pixel in the mesh's units (default: 1)")
    p.add_argument("--depth-out", type=Path, help="also save the depth map (.npy)")
    p.set_defaults(func=run_mesh)


def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src", choices=sorted(CONVENTIONS),
                   help="convention of the input when the file does not declare one "
                   "(default: opengl); overrides a declaration")
    p.add_argument("--encoding", choices=io.ENCODINGS,
                   help="EXR only: the input stores raw vectors or an RGB encoding")
    p.add_argument("--mask", type=Path, help="mask image (white = valid)")
    p.add_argument("--renormalize", action="store_true",
                   help="accept non-unit vectors and rescale them instead of failing")


def _inputs(args: argparse.Namespace, extra: str) -> dict[str, Path | None]:
    """The files a command reads (the normal map, ``--mask`` and the option ``extra``
    names, e.g. ``albedo``), described for :func:`~crossmodal.fileutil.check_output`."""
    return {"the input normal map": args.input, "the --mask image": args.mask,
            f"the --{extra} image": getattr(args, extra, None)}


def _read(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    mask = None
    if args.mask is not None:
        mask = io.read_mask(args.mask)
    return io.read_normals(args.input, convention=args.src, encoding=args.encoding,
                           mask=mask, renormalize=args.renormalize)


def _read_image_like(path: Path | None, normals: np.ndarray) -> np.ndarray | None:
    """An optional image that must be pixel-aligned with the normal map."""
    if path is None:
        return None
    image = io.read_image(path)
    if image.shape[:2] != normals.shape[:2]:
        h, w = normals.shape[:2]
        raise InputError(f"{path}: image of size {image.shape[1]}x{image.shape[0]} does not "
                         f"match the normal map's {w}x{h}; resize it to {w}x{h}")
    return image


def run_conventions(args: argparse.Namespace) -> int:
    width = max(map(len, CONVENTIONS))
    for name, conv in CONVENTIONS.items():
        sys.stdout.write(f"{name:<{width}}  {conv.description}\n")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    check_output(args.output, inputs=_inputs(args, "mask"), what="output")
    normals, valid = _read(args)
    io.write_normals(args.output, normals, convention=args.dst, mask=valid,
                     encoding=args.to_encoding)
    log.info("wrote %s (%s, %d valid pixels)", args.output, args.dst, int(valid.sum()))
    return 0


def run_relight(args: argparse.Namespace) -> int:
    if args.views < 1:
        raise CrossmodalError(f"--views must be at least 1, got {args.views}")
    inputs = _inputs(args, "albedo")
    check_output(args.out, inputs=inputs, what="--out", kind="folder")
    names = [f"relit_{k}.png" for k in range(args.views)] + ["panel.png"]
    for name in names:
        check_output(args.out / name, inputs=inputs, what="--out")
    normals, valid = _read(args)
    albedo = _read_image_like(args.albedo, normals)
    views = geometry.relight_views(
        normals, valid, n=args.views, elevation_deg=args.elevation, albedo=albedo,
        ambient=args.ambient, specular=args.specular, shininess=args.shininess)
    for name, view in zip(names, views):
        io.write_image(args.out / name, np.clip(view, 0.0, 1.0))
    tiles = [viz.normals_to_rgb(normals, valid)] + [np.clip(v, 0, 1) for v in views]
    labels = ["normals"] + [f"light {k}" for k in range(len(views))]
    io.write_image(args.out / names[-1], viz.panel(tiles, labels))
    log.info("wrote %d relit views and panel.png to %s", len(views), args.out)
    return 0


def run_mesh(args: argparse.Namespace) -> int:
    # Checked before the integration rather than when the mesh is written.
    if args.out.suffix.lower() not in geometry.MESH_FORMATS:
        raise InputError(f"--out {args.out}: name a mesh file ending in "
                         f"{' or '.join(geometry.MESH_FORMATS)}")
    inputs = _inputs(args, "texture")
    check_output(args.out, inputs=inputs, what="--out")
    depth_out = args.depth_out
    if depth_out is not None:
        # The name np.save gives the file (never the mesh's, an .obj or .ply).
        depth_out = depth_out if depth_out.suffix == ".npy" else Path(f"{depth_out}.npy")
        check_output(depth_out, inputs=inputs, what="--depth-out")
    normals, valid = _read(args)
    colors = _read_image_like(args.texture, normals)
    depth = geometry.integrate_normals(normals, valid, pixel_size=args.pixel_size,
                                       method=args.method)
    mesh = geometry.depth_to_mesh(depth, valid, pixel_size=args.pixel_size,
                                  colors=colors, normals=normals)
    geometry.write_mesh(args.out, mesh)
    if depth_out is not None:
        atomic_write(depth_out, lambda tmp: np.save(tmp, depth))
    log.info("wrote %s (%d vertices, %d faces)", args.out, len(mesh.vertices), len(mesh.faces))
    return 0
