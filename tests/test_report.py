from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve as sk_roc

from mammopath.report import make_report, roc_curve, to_markdown, write_tables


def test_roc_curve_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = (rng.random(60) < 0.4).astype(int)
    fpr, tpr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def _table(gap: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "modality": ["mammo", "mammo", "patho"],
            "domain": ["a", "c", "x"],
            "role": ["source", "heldout", "source"],
            "n": [10, 10, 10],
            "auroc": [0.9, 0.9 - gap, 0.8],
        }
    )


def test_report_merges_runs_and_draws(tmp_path: Path) -> None:
    for name, gap in (("run1", 0.1), ("run2", 0.3)):
        table = _table(gap)
        summary = pd.DataFrame(
            {"modality": ["mammo"], "mean_heldout_auroc": [0.9 - gap], "mean_source_auroc": [0.9], "domain_gap": [gap]}
        )
        predictions = pd.DataFrame(
            {"modality": "mammo", "domain": "a", "role": "source", "label": [0, 1, 0, 1], "score": [0.1, 0.9, 0.3, 0.6]}
        )
        write_tables(tmp_path / name, table=table, summary=summary, predictions=predictions)
    summary = make_report([tmp_path / "run1", tmp_path / "run2"], tmp_path / "report")
    gaps = summary[summary["modality"] == "mammo"].set_index("run")["domain_gap"]
    assert abs(gaps["run1"] - 0.1) < 1e-9
    assert abs(gaps["run2"] - 0.3) < 1e-9
    assert (tmp_path / "report" / "domain_gap.png").stat().st_size > 1000
    assert (tmp_path / "report" / "roc_run1.png").stat().st_size > 1000
    markdown = (tmp_path / "report" / "metrics_by_domain.md").read_text()
    assert "| run1 | mammo | c | heldout |" in markdown


def test_markdown_formats_nan_and_floats() -> None:
    text = to_markdown(pd.DataFrame({"domain": ["a"], "auroc": [float("nan")], "ece": [0.12345]}))
    assert "| a | – | 0.123 |" in text
