"""Localization metrics for heatmaps against lesion masks: pointing game, IoU/Dice, PxAP and heatmap boxes.

Heatmaps and masks must have the same spatial size: upsample token-grid maps to the mask size (or downsample the mask)
before calling. Images whose mask has no positive pixel are excluded from pointing game and IoU/Dice, because in the
public benchmarks an empty mask usually means "not annotated" (weak label), not "no lesion".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from mammopath.errors import ConfigError
from mammopath.metrics._arrays import to_numpy

NAN = float("nan")


def _maps_and_masks(heatmaps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    h = to_numpy(heatmaps, name="heatmaps", dtype=np.float64)
    m = to_numpy(masks, name="masks")
    if h.ndim == 2:
        h = h[None]
    if m.ndim == 2:
        m = m[None]
    if h.ndim != 3 or m.ndim != 3:
        raise ConfigError(f"heatmaps and masks must have shape (B, H, W); got {h.shape} and {m.shape}")
    if h.shape != m.shape:
        raise ConfigError(
            f"heatmaps {h.shape} and masks {m.shape} differ in shape; resize the heatmaps to the mask size first"
        )
    if not np.all(np.isfinite(h)):
        raise ConfigError("heatmaps contain NaN or inf values")
    return h, m.astype(bool)


def pointing_game(heatmaps: Any, masks: Any, tolerance: float = 0) -> float:
    """Fraction of annotated images whose heatmap maximum falls on the lesion (Zhang et al., ECCV 2016).

    A hit when the argmax pixel lies within ``tolerance`` pixels (Euclidean) of a mask pixel, i.e. inside the mask
    dilated by a disk of that radius (the original protocol uses 15 px). When several pixels share the maximum the
    first in row-major order is taken, as ``numpy.argmax`` does.

    Args:
        heatmaps: (B, H, W) relevance maps (higher = more suspicious).
        masks: (B, H, W) boolean lesion masks.
        tolerance: dilation radius in pixels (>= 0).

    Returns:
        hits / images with a non-empty mask; NaN when no image has a mask.
    """
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    h, m = _maps_and_masks(heatmaps, masks)
    hits = 0
    counted = 0
    for hb, mb in zip(h, m):
        ys, xs = np.nonzero(mb)
        if ys.size == 0:
            continue
        counted += 1
        py, px = np.unravel_index(int(np.argmax(hb)), hb.shape)
        d2 = (ys - py) ** 2 + (xs - px) ** 2
        hits += int(d2.min() <= tolerance**2)
    return hits / counted if counted else NAN


def iou_dice(heatmaps: Any, masks: Any, threshold: float) -> tuple[float, float]:
    """Mean IoU and Dice between ``heatmap >= threshold`` and the mask, over images with a non-empty mask.

    The threshold applies to the heatmap values as given; normalize maps to a common scale first (e.g. per-image
    min-max) if they are not probabilities.

    Returns:
        ``(iou, dice)``; ``(nan, nan)`` when no image has a mask.
    """
    h, m = _maps_and_masks(heatmaps, masks)
    ious: list[float] = []
    dices: list[float] = []
    for hb, mb in zip(h, m):
        area_m = int(mb.sum())
        if area_m == 0:
            continue
        pred = hb >= threshold
        inter = int((pred & mb).sum())
        area_p = int(pred.sum())
        ious.append(inter / (area_p + area_m - inter))
        dices.append(2.0 * inter / (area_p + area_m))
    if not ious:
        return NAN, NAN
    return float(np.mean(ious)), float(np.mean(dices))


def pixel_average_precision(heatmaps: Any, masks: Any, *, include_empty: bool = False) -> float:
    """PxAP: average precision of all pixels pooled over images (Choe et al., CVPR 2020), threshold-free.

    AP = sum_k (R_k - R_{k-1}) P_k over the distinct heatmap values as thresholds, without interpolation (the
    definition of ``sklearn.metrics.average_precision_score``). Heatmaps must be on a common scale across images.

    Args:
        heatmaps: (B, H, W) relevance maps.
        masks: (B, H, W) boolean lesion masks.
        include_empty: also pool images whose mask is empty (all their pixels negative). Off by default because an
            empty mask may mean "not annotated"; turn on when empty masks are verified lesion-free.

    Returns:
        PxAP in [0, 1]; NaN when the pooled pixels contain no positive.
    """
    h, m = _maps_and_masks(heatmaps, masks)
    if not include_empty:
        keep = m.reshape(m.shape[0], -1).any(axis=1)
        h, m = h[keep], m[keep]
    scores = h.reshape(-1)
    truth = m.reshape(-1)
    n_pos = int(truth.sum())
    if n_pos == 0:
        return NAN
    order = np.argsort(-scores, kind="mergesort")
    s_sorted = scores[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(truth[order])[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def box_from_heatmap(heatmap: Any, threshold_ratio: float = 0.5) -> tuple[int, int, int, int]:
    """Box around the largest connected region of a heatmap, the usual weakly-supervised localization protocol.

    The map is min-max normalized, pixels with normalized value >= ``threshold_ratio`` are kept, and the largest
    8-connected component (``scipy.ndimage.label``) is boxed. For maps whose minimum is 0 (ReLU'd CAMs) the cut is
    ``threshold_ratio * max``; normalizing makes the same ratio meaningful for logit maps and attention rollout maps,
    whose minimum is not 0. A constant map boxes the whole image.

    Args:
        heatmap: (H, W) relevance map.
        threshold_ratio: fraction of the (min-max normalized) range, in [0, 1].

    Returns:
        ``(x0, y0, x1, y1)`` in pixel-edge coordinates (``x1``/``y1`` exclusive), so the box covers
        ``heatmap[y0:y1, x0:x1]`` and has width ``x1 - x0``, the ``bbox_xyxy`` convention of torchvision.
    """
    if not 0.0 <= threshold_ratio <= 1.0:
        raise ConfigError(f"threshold_ratio must be in [0, 1], got {threshold_ratio!r}")
    h = to_numpy(heatmap, name="heatmap", dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise ConfigError(f"heatmap must be a non-empty (H, W) array, got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ConfigError("heatmap contains NaN or inf values")
    lo, hi = float(h.min()), float(h.max())
    if hi == lo:
        return 0, 0, h.shape[1], h.shape[0]
    keep = (h - lo) / (hi - lo) >= threshold_ratio
    labels, n = ndimage.label(keep, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    sizes[0] = 0  # background
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
