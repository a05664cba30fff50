"""The measurements of benchmarks/where_error.py (issue 14): distance to the mask's border
and the ground truth's roughness, against hand-computed answers."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "where_error.py"


@pytest.fixture(scope="module")
def where_error():
    spec = importlib.util.spec_from_file_location("where_error", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_border_distance_counts_rings_inwards_and_the_image_edge_is_outside(where_error):
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    distance = where_error.border_distance(mask)
    expected = np.zeros((7, 7), int)
    expected[1:6, 1:6] = 1
    expected[2:5, 2:5] = 2
    expected[3, 3] = 3
    np.testing.assert_array_equal(distance, expected)
    # A mask touching the image edge: the edge pixels are its outermost ring.
    np.testing.assert_array_equal(where_error.border_distance(np.ones((3, 4), bool)),
                                  [[1, 1, 1, 1], [1, 2, 2, 1], [1, 1, 1, 1]])


def test_roughness_is_zero_on_a_plane_and_the_crease_angle_at_a_fold(where_error):
    plane = np.zeros((3, 9, 9), np.float32)
    plane[:] = np.array([0.6, 0.0, 0.8], np.float32)[:, None, None]
    plane[:, :, :2] = 0  # off the surface (zero vectors): the plane stays flat to its edge
    np.testing.assert_allclose(where_error.roughness(plane)[:, 2:], 0.0, atol=0.05)

    # A fold: left half tilted +30 deg about y, right half -30 deg. Far from the crease
    # the field is flat (0); next to it, each side turns towards the other, by less than
    # half the 60 deg crease.
    left = np.array([np.sin(np.radians(30)), 0.0, np.cos(np.radians(30))], np.float32)
    fold = np.zeros((3, 9, 20), np.float32)
    fold[:, :, :10] = left[:, None, None]
    fold[:, :, 10:] = (left * [-1, 1, 1])[:, None, None]
    rough = where_error.roughness(fold)
    np.testing.assert_allclose(rough[:, :4], 0.0, atol=0.05)
    assert 5.0 < rough[4, 9] < 30.0 and rough[4, 9] == pytest.approx(rough[4, 10], abs=1e-3)
