"""CBIS-DDSM builder: genuine CSV counts, both layouts, splits, ROI masks by content, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import load_fake

from mammopath.datasets import cbis_ddsm
from mammopath.errors import DataFormatError
from mammopath.manifest import validate_manifest
from mammopath.synth.releases_mammo import write_cbis_ddsm_release

HERE = Path(__file__).resolve().parents[1]
NBIA_SUBSET = 120


@pytest.fixture(scope="module")
def genuine(shared_samples: Path) -> Path:
    return shared_samples / "cbis_ddsm"


@pytest.fixture(scope="module")
def legacy_release(genuine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cbis_legacy")
    load_fake("cbis_ddsm").make_fake(root, genuine, layout="legacy")
    return root


@pytest.fixture(scope="module")
def nbia_release(genuine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cbis_nbia")
    load_fake("cbis_ddsm").make_fake(root, genuine, layout="nbia", limit=NBIA_SUBSET, rois=True)
    return root


def _direct(genuine: Path) -> pd.DataFrame:
    """Per-image label/grade computed straight from the CSVs with pandas (independent of the builder)."""
    frames = [pd.read_csv(genuine / name, dtype=str) for name in cbis_ddsm.CSV_FILES]
    df = pd.concat(frames, ignore_index=True)
    df["key"] = df["image file path"].str.strip().str.split("/").str[0]
    df["assessment"] = df["assessment"].astype(int)
    return df.groupby("key").agg(
        label=("pathology", lambda s: int((s == "MALIGNANT").any())), grade=("assessment", "max")
    )


def test_genuine_row_counts(genuine: Path) -> None:
    abn = cbis_ddsm.read_abnormalities(genuine)
    counts = abn.groupby("source_file").size().to_dict()
    assert counts == {
        "mass_case_description_train_set.csv": 1318,
        "mass_case_description_test_set.csv": 378,
        "calc_case_description_train_set.csv": 1546,
        "calc_case_description_test_set.csv": 326,
    }
    assert not abn["ROI mask file path"].str.contains(r"\s").any()  # the trailing \n is stripped
    assert not abn["cropped image file path"].str.contains(r"\s").any()
    assert (abn["breast_density"] != "").sum() == len(abn)  # both spellings unified
    meta = cbis_ddsm.read_metadata(genuine)
    assert len(meta) == 3103 and meta["patient_id"].nunique() == 1566
    assert meta["image_key"].is_unique


def test_prepare_legacy_full_release(legacy_release: Path, genuine: Path) -> None:
    calls: list[object] = []
    result = cbis_ddsm.prepare(legacy_release, progress=lambda total=None: calls.append(total))
    m = validate_manifest(result.manifest, legacy_release, check_files=True)
    assert len(m) == 3103 and m["patient_id"].nunique() == 1566
    assert result.dropped.empty
    assert calls[0] == 3103 and len(calls) == 3104
    direct = _direct(genuine)
    keys = m["sample_id"].str.removeprefix("cbis_ddsm-")
    assert m["label"].astype(int).tolist() == direct.loc[keys, "label"].tolist()
    assert int(m["label"].sum()) == int(direct["label"].sum())
    expected_grade = direct.loc[keys, "grade"].where(direct.loc[keys, "grade"] > 0)
    assert m["grade"].astype("Float64").fillna(-1).tolist() == expected_grade.fillna(-1).tolist()
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()  # patient-disjoint
    assert set(m["laterality"]) == {"L", "R"} and set(m["view"]) == {"CC", "MLO"}
    assert (m["label_source"] == "weak").all()  # no ROI files written in this fake


def test_root_variants_find_the_same_images(legacy_release: Path) -> None:
    inner = cbis_ddsm.prepare(legacy_release / "CBIS-DDSM", metadata=str(legacy_release))
    assert len(inner.manifest) == 3103
    assert not inner.manifest["path"].str.startswith("CBIS-DDSM/").any()  # relative to the given root


def test_split_rules(genuine: Path) -> None:
    abn = cbis_ddsm.read_abnormalities(genuine)
    by_split = abn.groupby("official_split")["patient_id"].apply(set)
    overlap = by_split["train"] & by_split["test"]
    assert len(overlap) == 31  # mass_train∩calc_test 13 + mass_test∩calc_train 18
    table = cbis_ddsm.build_split_table(genuine)
    per_patient = table.groupby("patient_id")["split"].agg(set)
    assert (per_patient.map(len) == 1).all()
    assert all(per_patient[p] == {"test"} for p in overlap)
    assert all(per_patient[p] == {"test"} for p in by_split["test"])
    trainval = per_patient[per_patient.map(lambda s: "test" not in s)]
    val_share = trainval.map(lambda s: "val" in s).mean()
    assert 0.10 < val_share < 0.20
    assert set(table["domain"]) == {"cbis_ddsm"}


def test_committed_split_table_is_current(genuine: Path) -> None:
    committed = pd.read_csv(cbis_ddsm.SPLITS_FILE, dtype=str, keep_default_na=False)
    fresh = cbis_ddsm.build_split_table(genuine).astype(str)
    pd.testing.assert_frame_equal(committed, fresh)


def test_nbia_subset_masks_told_by_content(nbia_release: Path) -> None:
    result = cbis_ddsm.prepare(nbia_release)
    m = validate_manifest(result.manifest, nbia_release, check_files=True)
    assert len(m) == NBIA_SUBSET
    assert len(result.dropped) == 3103 - NBIA_SUBSET
    assert set(result.dropped["reason"]) == {"image file not on disk"}
    assert m["path"].str.endswith("/1-1.dcm").all() and m["path"].str.contains("-DDSM-NA-").all()
    assert (m["roi_path"] != "").all() and (m["label_source"] == "annotated").all()
    for rel in m["roi_path"]:
        pixels = pydicom.dcmread(nbia_release / rel).pixel_array
        assert pixels.dtype == np.uint8 and set(np.unique(pixels)) <= {0, 255}
    # calc masks were 000000 → 1-1.dcm, mass masks 000001 → 1-2.dcm: names disagree, content decides
    calc = m[m["sample_id"].str.contains("Calc-")]
    mass = m[m["sample_id"].str.contains("Mass-")]
    assert calc["roi_path"].str.endswith("1-1.dcm").any() and mass["roi_path"].str.endswith("1-2.dcm").any()


def test_missing_column_names_file_and_column(genuine: Path, tmp_path: Path) -> None:
    for name in cbis_ddsm.CSV_FILES:
        shutil.copyfile(genuine / name, tmp_path / name)
    target = tmp_path / "calc_case_description_test_set.csv"
    text = target.read_bytes().replace(b",pathology,", b",pathology_x,", 1)
    target.write_bytes(text)
    with pytest.raises(DataFormatError) as err:
        cbis_ddsm.read_metadata(tmp_path)
    assert "calc_case_description_test_set.csv" in str(err.value) and "'pathology'" in str(err.value)
    (tmp_path / "mass_case_description_test_set.csv").unlink()
    with pytest.raises(DataFormatError, match=r"mass_case_description_test_set\.csv"):
        cbis_ddsm.read_metadata(tmp_path)


def test_own_csvs_with_backslashes_and_bad_value(tmp_path: Path) -> None:
    make_fake = load_fake("cbis_ddsm").make_fake
    make_fake(tmp_path, None, layout="legacy", rois=True)
    target = tmp_path / "mass_case_description_train_set.csv"
    target.write_bytes(target.read_bytes().replace(b"/", b"\\"))  # a djkatsaros-style copy
    result = cbis_ddsm.prepare(tmp_path)
    assert len(result.manifest) == 12 and result.dropped.empty
    assert not result.manifest["path"].str.contains("\\\\", regex=True).any()
    assert (result.manifest["roi_path"] != "").all()
    target.write_bytes(target.read_bytes().replace(b"MALIGNANT", b"MALIGN", 1))
    with pytest.raises(DataFormatError, match=r"mass_case_description_train_set.csv, row 1, column 'pathology'"):
        cbis_ddsm.read_metadata(tmp_path)


@pytest.mark.parametrize("layout", ["nbia", "legacy"])
def test_synthetic_release_round_trip(layout: str, tmp_path: Path) -> None:
    counts = write_cbis_ddsm_release(tmp_path, seed=3, n_patients=8, layout=layout)  # type: ignore[arg-type]
    result = cbis_ddsm.prepare(tmp_path)
    m = validate_manifest(result.manifest, tmp_path, check_files=True)
    assert len(m) == counts["images"] and m["patient_id"].nunique() == counts["patients"]
    assert int(m["label"].sum()) == counts["malignant"] and result.dropped.empty
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert m.loc[m["patient_id"] == "P_00002", "split"].eq("test").all()  # mass train + calc test → test
    for rel in m["roi_path"]:
        assert set(np.unique(pydicom.dcmread(tmp_path / rel).pixel_array)) <= {0, 255}
    if layout == "nbia":
        assert m["roi_path"].str.endswith("1-1.dcm").any() and m["roi_path"].str.endswith("1-2.dcm").any()


def test_cli_prepare_and_datamodule(tmp_path: Path) -> None:
    from mammopath.cli import main
    from mammopath.datamodules.cbis_ddsm import CBISDDSMDataModule

    counts = write_cbis_ddsm_release(tmp_path, seed=5, n_patients=8, layout="nbia")
    out = tmp_path / "cbis.csv"
    assert main(["prepare", "cbis-ddsm", "--root", str(tmp_path), "--out", str(out)]) == 0
    dm = CBISDDSMDataModule(
        root=str(tmp_path), manifest=str(out), modalities=["mammo", "patho"], image_size=32, batch_size=2
    )
    assert dm.modalities == ["mammo"] and len(dm.manifest) == counts["images"]
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[-2:] == (32, 32) and set(batch["label"].tolist()) <= {0, 1}
