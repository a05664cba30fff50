"""Pictures: normal maps, error maps, relit views and labelled panels of them.

Everything returns RGB ``uint8`` arrays ``(H, W, 3)`` ready for
:func:`crossmodal.io.write_image` or TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .io import quantize
from .normals import encode_rgb

__all__ = ["error_to_rgb", "normals_to_rgb", "panel", "plot_curves", "to_uint8"]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] (clipped) or uint8, ``(H, W)`` or ``(H, W, 3)`` -> uint8 RGB."""
    image = quantize(image, 8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image


def normals_to_rgb(
    normals: np.ndarray, valid: np.ndarray | None = None, background: float = 1.0
) -> np.ndarray:
    """Our ``(H, W, 3)`` normals as the usual picture ``(n + 1) / 2``; invalid pixels get
    ``background`` (white by default, so the face stands out on a page)."""
    rgb = encode_rgb(normals)
    invalid = ~np.any(normals != 0, axis=-1) if valid is None else ~valid
    rgb[invalid] = background
    return to_uint8(rgb)


def error_to_rgb(
    errors: np.ndarray, valid: np.ndarray, vmax: float = 45.0, background: float = 1.0
) -> np.ndarray:
    """Angular errors in degrees ``(H, W)`` through the perceptually uniform *inferno*
    colour map, 0 deg black to ``vmax`` and above bright yellow."""
    scaled = np.clip(np.nan_to_num(errors) / vmax, 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_INFERNO)
    rgb = bgr[..., ::-1].copy()
    rgb[~valid] = int(background * 255)
    return rgb


def panel(
    tiles: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    pad: int = 4,
) -> np.ndarray:
    """Lay tiles out on a white grid, each with its label above it.

    Tiles may differ in size; each cell is as large as the largest tile. ``ncols``
    defaults to all tiles in one row.
    """
    tiles = [to_uint8(t) for t in tiles]
    if not tiles:
        raise ValueError("panel needs at least one tile")
    ncols = len(tiles) if ncols is None else max(1, ncols)
    nrows = -(-len(tiles) // ncols)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, cell_w / 400), 1
    label_h = int(cv2.getTextSize("Ag", font, scale, thick)[0][1] * 2.2) if labels else 0
    out = np.full((nrows * (cell_h + label_h + pad) + pad, ncols * (cell_w + pad) + pad, 3),
                  255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        y = pad + r * (cell_h + label_h + pad)
        x = pad + c * (cell_w + pad)
        if labels:
            cv2.putText(out, str(labels[i]), (x + 2, y + int(label_h * 0.7)), font, scale,
                        (0, 0, 0), thick, cv2.LINE_AA)
        out[y + label_h:y + label_h + tile.shape[0], x:x + tile.shape[1]] = tile
    return out


def plot_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    size: tuple[int, int] = (640, 400),
) -> np.ndarray:
    """A line plot of named ``(xs, ys)`` series on shared axes, drawn with OpenCV (no
    plotting library needed), as an RGB uint8 ``(H, W, 3)`` image."""
    width, height = size
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 64, 16, 36, 44
    xs = np.concatenate([np.asarray(x, float) for x, _ in series.values()] or [np.zeros(1)])
    ys = np.concatenate([np.asarray(y, float) for _, y in series.values()] or [np.zeros(1)])
    finite = np.isfinite(ys)
    x0, x1 = float(xs.min()), float(max(xs.max(), xs.min() + 1e-9))
    y0, y1 = (float(ys[finite].min()), float(ys[finite].max())) if finite.any() else (0, 1)
    pad = 0.05 * max(y1 - y0, 1e-9)
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x, y):
        u = left + (np.asarray(x, float) - x0) / (x1 - x0) * (width - left - right)
        v = height - bottom - (np.asarray(y, float) - y0) / (y1 - y0) * (height - top - bottom)
        return np.stack([u, v], -1)

    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (200, 200, 200)
    for t in np.linspace(0, 1, 5):
        yv = y0 + t * (y1 - y0)
        v = int(round(to_px(x0, yv)[1]))
        cv2.line(image, (left, v), (width - right, v), grey, 1)
        cv2.putText(image, f"{yv:.3g}", (4, v + 4), font, 0.4, black, 1, cv2.LINE_AA)
        xv = x0 + t * (x1 - x0)
        u = int(round(to_px(xv, y0)[0]))
        cv2.putText(image, f"{xv:.4g}", (u - 12, height - bottom + 16), font, 0.4, black, 1,
                    cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), black, 1)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for k, (name, (x, y)) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        keep = np.isfinite(np.asarray(y, float))
        points = np.round(to_px(np.asarray(x, float)[keep], np.asarray(y, float)[keep]))
        if len(points) > 1:
            cv2.polylines(image, [points.astype(np.int32)], False, colour, 2, cv2.LINE_AA)
        for p in points.astype(int):
            cv2.circle(image, tuple(p), 3, colour, -1, cv2.LINE_AA)
        label_w = cv2.getTextSize(name, font, 0.45, 1)[0][0]
        cv2.putText(image, name, (width - right - label_w - 8, top + 18 + 16 * k), font, 0.45,
                    colour, 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 24), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(image, xlabel, (width // 2, height - 8), font, 0.45, black, 1, cv2.LINE_AA)
    if ylabel:
        cv2.putText(image, ylabel, (left + 4, top - 4), font, 0.4, black, 1, cv2.LINE_AA)
    return image
