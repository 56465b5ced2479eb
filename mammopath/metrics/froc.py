"""Lesion-level FROC in the CAMELYON16 definition (Ehteshami Bejnordi et al., JAMA 2017).

Follows the official evaluation script (computationalpathologygroup/Camelyon16, ``Python/Evaluation_FROC.py``):

- a detection is a point ``(prob, x, y)`` in slide coordinates; it hits the lesion whose label the evaluation mask has
  at that point. Each lesion counts once, with the highest probability among its detections;
- a detection on background, and every detection on a slide without tumour, is a false positive;
- a detection on an isolated-tumour-cell (ITC) lesion is neither a hit nor a false positive, and ITC lesions are not
  in the sensitivity denominator;
- for every threshold, FP rate = FPs at or above it / number of slides, sensitivity = hit lesions at or above it /
  non-ITC lesions; the score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 FPs per slide, read off the curve by
  linear interpolation (as the challenge's scoring code does with ``numpy.interp``; beyond the largest FP rate
  reached, the last sensitivity).

Building the evaluation masks (75 µm dilation, ITC = major axis < 275 µm) is data preparation, not part of this
function: pass labelled masks and the ITC ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from mammopath.errors import ConfigError
from mammopath.metrics._arrays import to_numpy

CAMELYON16_FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class FROCResult(TypedDict):
    """What :func:`froc` returns."""

    fp_rates: list[float]  # the FP-per-slide rates asked for
    sensitivities: list[float]  # sensitivity at each of ``fp_rates``
    score: float  # mean of ``sensitivities`` (the CAMELYON16 FROC score)
    thresholds: np.ndarray  # curve thresholds, decreasing, starting at +inf (nothing detected)
    fp_per_slide: np.ndarray  # curve x, one per threshold (non-decreasing)
    sensitivity: np.ndarray  # curve y, one per threshold (non-decreasing)
    n_slides: int
    n_lesions: int  # non-ITC lesions on tumour slides (the sensitivity denominator)


def _detections(value: Any, slide: str) -> np.ndarray:
    d = to_numpy(value, name=f"detections[{slide!r}]", dtype=np.float64)
    if d.size == 0:
        return np.zeros((0, 3))
    if d.ndim != 2 or d.shape[1] != 3:
        raise ConfigError(f"detections[{slide!r}] must have shape (K, 3) of (prob, x, y), got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ConfigError(f"detections[{slide!r}] contain NaN or inf values")
    return d


def froc(
    detections: Mapping[str, Any],
    lesion_masks: Mapping[str, Any],
    *,
    is_tumor_slide: Mapping[str, bool] | None = None,
    exclude_itc: Mapping[str, Sequence[int] | set[int]] | None = None,
    fp_rates: Sequence[float] = CAMELYON16_FP_RATES,
    downsample: float = 1.0,
    drop_lowest_threshold: bool = False,
) -> FROCResult:
    """Lesion-level free-response ROC and the CAMELYON16 FROC score.

    Args:
        detections: per slide id, a (K, 3) array of ``(prob, x, y)``, coordinates in the slide frame (level 0 for
            CAMELYON16). A slide with no detections may be missing or have an empty array.
        lesion_masks: per slide id, a labelled integer evaluation mask (0 = background, i = lesion i), indexed
            ``mask[y // downsample, x // downsample]``. Needed for every tumour slide; ignored for normal slides.
        is_tumor_slide: per slide id, whether it contains tumour. When given, its keys are the evaluated slides (the
            FP-rate denominator) and detections/masks for other slides are an error. When omitted, the slides are
            those in ``detections`` or ``lesion_masks`` and a slide is a tumour slide when its mask has a lesion.
        exclude_itc: per slide id, the labels of ITC lesions (neither hits nor false positives).
        fp_rates: FP-per-slide rates at which sensitivity is read and averaged.
        downsample: factor from detection coordinates to mask pixels (``2**5`` for level-0 points on a level-5
            mask, as in the official script).
        drop_lowest_threshold: reproduce a quirk of the official script, which sweeps thresholds over the
            distinct probabilities (including 0 for unhit and ITC lesions) but skips the lowest one. Off by default:
            every detection probability is then a threshold. Both agree whenever some lesion is missed or is ITC
            and no detection has probability 0.

    Returns:
        A :class:`FROCResult`; sensitivities and score are NaN when there is no non-ITC lesion.
    """
    rates = [float(r) for r in fp_rates]
    if not rates or any(r < 0 for r in rates):
        raise ConfigError(f"fp_rates must be non-empty and >= 0, got {list(fp_rates)!r}")
    if downsample <= 0:
        raise ConfigError(f"downsample must be > 0, got {downsample!r}")
    itc_map = exclude_itc or {}
    if is_tumor_slide is not None:
        slides = list(is_tumor_slide)
        extra = (set(detections) | set(lesion_masks) | set(itc_map)) - set(slides)
        if extra:
            raise ConfigError(
                f"detections/lesion_masks/exclude_itc name slides missing from is_tumor_slide: {sorted(extra)[:5]}"
            )
    else:
        slides = sorted(set(detections) | set(lesion_masks))
    if not slides:
        raise ConfigError("froc needs at least one slide")

    fp_probs: list[np.ndarray] = []
    hit_probs: list[float] = []
    n_lesions = 0
    unhit_slot = False  # some lesion (ITC included) without a hit: the official script then has a 0 probability
    for slide in slides:
        det = _detections(detections.get(slide, np.zeros((0, 3))), slide)
        mask_value = lesion_masks.get(slide)
        if is_tumor_slide is not None:
            tumor = bool(is_tumor_slide[slide])
        else:
            tumor = mask_value is not None and bool(np.any(to_numpy(mask_value, name="mask")))
        if not tumor:
            fp_probs.append(det[:, 0])
            continue
        if mask_value is None:
            raise ConfigError(f"tumour slide {slide!r} has no lesion mask in lesion_masks")
        mask = to_numpy(mask_value, name=f"lesion_masks[{slide!r}]")
        if mask.ndim != 2:
            raise ConfigError(f"lesion_masks[{slide!r}] must be a 2-D labelled mask, got shape {mask.shape}")
        mask = mask.astype(np.int64)
        lesion_ids = set(np.unique(mask[mask > 0]).tolist())
        itc = {int(i) for i in itc_map.get(slide, ())}
        if not itc <= lesion_ids:
            raise ConfigError(f"exclude_itc[{slide!r}] names labels not in its mask: {sorted(itc - lesion_ids)}")
        n_lesions += len(lesion_ids - itc)

        xi = np.floor(det[:, 1] / downsample).astype(np.int64)
        yi = np.floor(det[:, 2] / downsample).astype(np.int64)
        outside = (xi < 0) | (yi < 0) | (xi >= mask.shape[1]) | (yi >= mask.shape[0])
        if outside.any():
            raise ConfigError(
                f"slide {slide!r}: {int(outside.sum())} detection(s) fall outside the mask "
                f"({mask.shape[1]}x{mask.shape[0]} px after downsample={downsample}); check the coordinate level"
            )
        hit = mask[yi, xi]
        fp_probs.append(det[hit == 0, 0])
        best: dict[int, float] = {}
        for label, prob in zip(hit.tolist(), det[:, 0].tolist()):
            if label > 0 and label not in itc:
                best[label] = max(prob, best.get(label, -np.inf))
        hit_probs.extend(best.values())
        unhit_slot = unhit_slot or len(best) < len(lesion_ids)

    fps = np.sort(np.concatenate(fp_probs)) if fp_probs else np.zeros(0)
    tps = np.sort(np.asarray(hit_probs, dtype=np.float64))
    candidates = np.unique(np.r_[fps, tps])
    if drop_lowest_threshold:
        if unhit_slot:
            candidates = np.unique(np.r_[candidates, 0.0])
        candidates = candidates[1:]
    thresholds = np.r_[np.inf, candidates[::-1]]
    # number of values >= t, for every threshold t
    n_fp = np.asarray(fps.size - np.searchsorted(fps, thresholds, side="left"), dtype=np.float64)
    n_tp = np.asarray(tps.size - np.searchsorted(tps, thresholds, side="left"), dtype=np.float64)
    fp_per_slide = np.divide(n_fp, len(slides))
    sensitivity = np.divide(n_tp, n_lesions) if n_lesions else np.full(thresholds.shape, np.nan)

    sens_at = [_interpolate(fp_per_slide, sensitivity, r) for r in rates]
    return FROCResult(
        fp_rates=rates,
        sensitivities=sens_at,
        score=float(np.mean(sens_at)),
        thresholds=thresholds,
        fp_per_slide=fp_per_slide,
        sensitivity=sensitivity,
        n_slides=len(slides),
        n_lesions=n_lesions,
    )


def _interpolate(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """Linear interpolation along a curve whose ``x`` is non-decreasing and may repeat.

    Between two FP rates the curve goes from the last point at the lower rate (its highest sensitivity) to the first
    point at the higher one; at an FP rate reached exactly, the highest sensitivity there. This is what
    ``numpy.interp`` returns on the official script's reversed arrays.
    """
    j = int(np.searchsorted(x, at, side="right")) - 1  # last point with x <= at; x[0] = 0 <= at
    if j >= x.size - 1:
        return float(y[-1])
    x0, x1 = x[j], x[j + 1]
    return float(y[j] + (y[j + 1] - y[j]) * (at - x0) / (x1 - x0))
