"""The evaluation component: a run's predictions.csv reproduces its metrics; metrics equal sklearn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mammopath.cli import main
from mammopath.errors import ConfigError
from mammopath.metrics.evaluation import PREDICTION_COLUMNS, Evaluation

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_results(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """predictions.csv and metrics_by_domain.csv of a tiny fit (a few steps) + test run."""
    out = tmp_path_factory.mktemp("eval_run")
    common = [
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}",
        f"--trainer.default_root_dir={out}",
    ]  # fmt: skip
    assert main(["fit", *common, "--trainer.max_steps=6", "--trainer.enable_checkpointing=true"]) == 0
    (ckpt,) = list(out.rglob("*.ckpt"))
    writer = ["--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter", f"--trainer.callbacks.out_dir={out}"]
    assert main(["test", *common, *writer, f"--ckpt_path={ckpt}"]) == 0
    return out


def test_predictions_csv_reproduces_metrics_by_domain(run_results: Path) -> None:
    predictions = pd.read_csv(run_results / "predictions.csv", keep_default_na=False, na_values=[""])
    written = pd.read_csv(run_results / "metrics_by_domain.csv")
    assert list(predictions.columns) == PREDICTION_COLUMNS
    again = Evaluation(n_boot=50).table(predictions)  # tests/conf/tiny.yaml: test_bootstrap 50, seed 0
    assert list(again.columns) == list(written.columns)
    for column in written.columns:
        if pd.api.types.is_numeric_dtype(written[column]):
            np.testing.assert_allclose(again[column], written[column], atol=1e-6, equal_nan=True, err_msg=column)
        else:
            assert list(again[column]) == list(written[column]), column
    assert written["auroc_ci_low"].notna().any()  # CIs were computed, and reproduced with the same seed


def _sklearn_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    # bin counts as calibration_curve forms its bins (right-closed, p = 0 in the first)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(p))


def test_auroc_qwk_and_ece_equal_sklearn_on_the_run(run_results: Path) -> None:
    predictions = pd.read_csv(run_results / "predictions.csv", keep_default_na=False, na_values=[""])
    table = pd.read_csv(run_results / "metrics_by_domain.csv").set_index("domain")
    checked = {"auroc": 0, "qwk": 0}
    for domain, group in predictions.groupby("domain"):
        labelled = group[group["label"] >= 0]
        y, s = labelled["label"].to_numpy(), labelled["score"].to_numpy()
        if len(set(y)) == 2:
            assert table.at[domain, "auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
            checked["auroc"] += 1
        assert table.at[domain, "ece"] == pytest.approx(_sklearn_ece(s, y), abs=1e-9)
        graded = group[group["grade_true"] >= 0]
        if len(graded) and len(set(graded["grade_true"]) | set(graded["grade_pred"])) > 1:
            kappa = cohen_kappa_score(graded["grade_true"], graded["grade_pred"], weights="quadratic")
            assert table.at[domain, "qwk"] == pytest.approx(kappa, abs=1e-6)
            checked["qwk"] += 1
    assert checked["auroc"] >= 3 and checked["qwk"] >= 3


def test_gather_deduplicates_by_index_and_joins_metadata() -> None:
    samples = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "patient_id": ["p1", "p1", "p2"],
            "parent_id": ["", "", ""],
            "dataset": ["d"] * 3,
            "modality": ["mammo"] * 3,
            "domain": ["h1", "h1", "h2"],
            "grade_scheme": ["", "", ""],
            "role": ["source", "source", "heldout"],
        },
        index=pd.Index([10, 11, 12], name="_index"),
    )
    evaluation = Evaluation(n_boot=0)
    step = {
        "index": torch.tensor([12, 10]),
        "label": torch.tensor([1, 0]),
        "score": torch.tensor([0.9, 0.2]),
        "grade": torch.tensor([-1, -1]),
        "grade_pred": torch.tensor([-1, -1]),
        "bach4_pred": torch.tensor([-1, -1]),
        "pointing_hit": torch.tensor([float("nan"), 1.0]),
    }
    evaluation.update(step)
    evaluation.update({**step, "index": torch.tensor([12, 11])})  # 12 again: padded in by a distributed sampler
    frame = evaluation.predictions(samples)
    assert list(frame["sample_id"]) == ["a", "b", "c"] and list(frame["role"]) == ["source", "source", "heldout"]
    assert frame["score"].tolist() == pytest.approx([0.2, 0.2, 0.9])
    with pytest.raises(ConfigError, match="lacks"):
        evaluation.update({"index": torch.tensor([1])})
    evaluation.reset()
    evaluation.update({**step, "index": torch.tensor([99, 10])})
    with pytest.raises(ConfigError, match="sample index 99"):
        evaluation.predictions(samples)
