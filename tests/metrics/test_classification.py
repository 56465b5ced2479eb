"""Classification metrics against sklearn/torchmetrics and hand-worked examples."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from mammopath.errors import ConfigError
from mammopath.metrics import (
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


def _data(n: int = 200, seed: int = 0, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and overlapping, tied probabilities (rounding creates ties between classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    s = np.clip(0.5 + 0.25 * (y - 0.5) + 0.2 * rng.standard_normal(n), 0.0, 1.0)
    return np.round(s, decimals), y


# ---------------------------------------------------------------- AUROC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_and_torchmetrics_with_ties(seed: int) -> None:
    s, y = _data(seed=seed, decimals=1)
    ours = auroc(s, y)
    assert ours == pytest.approx(roc_auc_score(y, s), abs=1e-6)  # torchmetrics accumulates in float32
    tm = binary_auroc(torch.tensor(s), torch.tensor(y)).item()
    assert ours == pytest.approx(tm, abs=1e-6)


def test_auroc_flipped_scores_give_complement_and_tensors_are_accepted() -> None:
    s, y = _data(seed=3)
    assert auroc(1.0 - s, y) == pytest.approx(1.0 - auroc(s, y), abs=1e-6)
    bf16 = torch.tensor(s, dtype=torch.bfloat16)
    assert auroc(bf16, torch.tensor(y)) == pytest.approx(roc_auc_score(y, bf16.float().numpy()), abs=1e-6)


def test_auroc_single_class_is_nan() -> None:
    assert math.isnan(auroc([0.1, 0.9, 0.4], [1, 1, 1]))
    assert math.isnan(auroc([0.1, 0.9, 0.4], [0, 0, 0]))


def test_bad_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="labels must be 0"):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ConfigError, match="differ in length"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ConfigError, match="non-finite"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ConfigError, match="probabilities"):
        binary_metrics([0.1, 1.5], [0, 1])
    with pytest.raises(ConfigError, match="no samples"):
        binary_metrics([], [])


# ---------------------------------------------------------------- thresholded metrics


def test_binary_metrics_match_sklearn_at_threshold() -> None:
    s, y = _data(n=300, seed=4)
    thr = 0.55
    m = binary_metrics(s, y, threshold=thr, specificity=0.8)
    pred = (s >= thr).astype(int)
    assert m["n"] == 300 and m["n_pos"] == int(y.sum())
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["sens_at_spec"] == pytest.approx(tpr[(1.0 - fpr) >= 0.8 - 1e-12].max())
    assert m["ece"] == pytest.approx(expected_calibration_error(s, y))


@pytest.mark.parametrize(("seed", "decimals", "spec"), [(0, 1, 0.9), (1, 2, 0.8), (2, 6, 0.5), (3, 3, 1.0)])
def test_one_roc_equals_the_two_public_torchmetrics_calls(seed: int, decimals: int, spec: float) -> None:
    # binary_metrics computes AUROC and sensitivity at specificity from one ROC curve: bit for bit the public calls
    from torchmetrics.functional.classification import binary_sensitivity_at_specificity

    s, y = _data(n=500, seed=seed, decimals=decimals)
    m = binary_metrics(s, y, specificity=spec)
    st, yt = torch.tensor(s), torch.tensor(y)
    assert m["auroc"] == float(binary_auroc(st, yt, validate_args=False))
    assert m["sens_at_spec"] == float(binary_sensitivity_at_specificity(st, yt, spec - 1e-6, validate_args=False)[0])
    assert m["sens_at_spec"] == sensitivity_at_specificity(s, y, spec) and m["auroc"] == auroc(s, y)


def test_binary_metrics_single_class_gives_nan_where_undefined() -> None:
    m = binary_metrics([0.2, 0.7, 0.9], [0, 0, 0])
    assert math.isnan(m["auroc"]) and math.isnan(m["sensitivity"]) and math.isnan(m["balanced_accuracy"])
    assert math.isnan(m["sens_at_spec"])
    assert m["specificity"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["n_pos"] == 0


def test_threshold_at_specificity_hand_worked() -> None:
    # 10 negatives, the top score is a negative (0.95); 3 positives.
    neg = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    pos = [0.92, 0.75, 0.3]
    s = np.array(neg + pos)
    y = np.array([0] * 10 + [1] * 3)
    # spec >= 0.9 allows one FP (0.95): lowest such threshold is 0.92, which catches one positive.
    assert threshold_at_specificity(s, y, 0.9) == pytest.approx(0.92)
    assert sensitivity_at_specificity(s, y, 0.9) == pytest.approx(1 / 3)
    # spec 1 is only reached by predicting everything negative.
    assert threshold_at_specificity(s, y, 1.0) == math.inf
    assert sensitivity_at_specificity(s, y, 1.0) == 0.0
    # spec 0.8 allows 0.95 and 0.9 as FPs: threshold 0.9, still one positive; 0.7 allows 3 FPs -> 0.75 gets 2 TPs.
    assert threshold_at_specificity(s, y, 0.7) == pytest.approx(0.75)
    assert sensitivity_at_specificity(s, y, 0.7) == pytest.approx(2 / 3)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_frozen_threshold_reproduces_sens_at_spec_and_is_the_lowest_admissible(target: float) -> None:
    s, y = _data(n=250, seed=5)
    t = threshold_at_specificity(s, y, target)
    at_t = binary_metrics(s, y, threshold=t, specificity=target)
    assert at_t["specificity"] >= target
    assert at_t["sensitivity"] == pytest.approx(at_t["sens_at_spec"])
    lower = s[s < t]
    if lower.size:  # the next lower observed score breaks the specificity target
        assert binary_metrics(s, y, threshold=float(lower.max()))["specificity"] < target


def test_threshold_needs_negatives() -> None:
    with pytest.raises(ConfigError, match="negative"):
        threshold_at_specificity([0.3, 0.6], [1, 1], 0.9)


def test_ece_hand_worked_and_matches_torchmetrics() -> None:
    # bin of 0.1: confidence 0.1, frequency 0.5 -> 0.4 * 2/4; bin of 0.9: 0.9 vs 1.0 -> 0.1 * 2/4
    assert expected_calibration_error([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]) == pytest.approx(0.25)
    rng = np.random.default_rng(6)
    p = rng.uniform(0.001, 0.999, 500)
    y = (rng.uniform(size=500) < p**1.5).astype(int)  # miscalibrated on purpose
    tm = binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=15, norm="l1").item()
    assert expected_calibration_error(p, y, n_bins=15) == pytest.approx(tm, abs=1e-6)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == pytest.approx(0.0)
    # p = 1 shares the last bin [14/15, 1] with 0.95: |2 - 2.9| / 3
    assert expected_calibration_error([1.0, 0.95, 0.95], [0, 1, 1]) == pytest.approx(0.3)


# ---------------------------------------------------------------- multiclass and kappa


def test_multiclass_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((40, 4))
    y = rng.integers(0, 4, 40)
    expected = accuracy_score(y, logits.argmax(1))
    assert multiclass_accuracy(logits, y) == pytest.approx(expected)
    assert multiclass_accuracy(torch.tensor(logits).softmax(-1), torch.tensor(y)) == pytest.approx(expected)
    with pytest.raises(ConfigError, match=r"\[0, 4\)"):
        multiclass_accuracy(logits, np.r_[y[:-1], 4])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_qwk_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, 60)
    p = np.clip(t + rng.integers(-2, 3, 60), 0, 4)
    expected = cohen_kappa_score(t, p, weights="quadratic", labels=list(range(5)))
    assert quadratic_weighted_kappa(t, p, 5) == pytest.approx(expected, abs=1e-6)  # torchmetrics: float32


def test_qwk_edge_cases() -> None:
    assert quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(1.0)
    # Predicting in reverse order is worse than chance.
    assert quadratic_weighted_kappa([0, 1, 2, 3], [3, 2, 1, 0], 4) == pytest.approx(-1.0)
    assert math.isnan(quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], 4))
    with pytest.raises(ConfigError, match="integers"):
        quadratic_weighted_kappa([0, 1], [0, 1.5], 3)
    with pytest.raises(ConfigError, match="num_classes"):
        quadratic_weighted_kappa([0, 0], [0, 0], 1)


# ---------------------------------------------------------------- bootstrap


def _plain_bootstrap(s: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Independent image-level bootstrap (scipy's Mann-Whitney U = AUROC * n_pos * n_neg), for comparison."""
    rs = np.random.RandomState(seed)
    vals = []
    for _ in range(n_boot):
        i = rs.randint(0, len(s), len(s))
        pos, neg = s[i][y[i] == 1], s[i][y[i] == 0]
        if pos.size and neg.size:
            vals.append(mannwhitneyu(pos, neg).statistic / (pos.size * neg.size))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def test_size_one_clusters_match_plain_bootstrap() -> None:
    s, y = _data(n=120, seed=8, decimals=3)
    low, high = bootstrap_ci(s, y, groups=np.arange(120).astype(str), n_boot=1000, seed=0)
    ref_low, ref_high = _plain_bootstrap(s, y, 1000, seed=123)
    assert low == pytest.approx(ref_low, abs=0.03)
    assert high == pytest.approx(ref_high, abs=0.03)
    assert (high - low) == pytest.approx(ref_high - ref_low, rel=0.2)
    assert low <= auroc(s, y) <= high


def test_duplicated_images_do_not_shrink_patient_ci() -> None:
    s, y = _data(n=60, seed=9, decimals=3)
    patients = np.array([f"p{i}" for i in range(60)])
    base = bootstrap_ci(s, y, patients, n_boot=500, seed=1)
    s5, y5, p5 = np.repeat(s, 5), np.repeat(y, 5), np.repeat(patients, 5)
    clustered = bootstrap_ci(s5, y5, p5, n_boot=500, seed=1)
    image_level = bootstrap_ci(s5, y5, None, n_boot=500, seed=1)
    width = base[1] - base[0]
    assert (clustered[1] - clustered[0]) / width > 0.9
    # Resampling images instead of patients wrongly shrinks the CI by about 1/sqrt(5).
    assert (image_level[1] - image_level[0]) / width < 0.7


def test_bootstrap_is_seeded_and_supports_other_metrics() -> None:
    s, y = _data(n=80, seed=10)
    g = np.repeat(np.arange(40), 2)
    assert bootstrap_ci(s, y, g, n_boot=100, seed=3) == bootstrap_ci(s, y, g, n_boot=100, seed=3)

    def acc(sc: np.ndarray, lab: np.ndarray) -> float:
        return float(((sc >= 0.5) == lab).mean())

    low, high = bootstrap_ci(s, y, g, metric=acc, n_boot=300, seed=0)
    assert low <= acc(s, y) <= high and 0.0 <= low < high <= 1.0


def test_bootstrap_single_class_and_rare_positive(caplog: pytest.LogCaptureFixture) -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([0.1, 0.2, 0.3], [0, 0, 0], ["a", "b", "c"], n_boot=20))
    # One positive patient among 20: most resamples miss it and are skipped (and that is logged).
    s = np.linspace(0, 1, 20)
    y = np.zeros(20, dtype=int)
    y[-1] = 1
    with caplog.at_level(logging.WARNING, logger="mammopath.metrics.classification"):
        low, high = bootstrap_ci(s, y, np.arange(20), n_boot=200, seed=0)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert "skipped" in caplog.text


def test_domain_gap_is_source_minus_target() -> None:
    assert domain_gap(0.93, 0.70) == pytest.approx(0.23)
    assert domain_gap(0.8, 0.85) == pytest.approx(-0.05)
    assert math.isnan(domain_gap(0.9, float("nan")))


def test_ece_bins_are_right_closed_at_edges_and_one() -> None:
    from sklearn.calibration import calibration_curve

    from mammopath.metrics.classification import calibration_bins

    # 0.3 with 10 bins is in (0.2, 0.3]; 1.0 (a saturated float32 sigmoid) in the last bin; 0.0 in the first
    assert calibration_bins(np.array([0.3, 0.30000001, 1.0, 0.0, 0.1]), 10).tolist() == [2, 3, 9, 0, 0]
    saturated = torch.sigmoid(torch.tensor([17.0, 20.0])).numpy()
    assert (saturated == 1.0).all() and calibration_bins(saturated.astype(np.float64), 10).tolist() == [9, 9]
    p, y = np.array([0.3, 0.3, 0.25, 1.0, 1.0, 0.95]), np.array([1, 0, 0, 0, 1, 1])
    # by hand: bin (0.2, 0.3]: conf 0.85/3, freq 1/3; bin (0.9, 1]: conf 2.95/3, freq 2/3
    hand = (abs(1 - 0.85) + abs(2 - 2.95)) / 6
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(hand)
    _, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert prob_pred.tolist() == pytest.approx([0.85 / 3, 2.95 / 3])  # sklearn forms the same two bins
    # torchmetrics puts p = 1.0 into a bin of its own (documented in docs/metrics.md)
    tm = binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=10, norm="l1").item()
    assert tm != pytest.approx(hand)
