"""Pictures: normal maps, error maps, panels and curves."""

import numpy as np

from crossmodal import viz
from crossmodal.shapes import orthographic_sphere


def test_normals_to_rgb_encodes_and_paints_invalid_pixels():
    sphere = orthographic_sphere(33)
    rgb = viz.normals_to_rgb(sphere.normals)
    assert rgb.dtype == np.uint8 and rgb.shape == (33, 33, 3)
    np.testing.assert_array_equal(rgb[16, 16], [128, 128, 255])  # (0, 0, 1)
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])  # background: white
    assert (viz.normals_to_rgb(sphere.normals, background=0.0)[0, 0] == 0).all()


def test_error_map_runs_from_black_to_yellow():
    errors = np.array([[0.0, 45.0, 90.0]])
    rgb = viz.error_to_rgb(errors, np.array([[True, True, False]]), vmax=45.0)
    assert rgb[0, 0].max() < 10  # inferno starts black
    assert rgb[0, 1, 0] > 200 and rgb[0, 1, 1] > 200 and rgb[0, 1, 2] < 200  # pale yellow
    np.testing.assert_array_equal(rgb[0, 2], [255, 255, 255])  # invalid: background


def test_panel_lays_out_tiles_with_labels():
    tiles = [np.zeros((10, 20, 3)), np.ones((10, 20, 3)), np.full((5, 5), 0.5)]
    out = viz.panel(tiles, ["a", "b", "c"], ncols=2, pad=4)
    # two rows of cells 10 + label high, two columns 20 wide, 4 px padding everywhere
    assert out.shape[1] == 2 * (20 + 4) + 4
    assert out.shape[0] > 2 * (10 + 4) + 4
    unlabelled = viz.panel(tiles[:2], pad=0)
    assert unlabelled.shape == (10, 40, 3)
    assert (unlabelled[:, :20] == 0).all() and (unlabelled[:, 20:] == 255).all()


def test_plot_curves_draws_each_series_in_its_colour():
    img = viz.plot_curves({"a": ([0, 1, 2], [3.0, 2.0, 1.0]), "b": ([0, 2], [1.0, 3.0])},
                          title="t")
    assert img.shape == (400, 640, 3) and img.dtype == np.uint8
    blue = np.all(img == (31, 119, 180), axis=-1).sum()
    orange = np.all(img == (255, 127, 14), axis=-1).sum()
    assert blue > 300 and orange > 300  # lines, markers and legend of both series
