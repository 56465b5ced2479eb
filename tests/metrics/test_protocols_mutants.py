"""`protocol_table` from a run's predictions and the composed manifest, on a case whose answers are written out.

tests/metrics/test_protocols.py checks each protocol function; this checks the table a run writes
(``protocol_metrics.csv``): which rows each (modality, domain) gets, from which rows, with which values
(scikit-learn AUROCs and kappa of the aggregates written out by hand). Fast enough for `make mutation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mammopath.metrics.protocols import PN_STAGES, protocol_table

# mammography: (sample, patient, laterality, score, label); the unlabelled image must not count
IMAGES = [
    ("m1", "A", "L", 0.9, 1),
    ("m2", "A", "L", 0.2, 1),
    ("m3", "A", "R", 0.3, 0),
    ("m4", "B", "L", 0.85, 0),
    ("m5", "C", "R", 0.8, 1),
    ("m6", "C", "R", 0.7, 0),
    ("m7", "D", "L", 0.95, -1),
]
# slides of centre_1: (slide, patient, slide_label, slide_grade, patch scores along one row of the grid)
# patches: 224 px at 0.5 µm/px on slides of 0.25 µm/px = 448 level-0 px = 112 µm each
SLIDES = [
    ("a", "p1", 1, 2, [0.9, 0.8, 0.1, 0.1, 0.1, 0.1]),  # 2 adjacent positives: 0.224 mm, micro (truth micro)
    ("b", "p1", 0, 0, [0.45, 0.4, 0.3, 0.2, 0.1, 0.1]),  # negative (truth negative)
    ("c", "p2", 1, 1, [0.3, 0.2, 0.2, 0.1, 0.1, 0.1]),  # negative (truth itc)
    ("d", "p2", 0, 0, [0.49, 0.1, 0.1, 0.1, 0.1, 0.1]),  # negative (truth negative)
]
# centre_2: one slide has no grade, so no pN stage; (slide, patient, slide_label, slide_grade, scores)
UNGRADED = [("e", "q1", 1, 3, [0.7, 0.2]), ("f", "q2", 0, None, [0.6, 0.1])]


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    preds, manifest = [], []
    for sample, patient, side, score, label in IMAGES:
        preds.append({"sample_id": sample, "patient_id": patient, "parent_id": None, "dataset": "inbreast",
                      "modality": "mammo", "domain": "hosp", "label": label, "score": score})  # fmt: skip
        manifest.append({"sample_id": sample, "laterality": side})
    for domain, slides in (("centre_1", SLIDES), ("centre_2", UNGRADED)):
        for slide, patient, slide_label, grade, scores in slides:
            for col, score in enumerate(scores):
                sample = f"{slide}{col}"
                preds.append({"sample_id": sample, "patient_id": patient, "parent_id": slide, "dataset": "camelyon17",
                              "modality": "patho", "domain": domain, "label": slide_label, "score": score})  # fmt: skip
                manifest.append({"sample_id": sample, "x": col * 448, "y": 0, "size": 224, "mpp": 0.5,
                                 "slide_mpp": 0.25, "slide_label": slide_label, "slide_grade": grade})  # fmt: skip
    # an unlabelled patch scoring above everything on the negative slide d: dropped before any protocol
    preds.append({"sample_id": "dx", "patient_id": "p2", "parent_id": "d", "dataset": "camelyon17",
                  "modality": "patho", "domain": "centre_1", "label": -1, "score": 0.99})  # fmt: skip
    manifest.append({"sample_id": "dx", "x": 3 * 448, "y": 448, "size": 224, "mpp": 0.5, "slide_mpp": 0.25,
                     "slide_label": 0, "slide_grade": 0})  # fmt: skip
    # a pathology photo (no slide) and a patch whose slide has no label: neither is a slide-level row
    preds.append({"sample_id": "photo", "patient_id": "p9", "parent_id": "", "dataset": "bach",
                  "modality": "patho", "domain": "centre_1", "label": 1, "score": 0.0})  # fmt: skip
    manifest.append({"sample_id": "photo"})
    preds.append({"sample_id": "z0", "patient_id": "p1", "parent_id": "z", "dataset": "camelyon17",
                  "modality": "patho", "domain": "centre_1", "label": 1, "score": 0.0})  # fmt: skip
    manifest.append({"sample_id": "z0", "x": 0, "y": 0, "size": 224, "mpp": 0.5, "slide_mpp": 0.25})
    return pd.DataFrame(preds), pd.DataFrame(manifest)


def test_the_protocol_table_of_a_run() -> None:
    predictions, manifest = _frames()
    got = protocol_table(predictions, manifest).set_index(["modality", "domain", "protocol"])
    # mammography, the unlabelled image left out: breasts A/L (0.9, 1), A/R (0.3, 0), B/L (0.85, 0), C/R (0.8, 1)
    breast = roc_auc_score([1, 0, 0, 1], [0.9, 0.3, 0.85, 0.8])  # 0.75
    patient = roc_auc_score([1, 0, 1], [0.9, 0.85, 0.8])  # A, B, C: 0.5
    # slides a-d: max (0.9, 0.45, 0.3, 0.49), mean of the top 5 (0.4, 0.29, 0.18, 0.178); labels 1, 0, 1, 0
    slide_max = roc_auc_score([1, 0, 1, 0], [0.9, 0.45, 0.3, 0.49])  # 0.5
    slide_top = roc_auc_score([1, 0, 1, 0], [0.4, 0.29, 0.18, 0.178])  # 0.75
    # pN per patient: p1 true (micro, negative) = pN1mi, predicted (micro, negative) = pN1mi;
    # p2 true (itc, negative) = pN0(i+), predicted (negative, negative) = pN0
    kappa = cohen_kappa_score(
        [PN_STAGES.index("pN1mi"), PN_STAGES.index("pN0(i+)")],
        [PN_STAGES.index("pN1mi"), PN_STAGES.index("pN0")],
        weights="quadratic", labels=list(range(len(PN_STAGES))),
    )  # fmt: skip
    want = {
        ("mammo", "hosp", "auroc_per_breast"): (breast, 4),
        ("mammo", "hosp", "auroc_per_patient"): (patient, 3),
        ("patho", "centre_1", "slide_auroc_max"): (slide_max, 4),
        ("patho", "centre_1", "slide_auroc_topk"): (slide_top, 4),
        ("patho", "centre_1", "pn_stage_qwk_patients"): (kappa, 2),
        ("patho", "centre_2", "slide_auroc_max"): (1.0, 2),
        ("patho", "centre_2", "slide_auroc_topk"): (1.0, 2),
    }
    assert list(got.index) == list(want)  # in this order: sorted by (modality, domain), protocols as listed
    for key, (value, n) in want.items():
        assert got.loc[key, "value"] == pytest.approx(value, abs=1e-6), key  # kappa in float32
        assert got.loc[key, "n"] == n, key
    assert slide_max != slide_top and breast != patient  # the case tells each pair apart


def test_a_single_class_gives_nan_and_a_domain_without_protocol_columns_no_rows() -> None:
    predictions, manifest = _frames()
    # every labelled image of one class: no per-breast or per-patient AUROC (NaN, not an error)
    mammo = predictions[predictions["modality"] == "mammo"].assign(label=1)
    got = protocol_table(mammo, manifest)
    assert got["protocol"].tolist() == ["auroc_per_breast", "auroc_per_patient"] and got["value"].isna().all()
    # one slide label only: slide AUROCs NaN
    one = predictions[predictions["parent_id"].isin(["a", "c"])]
    got = protocol_table(one, manifest).set_index("protocol")
    assert np.isnan(got.loc["slide_auroc_max", "value"]) and np.isnan(got.loc["slide_auroc_topk", "value"])
    # a manifest without laterality or slide columns: nothing to report
    bare = manifest[["sample_id"]]
    got = protocol_table(predictions, bare)
    assert list(got.columns) == ["modality", "domain", "protocol", "value", "n"] and got.empty


def test_a_single_patient_gets_no_kappa() -> None:
    predictions, manifest = _frames()
    one_patient = predictions[predictions["parent_id"].isin(["a", "b"])]  # both slides of p1
    got = protocol_table(one_patient, manifest)
    assert "pn_stage_qwk_patients" not in got["protocol"].tolist()
    assert got["protocol"].tolist() == ["slide_auroc_max", "slide_auroc_topk"]
