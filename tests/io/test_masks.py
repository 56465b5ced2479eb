"""Masks: polygon rasterisation against hand counts and matplotlib, ROI mask vs crop by content."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from mammopath.io.annotations import Polygon
from mammopath.io.masks import classify_roi_dicom, rasterize

# ------------------------------------------------------------------------------------ rasterisation


def _poly(points: list[list[float]], positive: bool = True) -> Polygon:
    return Polygon(np.array(points, dtype=float), "r", positive, "_0" if positive else "_2")


def test_rasterize_square_exact_pixels() -> None:
    mask = rasterize([_poly([[0, 0], [4, 0], [4, 4], [0, 4]])], (6, 7))
    expected = np.zeros((6, 7), bool)
    expected[0:4, 0:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_rasterize_triangle_hand_count() -> None:
    # centre (c+.5, r+.5) inside x+y < 8.2  <=>  c + r <= 7: row r holds 8 - r pixels, 36 in all
    mask = rasterize([_poly([[0, 0], [8.2, 0], [0, 8.2]])], (10, 10))
    assert mask.sum() == 36
    assert [int(mask[r].sum()) for r in range(10)] == [8, 7, 6, 5, 4, 3, 2, 1, 0, 0]
    assert mask[0, 7] and not mask[0, 8] and mask[7, 0] and not mask[7, 1]


def test_rasterize_hole_and_orientation() -> None:
    outer = [[0, 0], [8, 0], [8, 8], [0, 8]]
    hole = [[2, 2], [2, 6], [6, 6], [6, 2]]  # clockwise on screen; orientation must not matter
    mask = rasterize([_poly(outer), _poly(hole, positive=False)], (8, 8))
    assert mask.sum() == 64 - 16
    assert not mask[2:6, 2:6].any() and mask[1, 1] and mask[6, 6]
    np.testing.assert_array_equal(rasterize([_poly(outer[::-1])], (8, 8)), np.ones((8, 8), bool))
    # an outline drawn twice round (self-overlapping) stays filled under the nonzero winding rule
    twice = [[0, 0], [4, 0], [4, 4], [0, 4]] * 2
    assert rasterize([_poly(twice)], (8, 8)).sum() == 16


def test_rasterize_union_of_overlaps_and_clipping() -> None:
    a = _poly([[0, 0], [4, 0], [4, 4], [0, 4]])
    b = _poly([[2, 2], [6, 2], [6, 6], [2, 6]])
    assert rasterize([a, b], (8, 8)).sum() == 16 + 16 - 4
    partly_outside = _poly([[-2, -3], [3, -3], [3, 3], [-2, 3]])
    mask = rasterize([partly_outside], (5, 5))
    assert mask.sum() == 9 and mask[:3, :3].all()
    assert not rasterize([_poly([[10, 10], [20, 10], [20, 20]])], (5, 5)).any()


def test_rasterize_downsample_and_origin() -> None:
    # level-0 square [100, 140)^2, window at level-0 origin (80, 80) with downsample 4 -> mask [5, 15)^2
    square = _poly([[100, 100], [140, 100], [140, 140], [100, 140]])
    mask = rasterize([square], (20, 20), downsample=4.0, origin=(80, 80))
    expected = np.zeros((20, 20), bool)
    expected[5:15, 5:15] = True
    np.testing.assert_array_equal(mask, expected)
    # the patch to the right (origin x = 120) sees the square's right half in its first 5 columns
    right = rasterize([square], (20, 20), downsample=4.0, origin=(120, 80))
    assert right[5:15, 0:5].all() and right.sum() == 50


def test_rasterize_agrees_with_matplotlib_path() -> None:
    rng = np.random.default_rng(7)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(8, 25, 40)
    pts = np.stack([32 + radii * np.cos(angles), 30 + radii * np.sin(angles)], axis=1)
    mask = rasterize([_poly(pts.tolist())], (60, 64))
    yy, xx = np.mgrid[0:60, 0:64]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    reference = MplPath(pts).contains_points(centres).reshape(60, 64)
    np.testing.assert_array_equal(mask, reference)
    assert abs(int(mask.sum()) - _poly(pts.tolist()).area) < 0.05 * _poly(pts.tolist()).area


def test_rasterize_argument_checks() -> None:
    with pytest.raises(ValueError, match="downsample"):
        rasterize([], (4, 4), downsample=0)
    assert rasterize([], (3, 2)).shape == (3, 2)


# ------------------------------------------------------------------------------------ CBIS-DDSM ROI


def test_classify_roi_dicom(caplog: pytest.LogCaptureFixture) -> None:
    mask = np.zeros((40, 30), np.uint8)
    mask[10:20, 5:15] = 255
    crop = (np.random.default_rng(0).normal(30000, 4000, (12, 9))).clip(0, 65535).astype(np.uint16)
    assert classify_roi_dicom(mask, (40, 30)) == "mask"
    assert classify_roi_dicom(mask.astype(np.uint16) * 257, None) == "mask"  # 16-bit {0, 65535} is still binary
    assert classify_roi_dicom(np.zeros((5, 5), np.uint8)) == "mask"  # empty mask
    assert classify_roi_dicom(crop, (40, 30)) == "crop"
    assert classify_roi_dicom(np.full((5, 5), 255, np.uint8)) == "crop"  # no 0 background: not a mask
    three = mask.copy()
    three[0, 0] = 128
    assert classify_roi_dicom(three) == "crop"
    with caplog.at_level(logging.WARNING, logger="mammopath.io.masks"):
        assert classify_roi_dicom(mask, (41, 30)) == "mask"  # CBIS-DDSM masks may differ in size (pitfalls §2.9)
    assert "differs from its full image" in caplog.text
    with pytest.raises(ValueError, match="2-D"):
        classify_roi_dicom(np.zeros((4, 4, 3), np.uint8))
