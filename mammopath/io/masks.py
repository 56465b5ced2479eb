"""Masks from annotations: polygon rasterisation, and CBIS-DDSM ROI mask vs crop by content.

:func:`rasterize` turns :class:`~mammopath.io.annotations.Polygon` objects into a boolean mask of any
downsampled window (positive polygons filled, negative ones cut out as holes), and
:func:`classify_roi_dicom` tells a CBIS-DDSM ROI mask from a cropped image by pixel content.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from mammopath.io.annotations import Polygon

log = logging.getLogger(__name__)


def _add_spans(pts: np.ndarray, height: int, width: int, diff: np.ndarray) -> None:
    """Mark the pixel spans inside one polygon (nonzero winding) as +1/-1 steps along each row of ``diff``.

    Scanline fill sampled at pixel centres: a row ``r`` meets an edge when ``ymin <= r + 0.5 < ymax``
    (half-open, so shared vertices count once); column ``c`` is inside a span ``[xa, xb)`` when
    ``xa <= c + 0.5 < xb``. The crossings of a closed polygon with a row sum to zero winding, so one
    cumulative sum over all rows' sorted crossings gives the winding inside each span.
    """
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    keep = y0 != y1
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    r_start = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    r_stop = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
    counts = np.maximum(r_stop - r_start, 0)
    total = int(counts.sum())
    if total == 0:
        return
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = np.repeat(r_start, counts) + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    xs = x0[edge] + (rows + 0.5 - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    step = np.where(y1[edge] > y0[edge], 1, -1)
    order = np.lexsort((xs, rows))
    rows, xs, winding = rows[order], xs[order], np.cumsum(step[order])
    inside = np.flatnonzero(winding[:-1] != 0)
    start = np.clip(np.ceil(xs[inside] - 0.5), 0, width).astype(np.int64)
    stop = np.clip(np.ceil(xs[inside + 1] - 0.5), 0, width).astype(np.int64)
    ok = stop > start
    np.add.at(diff, (rows[inside][ok], start[ok]), 1)
    np.add.at(diff, (rows[inside][ok], stop[ok]), -1)


def rasterize(
    polygons: Sequence[Polygon],
    shape: tuple[int, int],
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterise polygons to a boolean ``(H, W)`` mask: union of positive regions minus negative ones.

    Pixel ``(r, c)`` of the mask covers level-0 ``x`` in ``origin[0] + downsample * [c, c + 1)`` (same
    for ``y`` with ``origin[1]``), i.e. the mask frame is ``(level-0 - origin) / downsample`` with
    ``origin`` in level-0 pixels (a patch's level-0 location). A pixel is inside when its centre is
    (nonzero winding, so self-overlapping hand-drawn outlines stay filled). Polygons with fewer than 3
    points have no area and are skipped.
    """
    height, width = int(shape[0]), int(shape[1])
    if height < 0 or width < 0:
        raise ValueError(f"shape must be non-negative, got {shape}")
    if not (math.isfinite(downsample) and downsample > 0):
        raise ValueError(f"downsample must be a positive number, got {downsample}")
    offset = np.asarray(origin, dtype=np.float64)
    diffs = {True: np.zeros((height, width + 1), np.int32), False: np.zeros((height, width + 1), np.int32)}
    for poly in polygons:
        if len(poly.points) >= 3:
            _add_spans((poly.points - offset) / downsample, height, width, diffs[poly.positive])
    mask = np.cumsum(diffs[True][:, :width], axis=1) > 0
    if diffs[False].any():
        mask &= ~(np.cumsum(diffs[False][:, :width], axis=1) > 0)
    return mask


# ------------------------------------------------------------------------------------ CBIS-DDSM ROI


def classify_roi_dicom(pixel_array: np.ndarray, full_shape: tuple[int, int] | None = None) -> Literal["mask", "crop"]:
    """Tell a CBIS-DDSM ROI mask from a cropped lesion image by pixel content, never by file name.

    File names of the two are swapped between mass and calc releases (dataset_formats.md §1.4).
    Rule: an image whose values are all 0 or all one maximum (``{0, max}``, binary 0/255 in practice;
    an all-zero image is an empty mask) is a ``"mask"``; anything else (greyscale with more levels,
    16-bit in practice) is a ``"crop"``. ``full_shape`` does not overrule the content because some
    CBIS-DDSM masks differ in size from their mammogram (pitfalls §2.9); a binary image whose shape
    differs from ``full_shape`` is still a mask, with a logged warning.

    Raises:
        ValueError: ``pixel_array`` is empty or not 2-D.
    """
    a = np.asarray(pixel_array)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a non-empty 2-D ROI image, got shape {a.shape}")
    hi = a.max()
    if a.min() == 0 and bool(np.all((a == 0) | (a == hi))):
        if full_shape is not None and tuple(a.shape) != tuple(full_shape):
            log.warning("binary ROI mask of shape %s differs from its full image %s", a.shape, tuple(full_shape))
        return "mask"
    return "crop"
