"""Per-domain LODO tables against per-subset sklearn computations and a hand-worked summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mammopath.errors import ConfigError
from mammopath.metrics import bootstrap_ci, per_domain_table, summarize_lodo


def _predictions(seed: int = 0) -> pd.DataFrame:
    """Two modalities; mammo: 2 source domains + 1 held-out; patho: 1 source + 1 held-out with BACH grades."""
    rng = np.random.default_rng(seed)
    domains = [
        ("mammo", "cbis_ddsm/scanner_a", True),
        ("mammo", "cbis_ddsm/scanner_b", True),
        ("mammo", "inbreast", False),
        ("patho", "camelyon17/center_0", True),
        ("patho", "bach", False),
    ]
    rows = []
    for d, (modality, domain, is_source) in enumerate(domains):
        for p in range(25):
            label = int(rng.integers(0, 2))
            for _ in range(int(rng.integers(1, 4))):  # 1-3 images per patient
                strength = 0.3 if is_source else 0.12
                score = float(np.clip(0.5 + strength * (label - 0.5) * 2 + 0.2 * rng.standard_normal(), 0, 1))
                row = {
                    "modality": modality,
                    "domain": domain,
                    "patient_id": f"d{d}p{p}",
                    "score": round(score, 3),
                    "label": label,
                    "is_source": is_source,
                }
                if domain == "bach":
                    grade = int(rng.integers(0, 4))
                    pred = int(np.clip(grade + rng.integers(-1, 2), 0, 3))
                    row.update(grade_true=grade, grade_pred=pred, grade_scheme="bach4")
                rows.append(row)
    df = pd.DataFrame(rows)
    df.loc[df.index[:3], "label"] = np.nan  # unlabelled rows are skipped, never imputed
    return df


def test_per_domain_rows_match_sklearn_on_each_subset() -> None:
    df = _predictions()
    table = per_domain_table(df, threshold=0.5, n_boot=100, seed=0)
    assert list(zip(table["modality"], table["domain"])) == sorted(set(zip(df["modality"], df["domain"])))
    for _, row in table.iterrows():
        sub = df[(df["modality"] == row["modality"]) & (df["domain"] == row["domain"])].dropna(subset=["label"])
        y = sub["label"].to_numpy(int)
        s = sub["score"].to_numpy()
        assert row["n"] == len(sub) and row["n_pos"] == y.sum()
        assert row["n_patients"] == sub["patient_id"].nunique()
        assert row["auroc"] == pytest.approx(roc_auc_score(y, s))
        assert row["accuracy"] == pytest.approx(accuracy_score(y, s >= 0.5))
        assert row["role"] == ("source" if sub["is_source"].iloc[0] else "heldout")
        assert (row["auroc_ci_low"], row["auroc_ci_high"]) == pytest.approx(
            bootstrap_ci(s, y, sub["patient_id"].to_numpy(), n_boot=100, seed=0)
        )
        assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
        if row["domain"] == "bach":
            expected = cohen_kappa_score(sub["grade_true"], sub["grade_pred"], weights="quadratic")
            assert row["qwk"] == pytest.approx(expected)
        else:
            assert math.isnan(row["qwk"])


def test_threshold_per_modality_and_missing_is_source() -> None:
    df = _predictions().drop(columns=["is_source"])
    table = per_domain_table(df, threshold={"mammo": 0.3, "patho": 0.7}, n_boot=20)
    assert set(table["role"]) == {"heldout"}
    for _, row in table.iterrows():
        sub = df[(df["modality"] == row["modality"]) & (df["domain"] == row["domain"])].dropna(subset=["label"])
        thr = 0.3 if row["modality"] == "mammo" else 0.7
        assert row["accuracy"] == pytest.approx(accuracy_score(sub["label"].astype(int), sub["score"] >= thr))
    with pytest.raises(ConfigError, match="no entry for modality 'patho'"):
        per_domain_table(df, threshold={"mammo": 0.5}, n_boot=5)


def test_single_class_domain_gives_nan_auroc_and_ci() -> None:
    df = pd.DataFrame(
        {
            "modality": "mammo",
            "domain": "only_benign",
            "patient_id": ["a", "b", "c"],
            "score": [0.2, 0.4, 0.7],
            "label": [0, 0, 0],
        }
    )
    row = per_domain_table(df, n_boot=10).iloc[0]
    assert math.isnan(row["auroc"]) and math.isnan(row["auroc_ci_low"]) and math.isnan(row["auroc_ci_high"])
    assert row["specificity"] == pytest.approx(2 / 3)


def test_table_input_errors() -> None:
    df = _predictions()
    with pytest.raises(ConfigError, match="patient_id"):
        per_domain_table(df.drop(columns=["patient_id"]))
    mixed = df.copy()
    mixed.loc[mixed.index[mixed["domain"] == "inbreast"][0], "is_source"] = True
    with pytest.raises(ConfigError, match="'inbreast' has rows with is_source True and False"):
        per_domain_table(mixed, n_boot=5)


def test_summarize_lodo_hand_worked() -> None:
    table = pd.DataFrame(
        {
            "modality": ["mammo"] * 5 + ["patho"] * 2,
            "domain": ["a", "b", "c", "d", "e", "x", "y"],
            "role": ["source", "source", "heldout", "heldout", "heldout", "source", "heldout"],
            "auroc": [0.90, 0.95, 0.70, 0.80, float("nan"), 0.97, 0.85],
        }
    )
    summary = summarize_lodo(table).set_index("modality")
    m = summary.loc["mammo"]
    assert m["n_heldout_domains"] == 2 and m["n_source_domains"] == 2  # the NaN domain is left out
    assert m["mean_heldout_auroc"] == pytest.approx(0.75)
    assert m["worst_heldout_auroc"] == pytest.approx(0.70) and m["worst_heldout_domain"] == "c"
    assert m["mean_source_auroc"] == pytest.approx(0.925)
    assert m["domain_gap"] == pytest.approx(0.175)
    assert summary.loc["patho", "domain_gap"] == pytest.approx(0.12)


def test_summarize_lodo_on_a_real_table() -> None:
    table = per_domain_table(_predictions(), n_boot=10)
    summary = summarize_lodo(table).set_index("modality")
    held = table[(table["modality"] == "mammo") & (table["role"] == "heldout")]["auroc"]
    src = table[(table["modality"] == "mammo") & (table["role"] == "source")]["auroc"]
    assert summary.loc["mammo", "domain_gap"] == pytest.approx(src.mean() - held.mean())
    assert summary.loc["mammo", "domain_gap"] > 0  # the held-out domain was generated with a weaker signal
    no_source = summarize_lodo(table[table["role"] == "heldout"])
    assert no_source["domain_gap"].isna().all()


def test_no_bootstrap_gives_nan_ci_and_same_point_estimates() -> None:
    df = _predictions(3)
    with_ci = per_domain_table(df, n_boot=50)
    without = per_domain_table(df, n_boot=0)
    assert without[["auroc_ci_low", "auroc_ci_high"]].isna().all().all()
    assert with_ci[["auroc_ci_low", "auroc_ci_high"]].notna().all().all()
    pd.testing.assert_series_equal(with_ci["auroc"], without["auroc"])


def test_domain_point_metrics_equal_the_per_domain_table() -> None:
    # two paths must agree: the array path (one sort, one ROC per domain) and the frame path, on shuffled rows
    import torch

    from mammopath.metrics import domain_point_metrics
    from mammopath.metrics.domain import POINT_METRICS

    df = _predictions(seed=5).dropna(subset=["label"])
    df = df[df["modality"] == "mammo"].sample(frac=1.0, random_state=0)
    table = per_domain_table(df, threshold=0.4, specificity=0.8, n_boot=0).set_index("domain")
    by_name = domain_point_metrics(df["score"], df["label"], df["domain"], threshold=0.4, specificity=0.8)
    assert list(by_name["domain"]) == sorted(df["domain"].unique())
    codes = pd.factorize(df["domain"], sort=True)[0]
    by_code = domain_point_metrics(
        torch.tensor(df["score"].to_numpy()),  # tensors, as the evaluation gathers them
        torch.tensor(df["label"].to_numpy(int)),
        torch.tensor(codes),
        threshold=0.4,
        specificity=0.8,
    )
    assert list(by_code["domain"]) == list(range(len(by_name)))
    for i, row in by_name.iterrows():
        expected = table.loc[row["domain"]]
        assert row["n"] == expected["n"] and row["n_pos"] == expected["n_pos"]
        for metric in POINT_METRICS:
            assert row[metric] == pytest.approx(expected[metric], abs=0, nan_ok=True), metric
            assert by_code.loc[i, metric] == pytest.approx(expected[metric], abs=0, nan_ok=True), metric
    import mammopath.metrics.domain as domain_module

    sorted_path = pytest.MonkeyPatch()
    sorted_path.setattr(domain_module, "_FEW_DOMAINS", 0)  # the sort used beyond 64 domains gives the same table
    try:
        by_sort = domain_point_metrics(df["score"], df["label"], codes, threshold=0.4, specificity=0.8)
    finally:
        sorted_path.undo()
    pd.testing.assert_frame_equal(by_sort, by_code)
    with pytest.raises(ConfigError, match="differ in length"):
        domain_point_metrics([0.1, 0.2], [0, 1], [0])
