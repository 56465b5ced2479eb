"""Evaluation metrics: classification, localization, lesion-level FROC and per-domain LODO tables.

Plain functions on numpy arrays / torch tensors returning floats (or pandas tables for the per-domain report), used by
the LightningModule at epoch end and by ``mammopath report``.
"""

from mammopath.metrics.classification import (
    auroc,
    binary_metrics,
    bootstrap_ci,
    domain_gap,
    expected_calibration_error,
    multiclass_accuracy,
    quadratic_weighted_kappa,
    sensitivity_at_specificity,
    threshold_at_specificity,
)
from mammopath.metrics.domain import domain_point_metrics, per_domain_table, summarize_lodo
from mammopath.metrics.froc import CAMELYON16_FP_RATES, FROCResult, froc
from mammopath.metrics.localization import box_from_heatmap, iou_dice, pixel_average_precision, pointing_game

__all__ = [
    "CAMELYON16_FP_RATES",
    "FROCResult",
    "auroc",
    "binary_metrics",
    "bootstrap_ci",
    "box_from_heatmap",
    "domain_gap",
    "domain_point_metrics",
    "expected_calibration_error",
    "froc",
    "iou_dice",
    "multiclass_accuracy",
    "per_domain_table",
    "pixel_average_precision",
    "pointing_game",
    "quadratic_weighted_kappa",
    "sensitivity_at_specificity",
    "summarize_lodo",
    "threshold_at_specificity",
]
