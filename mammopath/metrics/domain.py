"""Per-domain evaluation tables and the leave-one-domain-out (LODO) summary.

``per_domain_table`` turns a prediction table (one row per evaluated sample) into one row per (modality, domain) with
AUROC and its patient-level bootstrap CI and every metric of the registry :data:`DOMAIN_METRICS` (thresholded rates,
calibration, grading agreement, pointing game, BACH 4-class accuracy). ``summarize_lodo``
condenses that into one row per modality: mean and worst held-out AUROC, mean source AUROC and the domain gap
(WILDS definition: source minus held-out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from mammopath.errors import ConfigError
from mammopath.metrics._arrays import to_numpy
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


@dataclass(frozen=True)
class Settings:
    """What the per-domain metrics need besides the predictions."""

    threshold: float = 0.5
    specificity: float = 0.9
    n_bins: int = 15


class DomainData:
    """The rows of one (modality, domain) with what several metrics share, computed once."""

    def __init__(self, group: pd.DataFrame, modality: str, domain: str, settings: Settings) -> None:
        self.group, self.modality, self.domain, self.settings = group, modality, domain, settings

    @cached_property
    def labelled(self) -> pd.DataFrame:
        labelled = self.group.dropna(subset=["label"])
        if labelled["score"].isna().any():
            raise ConfigError(f"modality {self.modality!r}, domain {self.domain!r}: some labelled rows have no score")
        return labelled

    @cached_property
    def binary(self) -> dict[str, float]:
        if self.labelled.empty:
            return {}
        s = self.labelled["score"].to_numpy(dtype=np.float64)
        y = self.labelled["label"].to_numpy(dtype=np.float64)
        st = self.settings
        return binary_metrics(s, y, threshold=st.threshold, specificity=st.specificity, n_bins=st.n_bins)


@dataclass(frozen=True)
class DomainMetric:
    """A per-domain metric: ``fn(data) -> float`` (NaN when undefined); ``logged`` ones go to TensorBoard."""

    name: str
    fn: Callable[[DomainData], float]
    logged: bool = True


def _binary(name: str) -> Callable[[DomainData], float]:
    return lambda d: float(d.binary.get(name, NAN))


def _qwk(d: DomainData) -> float:
    group = d.group
    if not all(c in group.columns for c in GRADE_COLUMNS):
        return NAN
    graded = group.dropna(subset=list(GRADE_COLUMNS))
    if graded.empty:
        return NAN
    if "grade_scheme" in graded.columns:
        schemes = graded["grade_scheme"].dropna().unique()
        if len(schemes) > 1:
            raise ConfigError(
                f"modality {d.modality!r}, domain {d.domain!r} mixes grade schemes {sorted(map(str, schemes))}; "
                "compute kappa per scheme (split the domain)"
            )
    t = graded["grade_true"].to_numpy(dtype=np.float64)
    p = graded["grade_pred"].to_numpy(dtype=np.float64)
    # Kappa does not depend on classes that never occur (the weights' scale cancels), so the observed range suffices.
    num_classes = max(2, int(max(t.max(), p.max())) + 1)
    return quadratic_weighted_kappa(t, p, num_classes)


def _pointing_game(d: DomainData) -> float:
    if "pointing_hit" not in d.group.columns:
        return NAN
    hits = d.group["pointing_hit"].dropna()
    return float(hits.mean()) if len(hits) else NAN


def _bach4_accuracy(d: DomainData) -> float:
    needed = ("grade_scheme", "grade_true", "bach4_pred")
    if not all(c in d.group.columns for c in needed):
        return NAN
    rows = d.group[(d.group["grade_scheme"] == "bach4") & d.group["grade_true"].notna()]
    rows = rows[rows["bach4_pred"].notna() & (rows["bach4_pred"] >= 0)]
    return float((rows["bach4_pred"] == rows["grade_true"]).mean()) if len(rows) else NAN


#: The per-domain metrics, in table order. Adding a metric is one entry here: it then appears in
#: ``metrics_by_domain.csv``, the report and (when ``logged``) TensorBoard as ``{stage}/{domain}/{name}``.
DOMAIN_METRICS: tuple[DomainMetric, ...] = (
    DomainMetric("auroc", _binary("auroc")),
    DomainMetric("accuracy", _binary("accuracy")),
    DomainMetric("balanced_accuracy", _binary("balanced_accuracy")),
    DomainMetric("sensitivity", _binary("sensitivity"), logged=False),
    DomainMetric("specificity", _binary("specificity"), logged=False),
    DomainMetric("sens_at_spec", _binary("sens_at_spec")),
    DomainMetric("ece", _binary("ece")),
    DomainMetric("qwk", _qwk),
    DomainMetric("pointing_game", _pointing_game),
    DomainMetric("bach4_accuracy", _bach4_accuracy),
)

COUNT_COLUMNS = ["n", "n_patients", "n_pos"]
CI_COLUMNS = ["auroc_ci_low", "auroc_ci_high"]
TABLE_COLUMNS = ["modality", "domain", "role", *COUNT_COLUMNS, "auroc", *CI_COLUMNS] + [
    m.name for m in DOMAIN_METRICS if m.name != "auroc"
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


def logged_metric_names() -> list[str]:
    """Names of the per-domain metrics written to TensorBoard."""
    return [m.name for m in DOMAIN_METRICS if m.logged]


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


def per_domain_table(
    df: pd.DataFrame,
    *,
    threshold: float | Mapping[str, float] = 0.5,
    specificity: float = 0.9,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    n_bins: int = 15,
) -> pd.DataFrame:
    """One row of metrics per (modality, domain) of a prediction table (the metrics of :data:`DOMAIN_METRICS`).

    Args:
        df: one row per evaluated sample with columns ``domain``, ``modality``, ``score`` (probability of
            malignancy), ``label`` (0/1, empty for unlabelled rows, which binary metrics skip), ``patient_id``;
            optionally ``is_source`` (bool: the domain was used in training), ``grade_true``/``grade_pred``
            (with ``grade_scheme``) for grading, ``pointing_hit`` and ``bach4_pred``.
        threshold: operating threshold for accuracy/sensitivity/specificity, one value or one per modality; fit it on
            source validation data (``threshold_at_specificity``), never on the domains in this table.
        specificity: target specificity for ``sens_at_spec``.
        n_boot: bootstrap resamples of patients for the AUROC CI (0 = no CI, e.g. during validation).
        alpha: 1 - CI coverage.
        seed: bootstrap seed.
        n_bins: calibration bins of ``ece``.

    Returns:
        :data:`TABLE_COLUMNS`, sorted by modality and domain. ``role`` is ``source`` or ``heldout`` (``heldout`` for
        every domain when ``is_source`` is absent). Metrics that are undefined (one class, no grades) are NaN.
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
        data = DomainData(group, modality, domain, Settings(thr, specificity, n_bins))
        labelled = data.labelled
        row: dict[str, object] = {
            "modality": modality,
            "domain": domain,
            "role": _role(group, modality, domain),
            "n": len(labelled),
            "n_patients": int(labelled["patient_id"].nunique()),
            "n_pos": int(data.binary.get("n_pos", 0)),
        }
        row.update({m.name: m.fn(data) for m in DOMAIN_METRICS})
        low, high = NAN, NAN
        if n_boot > 0 and len(labelled):
            scores = labelled["score"].to_numpy(dtype=np.float64)
            labels = labelled["label"].to_numpy(dtype=np.float64)
            groups = labelled["patient_id"].to_numpy()
            low, high = bootstrap_ci(scores, labels, groups, metric=auroc, n_boot=n_boot, alpha=alpha, seed=seed)
        row.update(auroc_ci_low=low, auroc_ci_high=high)
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.astype({c: "int64" for c in COUNT_COLUMNS}).reset_index(drop=True)


_FEW_DOMAINS = 64
#: The binary point metrics of :func:`binary_metrics` that the per-domain tables report.
POINT_METRICS = ("auroc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "sens_at_spec", "ece")


def domain_point_metrics(
    scores: Any,
    labels: Any,
    domains: Any,
    *,
    threshold: float = 0.5,
    specificity: float = 0.9,
    n_bins: int = 15,
) -> pd.DataFrame:
    """Binary point metrics (no bootstrap) of every domain, straight from per-sample arrays or tensors.

    The values of the binary columns of :func:`per_domain_table` (each domain's :func:`binary_metrics`), for
    evaluation sets too large for a frame per domain: each domain's samples are found with one comparison pass over
    the domain codes (a stable radix sort of the codes instead beyond 64 domains), gathered once and scored from
    one ROC curve. Memory beyond the inputs is one domain's working arrays (plus one index per sample with the
    sort).

    Args:
        scores: (N,) probabilities of the positive class.
        labels: (N,) 0/1 labels (drop unlabelled samples first).
        domains: (N,) the domain of every sample: non-negative integer codes, or any labels (strings...).
        threshold: operating threshold of the thresholded rates.
        specificity: target specificity of ``sens_at_spec``.
        n_bins: calibration bins of ``ece``.

    Returns:
        One row per domain present (sorted): ``domain``, ``n``, ``n_pos`` and :data:`POINT_METRICS`.
    """
    d = to_numpy(domains, name="domains").reshape(-1)
    s = to_numpy(scores, name="scores").reshape(-1)
    y = to_numpy(labels, name="labels").reshape(-1)
    if not d.size == s.size == y.size:
        raise ConfigError(f"scores, labels and domains differ in length ({s.size}, {y.size}, {d.size})")
    names: np.ndarray | None = None
    if d.dtype.kind in "iu" and (d.size == 0 or (d.min() >= 0 and d.max() < 2**15)):
        codes = d.astype(np.int16, copy=False)
    else:
        names, inverse = np.unique(d, return_inverse=True)
        codes = inverse.astype(np.int16 if names.size < 2**15 else np.int64)
    counts = np.bincount(codes) if codes.size else np.zeros(0, dtype=np.int64)
    present = np.flatnonzero(counts)
    # few domains: one comparison pass each (no index of all samples); many: one stable sort
    order = np.argsort(codes, kind="stable") if present.size > _FEW_DOMAINS else None
    stops = np.cumsum(counts)
    rows = []
    for code in present:
        idx = np.flatnonzero(codes == code) if order is None else order[stops[code] - counts[code] : stops[code]]
        metrics = binary_metrics(s[idx], y[idx], threshold=threshold, specificity=specificity, n_bins=n_bins)
        name = names[code] if names is not None else int(code)
        rows.append(
            {"domain": name, "n": metrics["n"], "n_pos": metrics["n_pos"], **{m: metrics[m] for m in POINT_METRICS}}
        )
    return pd.DataFrame(rows, columns=["domain", "n", "n_pos", *POINT_METRICS])


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
