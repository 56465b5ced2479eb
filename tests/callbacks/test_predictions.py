"""`PredictionWriter` through `mammopath predict`: new cases (rows without a split) get the scores `test` gives them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mammopath.callbacks.predictions import PREDICT_COLUMNS
from mammopath.cli import main
from mammopath.manifest import write_manifest

REPO = Path(__file__).resolve().parents[2]


def _args(manifest: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={manifest}", f"--data.root={root}", f"--trainer.default_root_dir={out}",
        *extra,
    ]  # fmt: skip


def test_predict_on_an_unsplit_manifest_scores_as_test_does(synth_root: Path, tmp_path: Path) -> None:
    manifest = synth_root / "manifest.csv"
    fit = _args(manifest, synth_root, tmp_path / "fit", "--trainer.enable_checkpointing=true", "--trainer.max_steps=2")
    assert main(["fit", *fit, "--trainer.limit_val_batches=1"]) == 0
    (ckpt,) = list((tmp_path / "fit").rglob("*.ckpt"))
    results = tmp_path / "test_results"
    writer = ["--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter"]
    writer.append(f"--trainer.callbacks.out_dir={results}")
    assert main(["test", *_args(manifest, synth_root, tmp_path / "test", *writer), f"--ckpt_path={ckpt}"]) == 0
    tested = pd.read_csv(results / "predictions.csv", keep_default_na=False, na_values=[""])

    # the same rows as new cases: no split, no label, no grade (a hospital's unscored scans)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    new = rows[rows["sample_id"].isin(tested["sample_id"])].copy()
    new[["split", "label", "grade", "roi_path"]] = ""
    write_manifest(new, tmp_path / "new.csv")
    out = tmp_path / "predict"
    predict = _args(
        tmp_path / "new.csv", synth_root, tmp_path / "pred",
        "--trainer.callbacks+=mammopath.callbacks.predictions.PredictionWriter", f"--trainer.callbacks.out_dir={out}",
    )  # fmt: skip
    assert main(["predict", *predict, f"--ckpt_path={ckpt}"]) == 0
    predicted = pd.read_csv(out / "predictions.csv", keep_default_na=False, na_values=[""])
    assert list(predicted.columns) == PREDICT_COLUMNS
    assert sorted(predicted["sample_id"]) == sorted(new["sample_id"])  # exactly the unsplit rows, once each
    assert predicted["label"].isna().all() and predicted["score"].nunique() > len(predicted) // 2  # real scores
    both = tested.merge(predicted, on="sample_id", suffixes=("_test", "_predict"))
    assert len(both) == len(new)
    np.testing.assert_allclose(both["score_predict"], both["score_test"], rtol=0, atol=1e-6)
    assert (both["grade_pred_test"].fillna(-1) == both["grade_pred_predict"].fillna(-1)).all()
    assert (both["patient_id_test"] == both["patient_id_predict"]).all()
    assert (both["domain_test"] == both["domain_predict"]).all()
    assert predicted[["peak_x", "peak_y"]].stack().between(0, 1).all()

    # slide and patient roll-ups of the pathology patches
    patches = predicted[predicted["parent_id"].fillna("") != ""]
    slides = pd.read_csv(out / "slides.csv")
    assert sorted(slides["parent_id"]) == sorted(patches["parent_id"].unique())
    by_slide = patches.groupby("parent_id")["score"]
    slides = slides.set_index("parent_id")
    np.testing.assert_allclose(slides["score_max"], by_slide.max()[slides.index], atol=1e-12)
    np.testing.assert_allclose(slides["score_mean"], by_slide.mean()[slides.index], atol=1e-12)
    assert (slides["patches"] == by_slide.size()[slides.index]).all()
    patients = pd.read_csv(out / "patients.csv")
    assert set(zip(patients["modality"], patients["patient_id"])) == set(
        zip(predicted["modality"], predicted["patient_id"])
    )
    patho = patients[patients["modality"] == "patho"].set_index("patient_id")["score"]
    expected = patches.groupby("patient_id")["score"].max()
    np.testing.assert_allclose(patho[expected.index], expected, atol=1e-12)


def test_without_unsplit_rows_the_predict_set_is_the_test_set(synth_root: Path, tmp_path: Path) -> None:
    from mammopath.datamodules.crossmodal import CrossModalDataModule

    data = CrossModalDataModule(str(synth_root / "manifest.csv"), holdout_domains=["hospital_c", "centre_3"])
    data.setup("test")
    data.setup("predict")
    for modality in ("mammo", "patho"):
        tested = set(data.datasets["test"][modality].rows["sample_id"])
        assert tested and set(data.datasets["predict"][modality].rows["sample_id"]) == tested
    rows = pd.read_csv(synth_root / "manifest.csv", dtype=str, keep_default_na=False)
    new = rows[rows["modality"] == "mammo"].head(3).copy()
    new["split"] = ""
    kept = rows[~rows["patient_id"].isin(new["patient_id"])]
    write_manifest(pd.concat([kept, new]), tmp_path / "m.csv")
    data = CrossModalDataModule(str(tmp_path / "m.csv"), root=str(synth_root), holdout_domains=["hospital_c"])
    data.setup("predict")  # only the new mammograms; no pathology loader at all
    assert list(data.datasets["predict"]) == ["mammo"]
    assert sorted(data.datasets["predict"]["mammo"].rows["sample_id"]) == sorted(new["sample_id"])
    assert len(data.predict_dataloader()) == 1
