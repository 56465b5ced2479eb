"""Localization metrics against scipy/sklearn and hand-worked maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, jaccard_score

from mammopath.errors import ConfigError
from mammopath.metrics import box_from_heatmap, iou_dice, pixel_average_precision, pointing_game


def _random_maps(b: int = 6, h: int = 16, w: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random heatmaps with a peak near (on, beside or off) a rectangular mask; the last mask is empty."""
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.uniform(size=(b, h, w)), sigma=(0, 2, 2))
    masks = np.zeros((b, h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(b - 1):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        masks[i, y0 : y0 + rng.integers(2, 5), x0 : x0 + rng.integers(2, 5)] = True
        py, px = y0 + 1 + rng.integers(-5, 6), x0 + 1 + rng.integers(-5, 6)
        maps[i] += 0.5 * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / 4.0)
    return maps, masks


# ---------------------------------------------------------------- pointing game


def test_pointing_game_hand_worked_with_tolerance() -> None:
    maps = np.zeros((3, 8, 8))
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    maps[0, 3, 3] = 1.0  # inside: hit
    masks[1, 0:2, 0:2] = True
    maps[1, 1, 3] = 1.0  # two pixels right of the mask edge (1, 1): hit only with tolerance >= 2
    maps[2, 5, 5] = 1.0  # empty mask: excluded
    assert pointing_game(maps, masks) == pytest.approx(0.5)
    assert pointing_game(maps, masks, tolerance=1) == pytest.approx(0.5)
    assert pointing_game(maps, masks, tolerance=2) == pytest.approx(1.0)


@pytest.mark.parametrize("tolerance", [0, 1, 2.5, 4])
def test_pointing_game_matches_scipy_disk_dilation(tolerance: float) -> None:
    maps, masks = _random_maps(b=12, seed=1)
    r = math.floor(tolerance)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2) <= tolerance**2
    hits = []
    for hm, m in zip(maps, masks):
        if not m.any():
            continue
        dilated = ndimage.binary_dilation(m, structure=disk) if r > 0 else m
        hits.append(dilated[np.unravel_index(hm.argmax(), hm.shape)])
    assert pointing_game(torch.tensor(maps), torch.tensor(masks), tolerance=tolerance) == pytest.approx(np.mean(hits))


def test_pointing_game_without_masks_is_nan_and_shapes_are_checked() -> None:
    assert math.isnan(pointing_game(np.ones((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool)))
    with pytest.raises(ConfigError, match="differ in shape"):
        pointing_game(np.ones((2, 4, 4)), np.zeros((2, 8, 8), dtype=bool))
    with pytest.raises(ConfigError, match="tolerance"):
        pointing_game(np.ones((1, 4, 4)), np.ones((1, 4, 4), dtype=bool), tolerance=-1)


# ---------------------------------------------------------------- IoU / Dice


def test_iou_dice_hand_worked() -> None:
    maps = np.zeros((2, 6, 6))
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 0:2, 0:3] = True  # 6 px
    maps[0, 1:3, 1:3] = 0.9  # 4 px predicted, 2 of them on the mask
    maps[1, 0, 0] = 0.9  # no mask: excluded
    iou, dice = iou_dice(maps, masks, threshold=0.5)
    assert iou == pytest.approx(2 / 8)
    assert dice == pytest.approx(2 * 2 / 10)


def test_iou_dice_match_sklearn_per_image_mean() -> None:
    maps, masks = _random_maps(b=8, seed=2)
    thr = float(np.quantile(maps, 0.8))
    ious, dices = [], []
    for hm, m in zip(maps, masks):
        if m.any():
            ious.append(jaccard_score(m.ravel(), hm.ravel() >= thr, zero_division=0))
            dices.append(f1_score(m.ravel(), hm.ravel() >= thr, zero_division=0))
    iou, dice = iou_dice(maps, masks, thr)
    assert iou == pytest.approx(np.mean(ious))
    assert dice == pytest.approx(np.mean(dices))
    assert all(math.isnan(v) for v in iou_dice(maps[-1:], masks[-1:], thr))


# ---------------------------------------------------------------- PxAP


@pytest.mark.parametrize("decimals", [1, 6])
def test_pxap_matches_sklearn_average_precision(decimals: int) -> None:
    maps, masks = _random_maps(b=6, seed=3)
    maps = np.round(maps, decimals)  # coarse rounding creates many tied pixel scores
    annotated = masks.reshape(6, -1).any(axis=1)
    expected = average_precision_score(masks[annotated].ravel(), maps[annotated].ravel())
    assert pixel_average_precision(maps, masks) == pytest.approx(expected, abs=1e-12)
    expected_all = average_precision_score(masks.ravel(), maps.ravel())
    assert pixel_average_precision(maps, masks, include_empty=True) == pytest.approx(expected_all, abs=1e-12)


def test_pxap_perfect_map_and_no_positive() -> None:
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 1:3, 1:3] = True
    assert pixel_average_precision(masks.astype(float), masks) == pytest.approx(1.0)
    assert math.isnan(pixel_average_precision(np.ones((1, 5, 5)), np.zeros((1, 5, 5), dtype=bool)))


# ---------------------------------------------------------------- boxes


def test_box_from_heatmap_largest_component() -> None:
    h = np.zeros((10, 12))
    h[1:3, 1:3] = 1.0  # small and hottest (4 px)
    h[5:9, 6:11] = 0.8  # large (20 px)
    assert box_from_heatmap(h, 0.5) == (6, 5, 11, 9)
    assert box_from_heatmap(h, 0.9) == (1, 1, 3, 3)
    # Min-max normalization: an offset (e.g. a logit map) does not change the box.
    assert box_from_heatmap(h - 5.0, 0.5) == (6, 5, 11, 9)
    # The box covers heatmap[y0:y1, x0:x1].
    x0, y0, x1, y1 = box_from_heatmap(h, 0.5)
    assert (h[y0:y1, x0:x1] >= 0.5).all()


def test_box_from_heatmap_diagonal_connectivity_and_constant_map() -> None:
    h = np.zeros((6, 6))
    h[0, 0] = h[1, 1] = h[2, 2] = 1.0  # diagonal chain: one 8-connected component
    h[5, 5] = h[5, 4] = 1.0  # 2 px elsewhere
    assert box_from_heatmap(h, 0.5) == (0, 0, 3, 3)
    assert box_from_heatmap(np.full((4, 7), 0.3)) == (0, 0, 7, 4)
    with pytest.raises(ConfigError, match="threshold_ratio"):
        box_from_heatmap(h, 1.5)
