"""CAMELYON17 builder: the pN rule on every genuine patient, centres, per-centre labels, splits, synth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import load_fake

from mammopath.datasets import camelyon17 as c17
from mammopath.errors import DataFormatError
from mammopath.manifest import validate_manifest

REPO = Path(__file__).resolve().parents[2]
fake = load_fake("camelyon17")

#: dataset_formats.md §5.2: (negative, itc, micro, macro) per centre.
PER_CENTRE = {0: (64, 11, 10, 15), 1: (60, 7, 22, 11), 2: (75, 2, 8, 15), 3: (60, 8, 13, 19), 4: (64, 7, 4, 25)}


@pytest.fixture(scope="module")
def genuine(shared_samples: Path) -> Path:
    return shared_samples / "camelyon17" / "stage_labels.csv"


@pytest.fixture(scope="module")
def release(genuine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.make_fake(tmp_path_factory.mktemp("c17"), genuine)


def test_pn_rule_reproduces_every_genuine_patient(genuine: Path) -> None:
    patients, slides = c17.read_stage_labels(genuine)
    assert len(patients) == 100 and len(slides) == 500
    stages = dict(zip(patients["patient"], patients["stage"], strict=True))
    for patient, group in slides.groupby("patient"):
        assert c17.pn_stage(list(group["stage"])) == stages[patient], patient
    assert patients["stage"].value_counts().to_dict() == {"pN0": 25, "pN1": 30, "pN1mi": 21, "pN2": 13, "pN0(i+)": 11}


def test_pn_rule_edge_cases() -> None:
    assert c17.pn_stage(["macro", "micro", "micro", "macro", "negative"]) == "pN2"
    assert c17.pn_stage(["macro", "micro", "micro", "itc", "negative"]) == "pN1"
    assert c17.pn_stage(["micro"] * 5) == "pN1mi"  # no macro: never pN2
    assert c17.pn_stage(["itc", "negative"]) == "pN0(i+)" and c17.pn_stage(["negative"] * 5) == "pN0"
    with pytest.raises(ValueError, match="unknown slide label"):
        c17.pn_stage(["tumour"])


def test_prepare_on_the_genuine_layout(release: Path) -> None:
    result = c17.prepare(release)
    df = validate_manifest(result.manifest, release, check_files=True)
    assert len(df) == 500 and df["patient_id"].nunique() == 100 and result.dropped.empty
    assert sorted(df["domain"].unique()) == [f"camelyon17/center_{c}" for c in range(5)]
    numbers = df["patient_id"].str[8:].astype(int)
    assert (df["domain"] == "camelyon17/center_" + (numbers // 20).astype(str)).all()
    for centre, counts in PER_CENTRE.items():
        grades = df[df["domain"] == f"camelyon17/center_{centre}"]["grade"].value_counts()
        assert tuple(int(grades.get(g, 0)) for g in range(4)) == counts
    assert int(df["label"].sum()) == 57 + 85  # micro + macro; itc counts as negative
    assert (df["roi_path"] != "").sum() == 5
    assert not any("differs from the pN rule" in note for note in result.notes)


def test_committed_split_table_equals_a_fresh_build(genuine: Path, release: Path) -> None:
    committed = pd.read_csv(REPO / "data_manifests/camelyon17_splits.csv", dtype={"patient": str, "split": str})
    fresh = c17.split_table(*c17.read_stage_labels(genuine))
    pd.testing.assert_frame_equal(committed, fresh)
    per_centre = fresh.groupby(["center", "split"]).size().unstack()
    assert (per_centre["train"] == 12).all() and (per_centre["val"] == 4).all() and (per_centre["test"] == 4).all()
    df = c17.prepare(release).manifest.drop_duplicates("patient_id")
    assert dict(zip(df["patient_id"], df["split"], strict=True)) == dict(
        zip(committed["patient"], committed["split"], strict=True)
    )


def test_extracted_patient_folders_and_missing_slides(tmp_path: Path) -> None:
    root = fake.make_fake(tmp_path)  # stand-in CSV: patient_000 only
    folder = root / "training" / "center_0" / "patient_000"
    folder.mkdir()
    (root / "training/center_0/patient_000_node_0.tif").rename(folder / "patient_000_node_0.tif")
    (root / "training/center_0/patient_000_node_4.tif").unlink()
    result = c17.prepare(root)
    assert len(result.manifest) == 4
    assert "training/center_0/patient_000/patient_000_node_0.tif" in set(result.manifest["path"])
    assert result.dropped.values.tolist() == [
        ["training/center_0/patient_000_node_4.tif", "listed in stage_labels.csv but file not found"]
    ]


def test_stage_labels_errors_name_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "stage_labels.csv"
    path.write_text("patient,stage\npatient_000.zip,pN0\npatient_000_node_0.tif,negatif\n")
    with pytest.raises(DataFormatError, match=r"stage_labels\.csv, row 2, column 'stage': slide label 'negatif'"):
        c17.read_stage_labels(path)
    path.write_text("patient,label\npatient_000.zip,pN0\n")
    with pytest.raises(DataFormatError, match="required column 'stage' is missing"):
        c17.read_stage_labels(path)
    path.write_text("patient,stage\npatient_000.zip,pN3\n")
    with pytest.raises(DataFormatError, match=r"row 1, column 'stage': stage 'pN3'"):
        c17.read_stage_labels(path)


def test_synthetic_release_round_trip(tmp_path: Path) -> None:
    from mammopath.synth.releases_patho import write_camelyon17_release

    counts = write_camelyon17_release(tmp_path, seed=0, n_patients_per_center=2, centers=(0, 3))
    root = counts["root"]
    result = c17.prepare(root)
    df = validate_manifest(result.manifest, root, check_files=True)
    assert len(df) == counts["slides"] == 20 and df["patient_id"].nunique() == counts["patients"]
    assert int(df["label"].sum()) == counts["positives"] and result.dropped.empty
    assert sorted(df["domain"].unique()) == ["camelyon17/center_0", "camelyon17/center_3"]
    assert set(df[df["patient_id"] == "patient_060"]["domain"]) == {"camelyon17/center_3"}
    assert ((df["roi_path"] != "") == (df["label"] == 1)).all()
    assert not any("differs from the pN rule" in note for note in result.notes)
