"""The evidence suite's driver and statistics, against independent computations and constructed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from sklearn.metrics import roc_auc_score

from mammopath.evidence import CALIBRATION, SUITE, grid_for, scenario_table
from mammopath.evidence_stats import (
    PREDICTIONS,
    auroc,
    holm,
    p_values,
    scorecard,
    t_interval,
    two_stage_bootstrap,
    verdict,
)


def test_auroc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), rng.integers(0, 10, 200).astype(float)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc(np.ones(5), np.arange(5)))


def test_holm_matches_the_step_down_written_out() -> None:
    # sorted p: 0.01, 0.02, 0.03, 0.2 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.2
    assert holm([0.03, 0.01, 0.2, 0.02]) == pytest.approx([0.06, 0.04, 0.2, 0.06])
    adjusted = holm([0.5, float("nan"), 0.01])  # NaN is not counted: m = 2
    assert adjusted[0] == pytest.approx(0.5) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_t_interval_and_p_values_equal_scipy() -> None:
    deltas = np.asarray([0.05, 0.03, 0.07, 0.04, 0.06])
    low, high = t_interval(deltas, 0.95)
    expected = stats.t.interval(0.95, 4, loc=deltas.mean(), scale=stats.sem(deltas))
    assert (low, high) == pytest.approx(expected)
    p = p_values(deltas)
    assert p["helps"] == pytest.approx(stats.ttest_1samp(deltas, 0, alternative="greater").pvalue)
    assert p["harms"] == pytest.approx(stats.ttest_1samp(deltas, 0, alternative="less").pvalue)
    tost = max(stats.ttest_1samp(deltas, -0.02, alternative="greater").pvalue,
               stats.ttest_1samp(deltas, 0.02, alternative="less").pvalue)  # fmt: skip
    assert p["neutral"] == pytest.approx(tost)


def test_verdicts_follow_the_preregistered_rules() -> None:
    sure = {"helps": 0.001, "harms": 0.999, "neutral": 0.9}
    assert verdict(0.05, sure, (0.03, 0.07), (0.01, 0.09), (0.02, 0.08)) == "helps"
    assert verdict(0.01, sure, (0.005, 0.015), (0.001, 0.02), (0.002, 0.018)) != "helps"  # below the SESOI
    assert verdict(0.05, sure, (0.03, 0.07), (-0.01, 0.09), (0.0, 0.08)) == "inconclusive"  # bootstrap disagrees
    flat = {"helps": 0.4, "harms": 0.6, "neutral": 0.01}
    assert verdict(0.001, flat, (-0.01, 0.012), (-0.015, 0.017), (-0.012, 0.014)) == "neutral"
    assert verdict(0.001, flat, (-0.03, 0.03), (-0.03, 0.03), (-0.03, 0.03)) == "inconclusive"


def _pairs(rng: np.random.Generator, shift: float, patients: int = 40) -> pd.DataFrame:
    label = np.repeat(np.arange(patients) % 2, 2)
    base = label + rng.normal(0, 1.0, len(label))
    return pd.DataFrame({"patient_id": np.repeat([f"p{i}" for i in range(patients)], 2), "label": label,
                         "score_base": base, "score_other": base + shift * label})  # fmt: skip


def test_two_stage_bootstrap_centres_on_the_mean_delta_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    replicates = [[_pairs(rng, 0.5)] for _ in range(4)]
    draws = two_stage_bootstrap(replicates, n_boot=300, seed=3)
    point = np.mean([auroc(r[0]["label"], r[0]["score_other"]) - auroc(r[0]["label"], r[0]["score_base"])
                     for r in replicates])  # fmt: skip
    assert abs(np.median(draws) - point) < 0.03 and (draws > 0).all()
    assert np.array_equal(draws, two_stage_bootstrap(replicates, n_boot=300, seed=3))


def test_scorecard_rows_use_the_predictions_family() -> None:
    deltas = {"P1": np.asarray([0.05, 0.06, 0.04, 0.05, 0.07]), "P3": np.asarray([0.001, -0.002, 0.0, 0.002, 0.001])}
    boots = {k: np.random.default_rng(0).normal(v.mean(), 0.005, 500) for k, v in deltas.items()}
    card = scorecard(deltas, boots).set_index("id")
    assert list(card.index) == ["P1", "P3"]
    assert card.loc["P1", "verdict"] == "helps" and card.loc["P1", "outcome"] == "confirmed"
    assert card.loc["P3", "verdict"] == "neutral" and card.loc["P3", "outcome"] == "confirmed"
    assert {p.id for p in PREDICTIONS} >= set(card.index) and len(PREDICTIONS) == 17


def test_a_replicate_grid_composes_data_before_methods_and_tests_tta_on_the_full_checkpoint(tmp_path: Path) -> None:
    plan = SUITE["P"]
    grid = grid_for(plan, 1001, 1, tmp_path / "data", str(tmp_path / "runs"), str(tmp_path / "results"))
    oracle = yaml.safe_load(Path(grid.methods["oracle"][0]).read_text())
    assert oracle["data"]["manifest"].endswith("manifest_oracle.csv")
    assert yaml.safe_load(Path(grid.methods["erm"][0]).read_text())["data"]["manifest"].endswith("/manifest.csv")
    assert all(Path(c).name != "base.yaml" for v in grid.methods.values() for c in v[1:])
    assert grid.test_only == {"full_tent": "full", "full_causal_tta": "full"}
    assert grid.folds == {"g1001": []} and grid.seeds == [1]
    # calibration: ERM and the oracle only, on seeds no replicate uses
    replicate_seeds = {g for p in SUITE.values() for g, _ in p.replicates}
    for plan in CALIBRATION.values():
        assert {a.name for a in plan.arms} <= {"erm", "oracle"}
        assert not {g for g, _ in plan.replicates} & replicate_seeds


def test_scenario_table_from_constructed_predictions() -> None:
    plan = CALIBRATION["P"]
    rows = []
    for arm, far_score in (("erm", "noisy"), ("oracle", "perfect")):
        for domain, role in (("hospital_a", "source"), ("hospital_c", "target"), ("centre_1", "source"),
                             ("centre_3", "target")):  # fmt: skip
            modality = "mammo" if domain.startswith("hospital") else "patho"
            labels = np.arange(20) % 2
            half_wrong = np.r_[labels[:10], 1 - labels[10:]].astype(float)  # AUROC 0.5
            score = labels.astype(float) if role == "source" or far_score == "perfect" else half_wrong
            rows += [{"arm": arm, "sample_id": f"{domain}-{i}", "patient_id": f"{domain}-{i}", "modality": modality,
                      "domain": domain, "role": role, "label": int(lab), "score": float(s)}
                     for i, (lab, s) in enumerate(zip(labels, score, strict=True))]  # fmt: skip
    frame = pd.DataFrame(rows)
    runs = {(901, arm): group.drop(columns="arm") for arm, group in frame.groupby("arm")}
    table = scenario_table(plan, runs).set_index("arm")
    assert table.loc["oracle", "mammo far"] == 1.0 and table.loc["erm", "mammo far"] == pytest.approx(0.5)
    assert table.loc["erm", "mammo gap"] == pytest.approx(0.5) and table.loc["erm", "patho ID"] == 1.0
    assert table.loc["oracle", "Δ vs ERM"] == pytest.approx(0.5)
    assert table.loc["oracle", "% oracle gap closed"] == pytest.approx(100.0)
    assert table.loc["erm", "worst target"] == pytest.approx(0.5) and table.loc["oracle", "worst target"] == 1.0
    assert table.loc["oracle", "ECE primary"] == pytest.approx(0.0)  # scores 0/1 equal to the labels


def test_existing_data_is_reused_and_another_generators_data_is_refused(tmp_path: Path) -> None:
    import json

    from mammopath.errors import ConfigError
    from mammopath.evidence import ensure_data
    from mammopath.synth.scenarios import GENERATOR_VERSION

    folder = tmp_path / "P" / "g7"
    folder.mkdir(parents=True)
    (folder / "truth.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, "scenario": "P"}))
    assert ensure_data(tmp_path, "P", 7, oracle=False) == folder  # nothing written: the folder is as it was
    assert sorted(p.name for p in folder.iterdir()) == ["truth.json"]
    with pytest.raises(ConfigError, match=r"g7.*without the oracle copies.*remove the folder"):
        ensure_data(tmp_path, "P", 7, oracle=True)
    (folder / "truth.json").write_text(json.dumps({"generator_version": "1.0", "scenario": "P"}))
    with pytest.raises(ConfigError, match=r"written by generator 1.0"):
        ensure_data(tmp_path, "P", 7, oracle=False)


def test_counters_read_the_last_logged_value_and_the_tta_log_line(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from mammopath.evidence import run_counters

    fit = tmp_path / "fit"
    writer = SummaryWriter(str(fit))
    for step, value in ((10, 1.0), (20, 4.0)):
        writer.add_scalar("dg/irm_skipped_envs", value, step)
        writer.add_scalar("dg/mixstyle_single_domain", value / 2, step)
    writer.close()
    log = tmp_path / "sweep.log"
    log.write_text("INFO mammopath.callbacks.tta: CausalTTA: 12 adapted batches, 3 resets\n")
    found = run_counters(fit, log)
    assert found["irm_skipped_envs"] == 4.0 and found["mixstyle_single_domain"] == 2.0
    assert np.isnan(found["mixstyle_batches"])  # never logged: not a zero
    assert (found["tta_adapted_batches"], found["tta_resets"]) == (12.0, 3.0)
    assert np.isnan(run_counters(tmp_path / "none", tmp_path / "none.log")["tta_resets"])


def test_gates_without_runs_are_measured_as_missing_and_fail(tmp_path: Path) -> None:
    from mammopath.evidence import gates

    table = gates(str(tmp_path), "calibration")
    assert len(table) == 10 and table["measured"].isna().all() and not table["pass"].any()
    assert (table["status"] == "not run").all() and (table["seeds"] == "0 of 2").all()


def _write_calibration_run(results: Path, generator_seed: int, training_seed: int, arm: str, far: float) -> None:
    """A finished P calibration run whose sources are ranked perfectly and whose far target has AUROC ``far``."""
    from mammopath.evidence import predictions_path

    rows = []
    for domain, role in (("hospital_a", "source"), ("hospital_c", "heldout"), ("centre_1", "source"),
                         ("centre_3", "heldout")):  # fmt: skip
        labels = np.r_[np.zeros(50), np.ones(50)].astype(int)
        # the first k positives score below every negative: AUROC = 1 - k/50
        k = 0 if role == "source" else round((1 - far) * 50)
        score = np.r_[np.linspace(0.3, 0.6, 50), np.r_[np.full(k, 0.1), np.full(50 - k, 0.9)]]
        modality = "mammo" if domain.startswith("hospital") else "patho"
        for i, (lab, s) in enumerate(zip(labels, score, strict=True)):
            rows.append({"sample_id": f"{domain}-{i}", "patient_id": f"{domain}-{i}", "modality": modality,
                         "domain": domain, "role": role, "label": int(lab), "score": float(s)})  # fmt: skip
    path = predictions_path(str(results), "calibration", CALIBRATION["P"], generator_seed, training_seed, arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_a_gate_passes_only_on_the_mean_of_both_calibration_seeds(tmp_path: Path) -> None:
    from mammopath.evidence import gates

    _write_calibration_run(tmp_path, 901, 1, "oracle", far=0.90)
    first = gates(str(tmp_path)).set_index(["gate", "modality"])
    g1 = first.loc[("G1 oracle far target AUROC", "mammo")]
    assert g1["measured"] == pytest.approx(0.90) and g1["seeds"] == "1 of 2"
    assert not g1["pass"] and g1["status"] == "passes so far"  # one seed is not the gate
    assert first.loc[("G3 ERM gap (ID - far), P", "mammo"), "status"] == "not run"
    _write_calibration_run(tmp_path, 902, 2, "oracle", far=0.78)  # mean 0.84: fails
    both = gates(str(tmp_path)).set_index(["gate", "modality"]).loc[("G1 oracle far target AUROC", "mammo")]
    assert both["measured"] == pytest.approx(0.84) and both["seeds"] == "2 of 2"
    assert not both["pass"] and both["status"] == "fail"
    _write_calibration_run(tmp_path, 902, 2, "oracle", far=0.86)  # mean 0.88: passes
    both = gates(str(tmp_path)).set_index(["gate", "modality"]).loc[("G1 oracle far target AUROC", "mammo")]
    assert both["measured"] == pytest.approx(0.88) and both["pass"] and both["status"] == "pass"
