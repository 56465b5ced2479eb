"""Classification metrics: AUROC, thresholded rates, calibration, kappa and patient-level bootstrap CIs.

Plain functions on numpy arrays or torch tensors that return Python floats, used per domain by the evaluation
component (``mammopath.metrics.evaluation``) and the report. The maths comes from ``torchmetrics`` where it has the
metric (AUROC, accuracy, recall/specificity for balanced accuracy, sensitivity at specificity, quadratic kappa),
computed in float64; our own code remains where no library has what we need (patient-level cluster bootstrap, the
frozen-threshold search) or where its definition differs from the one we state (calibration error: see
:func:`expected_calibration_error` and ``docs/metrics.md``).

Conventions used throughout:
- ``scores`` are probabilities of the positive class (malignant / tumor) in [0, 1]; ``labels`` are 0/1.
- A sample is predicted positive when ``score >= threshold``.
- Metrics that are undefined for the data (AUROC with one class, sensitivity without positives...) are NaN rather than
  an arbitrary number, so an empty cell in a table is never mistaken for a measurement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_recall,
    binary_sensitivity_at_specificity,
    binary_specificity,
    multiclass_cohen_kappa,
)
from torchmetrics.functional.classification.roc import _binary_roc_compute
from torchmetrics.functional.classification.sensitivity_specificity import _sensitivity_at_specificity
from torchmetrics.utilities.compute import _auc_compute_without_check

from mammopath.errors import ConfigError
from mammopath.metrics._arrays import binary_inputs, check_probabilities, to_numpy

log = logging.getLogger(__name__)

NAN = float("nan")

# Tolerance when comparing an achieved specificity with the requested one (k/n is not always exact in binary).
_SPEC_TOL = 1e-12
# torchmetrics computes specificity = 1 - fps/n_neg in float32 whatever the input dtype, so an exact k/n target can
# compare as just below itself (2/3: 0.66666663 < 0.66666669); the target is lowered by this much to absorb it. It
# only matters with more than a million negatives in one evaluation set.
_TM_SPEC_TOL = 1e-6


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x, copy=True))  # a copy: pandas may hand out read-only views


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (``torchmetrics`` ``binary_auroc`` in float64; ties count 1/2).

    Equal to ``sklearn.metrics.roc_auc_score``, but NaN when only one class is present (instead of an error or
    torchmetrics' silent 0), and clipped to [0, 1] against rounding. Scores outside [0, 1] are replaced by their
    ranks scaled to [0, 1] first (torchmetrics would apply a sigmoid, which saturates and creates ties).

    Args:
        scores: any real-valued scores (higher = more likely positive); probabilities are not required here.
        labels: 0/1 ground truth.
    """
    s, y = binary_inputs(scores, labels)
    return _auroc(s, y)


def _unit_scores(s: np.ndarray) -> np.ndarray:
    """Scores as torchmetrics takes them without a sigmoid: in [0, 1], same order and ties."""
    if s.size == 0 or (s.min() >= 0.0 and s.max() <= 1.0):
        return s
    return (rankdata(s, method="dense") - 1.0) / max(1.0, float(len(np.unique(s)) - 1))


def _auroc(s: np.ndarray, y: np.ndarray) -> float:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return NAN
    value = float(binary_auroc(_t(_unit_scores(s)), _t(y), validate_args=False))
    return min(1.0, max(0.0, value))


def _auroc_and_sens_at_spec(s: np.ndarray, y: np.ndarray, specificity: float) -> tuple[float, float]:
    """:func:`auroc` and :func:`sensitivity_at_specificity` from one ROC curve (one sort instead of two).

    The same torchmetrics computations as ``binary_auroc`` and ``binary_sensitivity_at_specificity`` (their
    ``*_compute`` steps on one ``_binary_roc_compute``), so the values are those of the two public calls; the
    formatting step of those calls is a no-op here because :func:`_unit_scores` already maps scores into [0, 1]
    (``tests/metrics/test_classification.py`` checks the equality).
    """
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return NAN, NAN
    fpr, tpr, thresholds = _binary_roc_compute((_t(_unit_scores(s)), _t(y)), None)
    area = min(1.0, max(0.0, float(_auc_compute_without_check(fpr, tpr, 1.0))))
    target = max(0.0, specificity - _TM_SPEC_TOL)
    sens, _ = _sensitivity_at_specificity(tpr, 1 - fpr, thresholds, target)
    return area, float(sens)


def _roc_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ROC operating points: (thresholds, true-positive counts, false-positive counts).

    Thresholds are the distinct scores in decreasing order, preceded by ``+inf`` (everything negative); the point for
    threshold ``t`` predicts ``score >= t`` positive.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[np.inf, s_sorted[last_of_tie]], np.r_[0, tps], np.r_[0, fps]


def _operating_point_at_specificity(s: np.ndarray, y: np.ndarray, specificity: float) -> tuple[float, float]:
    """(threshold, sensitivity) of the ROC point with specificity >= target and the largest sensitivity."""
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    thresholds, tps, fps = _roc_points(s, y)
    spec = (n_neg - fps) / n_neg
    # Specificity only decreases and sensitivity only increases along the points, so the last admissible point is
    # the one with the largest sensitivity (and the lowest threshold among those that tie on it).
    ok = np.nonzero(spec >= specificity - _SPEC_TOL)[0]
    i = int(ok[-1])  # the first point (threshold +inf) always has specificity 1
    return float(thresholds[i]), (tps[i] / n_pos if n_pos else NAN)


def _check_specificity(specificity: float) -> None:
    if not 0.0 <= specificity <= 1.0:
        raise ConfigError(f"specificity must be in [0, 1], got {specificity!r}")


def threshold_at_specificity(scores: Any, labels: Any, specificity: float) -> float:
    """Decision threshold that reaches the requested specificity with the largest sensitivity.

    Fit it on SOURCE-domain VALIDATION data only and apply it, frozen, to source test and held-out domains (pass it as
    ``threshold`` to :func:`binary_metrics`). Choosing a threshold on the data it is evaluated on makes sensitivity and
    specificity optimistic, and choosing it on a held-out domain leaks that domain into the model.

    Returns:
        An observed score value ``t`` such that predicting ``score >= t`` positive has specificity >= ``specificity``
        on the given data; ``inf`` when only "everything negative" reaches it (e.g. the top score is a negative and
        ``specificity`` is 1).
    """
    _check_specificity(specificity)
    s, y = binary_inputs(scores, labels)
    if int((y == 0).sum()) == 0:
        raise ConfigError(
            "threshold_at_specificity needs at least one negative (label 0) sample to measure specificity"
        )
    return _operating_point_at_specificity(s, y, specificity)[0]


def sensitivity_at_specificity(scores: Any, labels: Any, specificity: float = 0.9) -> float:
    """Largest sensitivity among ROC operating points whose specificity is >= ``specificity``; NaN with one class.

    ``torchmetrics`` ``binary_sensitivity_at_specificity``, with the target lowered by 1e-6 against its float32
    specificity (see ``docs/metrics.md``).
    """
    _check_specificity(specificity)
    s, y = binary_inputs(scores, labels)
    return _sens_at_spec(s, y, specificity)


def _sens_at_spec(s: np.ndarray, y: np.ndarray, specificity: float) -> float:
    if y.sum() == 0 or y.sum() == y.size:
        return NAN
    target = max(0.0, specificity - _TM_SPEC_TOL)
    sens, _ = binary_sensitivity_at_specificity(_t(_unit_scores(s)), _t(y), target, validate_args=False)
    return float(sens)


def calibration_bins(probs: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of every probability: ``n_bins`` equal-width, right-closed bins on [0, 1].

    Bin ``k`` holds ``(k/n, (k+1)/n]`` and ``p = 0`` belongs to the first bin, so ``p = 1`` (a float32 sigmoid
    saturates to exactly 1.0 above a logit of about 17) is in the last bin and ``0.3`` with 10 bins in bin 2,
    ``(0.2, 0.3]``. This is the binning of ``sklearn.calibration.calibration_curve(strategy="uniform")``: edges are
    ``numpy.linspace(0, 1, n_bins + 1)`` in float64 and a value equal to an edge goes to the bin below it.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], probs, side="left")


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error of positive-class probabilities (L1, equal-width bins; :func:`calibration_bins`).

    ECE = Σ_b (n_b / n) · |mean(label in b) − mean(prob in b)|: the reliability diagram of p(y = 1), as in
    ``torchmetrics`` ``binary_calibration_error(norm="l1")``, except for the bins: torchmetrics' are left-closed,
    its edges are in the input's dtype, and it puts ``p = 1.0`` in an extra bin of its own. Ours are sklearn's (see
    :func:`calibration_bins`); ``docs/metrics.md`` shows where the two differ.
    """
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    p, y = binary_inputs(probs, labels)
    check_probabilities(p, name="probs")
    if p.size == 0:
        return NAN
    idx = calibration_bins(p, n_bins)
    conf_sum = np.bincount(idx, weights=p, minlength=n_bins)
    pos_sum = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    # sum_b (n_b/n) |pos_b/n_b - conf_b/n_b| = sum_b |pos_b - conf_b| / n
    return float(np.abs(pos_sum - conf_sum).sum() / p.size)


def binary_metrics(
    scores: Any, labels: Any, *, threshold: float = 0.5, specificity: float = 0.9, n_bins: int = 15
) -> dict[str, float]:
    """All binary malignancy metrics of one evaluation set (one domain, one split).

    Args:
        scores: probabilities of the positive class in [0, 1].
        labels: 0/1 ground truth (drop samples without a label beforehand; they are masked, never imputed).
        threshold: operating point for accuracy/sensitivity/specificity; should come from
            :func:`threshold_at_specificity` (or a fixed value) fitted on source validation data.
        specificity: target specificity for ``sens_at_spec``.
        n_bins: number of equal-width bins for ``ece``.

    Returns:
        ``auroc``, ``accuracy``, ``balanced_accuracy`` (mean of sensitivity and specificity), ``sensitivity``,
        ``specificity`` (both at ``threshold``), ``sens_at_spec`` (best sensitivity on this set's own ROC at
        specificity >= ``specificity``; an oracle operating point, reported next to the frozen-threshold numbers),
        ``ece``, ``n``, ``n_pos``, ``threshold``. Rates whose denominator is empty are NaN.
    """
    _check_specificity(specificity)
    s, y = binary_inputs(scores, labels)
    check_probabilities(s)
    n = int(y.size)
    if n == 0:
        raise ConfigError("binary_metrics got no samples; evaluate only domains/splits that have labelled samples")
    n_pos = int(y.sum())
    n_neg = n - n_pos
    # predictions are made here (score >= threshold) and given to torchmetrics as labels: its own thresholding is
    # ``score > threshold``, which would disagree with a threshold fitted as an observed score
    pred, target = _t((s >= threshold).astype(np.int64)), _t(y)
    sens = float(binary_recall(pred, target, validate_args=False)) if n_pos else NAN
    spec = float(binary_specificity(pred, target, validate_args=False)) if n_neg else NAN
    both = n_pos > 0 and n_neg > 0
    area, sens_at_spec = _auroc_and_sens_at_spec(s, y, specificity)
    return {
        "auroc": area,
        "accuracy": float(binary_accuracy(pred, target, validate_args=False)),
        "balanced_accuracy": (sens + spec) / 2.0 if both else NAN,
        "sensitivity": sens,
        "specificity": spec,
        "sens_at_spec": sens_at_spec,
        "ece": expected_calibration_error(s, y, n_bins=n_bins),
        "n": n,
        "n_pos": n_pos,
        "threshold": float(threshold),
    }


def multiclass_accuracy(logits_or_probs: Any, labels: Any) -> float:
    """Top-1 accuracy of (N, C) logits or probabilities against integer labels in [0, C) (BACH 4-class)."""
    z = to_numpy(logits_or_probs, name="logits_or_probs", dtype=np.float64)
    y = to_numpy(labels, name="labels")
    if z.ndim != 2:
        raise ConfigError(f"logits_or_probs must have shape (N, C), got {z.shape}")
    y = y.reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise ConfigError(f"logits_or_probs and labels differ in length ({z.shape[0]} vs {y.shape[0]})")
    if z.shape[0] == 0:
        raise ConfigError("multiclass_accuracy got no samples")
    y = _int_labels(y, z.shape[1], name="labels")
    return float((z.argmax(axis=1) == y).mean())


def _int_labels(y: np.ndarray, num_classes: int, *, name: str) -> np.ndarray:
    yf = y.astype(np.float64)
    bad = ~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0) | (yf >= num_classes)
    if bad.any():
        raise ConfigError(
            f"{name} must be integers in [0, {num_classes}); found {int(bad.sum())} invalid value(s), "
            f"e.g. {y[bad][0]!r}"
        )
    return yf.astype(np.int64)


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights for ordinal grades (CAMELYON17 pN, BI-RADS).

    kappa = 1 - sum(w * O) / sum(w * E), w_ij = (i - j)^2 / (K - 1)^2, O the observed confusion matrix and E the
    outer product of its marginals divided by n (``torchmetrics`` ``multiclass_cohen_kappa(weights="quadratic")``).
    NaN when agreement by chance is already perfect (sum(w * E) = 0, e.g. a single grade everywhere), as in
    ``sklearn.metrics.cohen_kappa_score(weights="quadratic")``.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 for a kappa, got {num_classes}")
    t = to_numpy(y_true, name="y_true").reshape(-1)
    p = to_numpy(y_pred, name="y_pred").reshape(-1)
    if t.shape != p.shape:
        raise ConfigError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    if t.size == 0:
        return NAN
    t = _int_labels(t, num_classes, name="y_true")
    p = _int_labels(p, num_classes, name="y_pred")
    kappa = multiclass_cohen_kappa(_t(p), _t(t), num_classes, weights="quadratic", validate_args=False)
    value = float(kappa)
    return NAN if math.isnan(value) else value


def bootstrap_ci(
    scores: Any,
    labels: Any,
    groups: Any = None,
    metric: Callable[[np.ndarray, np.ndarray], float] = auroc,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``metric`` by cluster bootstrap over ``groups`` (patients).

    Each resample draws as many groups as there are, with replacement, and keeps all samples of every drawn group.
    Images of one patient are correlated, so resampling images instead would understate the variance (Rutter 2000,
    Acad Radiol); with one image per patient both are the same. Resamples with only one class present, or on which
    the metric is NaN, are skipped (logged when more than 10% are).

    Args:
        scores: one score per sample.
        labels: 0/1 labels.
        groups: cluster id per sample (patient_id); ``None`` treats every sample as its own cluster.
        metric: ``metric(scores, labels) -> float`` on numpy arrays; AUROC by default.
        n_boot: number of resamples.
        alpha: 1 - coverage (0.05 gives a 95% interval).
        seed: seed of the resampling generator, so intervals are reproducible.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no resample was usable.
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    s, y = binary_inputs(scores, labels)
    if groups is None:
        codes = np.arange(s.size)
    else:
        g = to_numpy(groups, name="groups").reshape(-1)
        if g.size != s.size:
            raise ConfigError(f"groups and scores differ in length ({g.size} vs {s.size})")
        if pd.isna(g).any():
            raise ConfigError("groups contain missing values; every sample needs a patient/cluster id")
        codes = pd.factorize(g)[0]
    if s.size == 0:
        return NAN, NAN
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    n_groups = sizes.size
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        drawn = rng.integers(0, n_groups, size=n_groups)
        lengths = sizes[drawn]
        # indices of every sample of every drawn group: start of its group + position inside the group
        offsets = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths)
        idx = order[offsets + np.arange(int(lengths.sum()))]
        yb = y[idx]
        n_pos = int(yb.sum())
        if n_pos == 0 or n_pos == yb.size:
            continue
        v = float(metric(s[idx], yb))
        if not math.isnan(v):
            values.append(v)
    if len(values) < 0.9 * n_boot:
        log.warning("bootstrap_ci: %d of %d resamples skipped (one class or NaN metric)", n_boot - len(values), n_boot)
    if not values:
        return NAN, NAN
    low, high = np.quantile(np.asarray(values), [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def domain_gap(source_auc: float, target_auc: float) -> float:
    """Domain gap in the WILDS sense: source (in-distribution) performance minus held-out-domain performance.

    ``source_auc`` is measured on held-out data (test split) of the training domains, ``target_auc`` on the domain
    left out of training; a positive gap is the accuracy lost by moving to an unseen hospital. NaN propagates.
    """
    return float(source_auc) - float(target_auc)
