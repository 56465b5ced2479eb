"""Per-domain evaluation tables and the leave-one-domain-out (LODO) summary.

``per_domain_table`` turns a prediction table (one row per evaluated sample) into one row per (modality, domain) with
AUROC and its patient-level bootstrap CI, thresholded rates, calibration and grading agreement. ``summarize_lodo``
condenses that into one row per modality: mean and worst held-out AUROC, mean source AUROC and the domain gap
(WILDS definition: source minus held-out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mammopath.errors import ConfigError
from mammopath.metrics.classification import (
    auroc,
    binary_metrics,
    bootstrap_ci,
    domain_gap,
    quadratic_weighted_kappa,
)

NAN = float("nan")

REQUIRED_COLUMNS = ("domain", "modality", "score", "label", "patient_id")
GRADE_COLUMNS = ("grade_true", "grade_pred")

TABLE_COLUMNS = [
    "modality",
    "domain",
    "role",
    "n",
    "n_patients",
    "n_pos",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "sens_at_spec",
    "ece",
    "qwk",
]

SUMMARY_COLUMNS = [
    "modality",
    "n_heldout_domains",
    "mean_heldout_auroc",
    "worst_heldout_auroc",
    "worst_heldout_domain",
    "n_source_domains",
    "mean_source_auroc",
    "domain_gap",
]


def _role(group: pd.DataFrame, modality: str, domain: str) -> str:
    if "is_source" not in group.columns:
        return "heldout"
    flags = group["is_source"]
    if flags.isna().any():
        raise ConfigError(f"column 'is_source' is missing for some rows of modality {modality!r}, domain {domain!r}")
    values = set(flags.astype(bool).tolist())
    if len(values) > 1:
        raise ConfigError(
            f"modality {modality!r}, domain {domain!r} has rows with is_source True and False; a domain is either a "
            "training (source) domain or the held-out one within one evaluation"
        )
    return "source" if values.pop() else "heldout"


def _qwk(group: pd.DataFrame, modality: str, domain: str) -> float:
    if not all(c in group.columns for c in GRADE_COLUMNS):
        return NAN
    graded = group.dropna(subset=list(GRADE_COLUMNS))
    if graded.empty:
        return NAN
    if "grade_scheme" in graded.columns:
        schemes = graded["grade_scheme"].dropna().unique()
        if len(schemes) > 1:
            raise ConfigError(
                f"modality {modality!r}, domain {domain!r} mixes grade schemes {sorted(map(str, schemes))}; "
                "compute kappa per scheme (split the domain)"
            )
    t = graded["grade_true"].to_numpy(dtype=np.float64)
    p = graded["grade_pred"].to_numpy(dtype=np.float64)
    # Kappa does not depend on classes that never occur (the weights' scale cancels), so the observed range suffices.
    num_classes = max(2, int(max(t.max(), p.max())) + 1)
    return quadratic_weighted_kappa(t, p, num_classes)


def per_domain_table(
    df: pd.DataFrame,
    *,
    threshold: float | Mapping[str, float] = 0.5,
    specificity: float = 0.9,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """One row of metrics per (modality, domain) of a prediction table.

    Args:
        df: one row per evaluated sample with columns ``domain``, ``modality``, ``score`` (probability of
            malignancy), ``label`` (0/1, empty for unlabelled rows, which binary metrics skip), ``patient_id``;
            optionally ``is_source`` (bool: the domain was used in training), and ``grade_true``/``grade_pred``
            (with ``grade_scheme``) for grading.
        threshold: operating threshold for accuracy/sensitivity/specificity, one value or one per modality; fit it on
            source validation data (``threshold_at_specificity``), never on the domains in this table.
        specificity: target specificity for ``sens_at_spec``.
        n_boot: bootstrap resamples of patients for the AUROC CI (0 = no CI, e.g. during validation).
        alpha: 1 - CI coverage.
        seed: bootstrap seed.

    Returns:
        Columns ``modality, domain, role, n, n_patients, n_pos, auroc, auroc_ci_low, auroc_ci_high, accuracy,
        balanced_accuracy, sensitivity, specificity, sens_at_spec, ece, qwk``, sorted by modality and domain.
        ``role`` is ``source`` or ``heldout`` (``heldout`` for every domain when ``is_source`` is absent). Metrics
        that are undefined (one class, no grades) are NaN.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"prediction table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}")
    if df["patient_id"].isna().any():
        raise ConfigError("prediction table has rows without patient_id; the bootstrap resamples patients")
    rows = []
    for (modality, domain), group in df.groupby(["modality", "domain"], sort=True, dropna=False):
        modality, domain = str(modality), str(domain)
        if isinstance(threshold, Mapping):
            if modality not in threshold:
                raise ConfigError(f"threshold mapping has no entry for modality {modality!r}")
            thr = float(threshold[modality])
        else:
            thr = float(threshold)
        labelled = group.dropna(subset=["label"])
        if labelled["score"].isna().any():
            raise ConfigError(f"modality {modality!r}, domain {domain!r}: some labelled rows have no score")
        row: dict[str, object] = {
            "modality": modality,
            "domain": domain,
            "role": _role(group, modality, domain),
            "n": len(labelled),
            "n_pos": 0,
            "n_patients": int(labelled["patient_id"].nunique()),
            "qwk": _qwk(group, modality, domain),
        }
        if len(labelled):
            scores = labelled["score"].to_numpy(dtype=np.float64)
            labels = labelled["label"].to_numpy(dtype=np.float64)
            m = binary_metrics(scores, labels, threshold=thr, specificity=specificity)
            low, high = NAN, NAN
            if n_boot > 0:
                groups = labelled["patient_id"].to_numpy()
                low, high = bootstrap_ci(scores, labels, groups, metric=auroc, n_boot=n_boot, alpha=alpha, seed=seed)
            row.update({k: m[k] for k in TABLE_COLUMNS if k in m})
            row.update(auroc_ci_low=low, auroc_ci_high=high)
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.astype({"n": "int64", "n_patients": "int64", "n_pos": "int64"}).reset_index(drop=True)


def summarize_lodo(table: pd.DataFrame) -> pd.DataFrame:
    """One row per modality: mean and worst held-out AUROC, mean source AUROC, domain gap.

    ``domain_gap`` = mean source AUROC - mean held-out AUROC (WILDS: in-distribution minus out-of-distribution).
    Domains whose AUROC is NaN (a single class) are left out of means and of the worst domain. Pass the rows of one
    LODO fold, or the held-out rows of all folds with their source rows, as the study design requires.
    """
    missing = [c for c in ("modality", "domain", "role", "auroc") if c not in table.columns]
    if missing:
        raise ConfigError(f"table lacks column(s) {missing}; build it with per_domain_table")
    rows = []
    for modality, group in table.groupby("modality", sort=True):
        held = group[(group["role"] == "heldout") & group["auroc"].notna()]
        src = group[(group["role"] == "source") & group["auroc"].notna()]
        mean_held = float(held["auroc"].mean()) if len(held) else NAN
        mean_src = float(src["auroc"].mean()) if len(src) else NAN
        if len(held):
            i = int(np.argmin(held["auroc"].to_numpy(dtype=np.float64)))
            worst_auc, worst_domain = float(held["auroc"].iloc[i]), str(held["domain"].iloc[i])
        else:
            worst_auc, worst_domain = NAN, ""
        rows.append(
            {
                "modality": str(modality),
                "n_heldout_domains": len(held),
                "mean_heldout_auroc": mean_held,
                "worst_heldout_auroc": worst_auc,
                "worst_heldout_domain": worst_domain,
                "n_source_domains": len(src),
                "mean_source_auroc": mean_src,
                "domain_gap": domain_gap(mean_src, mean_held),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
