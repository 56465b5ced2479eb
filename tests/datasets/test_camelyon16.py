"""CAMELYON16 builder: genuine GT.csv counts, header detection, case-insensitive names, splits, synth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import load_fake

from mammopath.datasets import camelyon16 as c16
from mammopath.errors import DataFormatError
from mammopath.manifest import validate_manifest

REPO = Path(__file__).resolve().parents[2]
fake = load_fake("camelyon16")


@pytest.fixture(scope="module")
def genuine(shared_samples: Path) -> Path:
    return shared_samples / "camelyon16" / "GT.csv"


@pytest.fixture(scope="module")
def release(genuine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.make_fake(tmp_path_factory.mktemp("c16"), genuine)


def test_genuine_reference_counts(genuine: Path) -> None:
    ref = c16.read_reference(genuine)
    assert len(ref) == 130
    assert ref["label"].value_counts().to_dict() == {"Normal": 80, "Tumor": 50}
    assert ref["metastasis"].value_counts().to_dict() == {"None": 80, "Micro": 28, "Macro": 22}
    assert ref.at[0, "slide"] == "test_001" and ref.at[0, "name"] == "Test_001"


def test_reference_with_a_header_parses_the_same(genuine: Path, tmp_path: Path) -> None:
    with_header = tmp_path / "reference.csv"
    with_header.write_bytes(b"NAME,LABEL,TYPE,METASTASIS\r\n" + genuine.read_bytes())
    pd.testing.assert_frame_equal(c16.read_reference(with_header), c16.read_reference(genuine))


def test_prepare_on_the_genuine_layout(release: Path) -> None:
    result = c16.prepare(release)
    df = validate_manifest(result.manifest, release, check_files=True)
    test = df[df["split"] == "test"]
    assert len(test) == 129 and "camelyon16_test_049" not in set(df["sample_id"])
    assert int(test["label"].sum()) == 49  # 50 Tumor minus the dropped test_049 (Tumor, Micro)
    assert len(df) == 129 + 270 and int(df[df["split"] != "test"]["label"].sum()) == 111
    assert result.dropped["item"].tolist() == ["testing/images/test_049.tif"]
    assert "duplicate" in result.dropped.at[0, "reason"]
    assert "camelyon16_test_114" in set(df["sample_id"]) and any("test_114" in n for n in result.notes)
    assert {"test_114"} == c16.FROC_EXCLUDED
    roi = df.set_index("sample_id")["roi_path"]
    assert (
        roi["camelyon16_tumor_001"] == "training/lesion_annotations/tumor_001.xml"
        and roi["camelyon16_normal_001"] == ""
    )
    assert set(df["domain"]) == {"camelyon16"} and df["patient_id"].nunique() == len(df)


def test_committed_split_table_equals_a_fresh_build(genuine: Path, release: Path) -> None:
    committed = pd.read_csv(REPO / "data_manifests/camelyon16_splits.csv", dtype=str)
    fresh = c16.split_table(c16.read_reference(genuine))
    pd.testing.assert_frame_equal(committed, fresh)
    assert len(fresh) == 399 and 0.12 < (fresh["split"] == "val").sum() / 270 < 0.18
    df = c16.prepare(release).manifest
    assert dict(zip(df["sample_id"].str.removeprefix("camelyon16_"), df["split"], strict=True)) == dict(
        zip(committed["slide"], committed["split"], strict=True)
    )


def test_names_match_case_insensitively_and_flat_aws_layout(tmp_path: Path) -> None:
    root = fake.make_fake(tmp_path, training=False)
    images = root / "images"
    (root / "testing/images").rename(images)  # flat AWS layout: images/<name>.tif
    (images / "test_001.tif").rename(images / "Test_001.tif")
    (images / "tumor_007.tif").write_bytes((images / "Test_001.tif").read_bytes())
    (images / "Normal_086.tif").write_bytes((images / "Test_001.tif").read_bytes())
    result = c16.prepare(root)
    df = result.manifest.set_index("sample_id")
    assert df.at["camelyon16_test_001", "path"] == "images/Test_001.tif" and df.at["camelyon16_test_001", "label"] == 1
    assert df.at["camelyon16_tumor_007", "label"] == 1 and df.at["camelyon16_test_002", "label"] == 0
    assert "renamed tumor_111" in result.dropped.set_index("item").at["images/Normal_086.tif", "reason"]


def test_bad_label_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "reference.csv"
    path.write_text("Test_001,Tumor,IDC,Macro\nTest_002,Tumour,IDC,Macro\n")
    with pytest.raises(DataFormatError, match=r"reference\.csv, row 2, column 'label': label 'Tumour'"):
        c16.read_reference(path)
    path.write_text("Test_001\nTest_002\n")
    with pytest.raises(DataFormatError, match="at least 2 columns"):
        c16.read_reference(path)


def test_synthetic_release_round_trip(tmp_path: Path) -> None:
    from mammopath.io.annotations import read_asap_xml
    from mammopath.io.slide import open_slide
    from mammopath.synth.releases_patho import write_camelyon16_release

    counts = write_camelyon16_release(tmp_path, seed=0)
    root = counts["root"]
    assert (root / "testing/reference.csv").read_bytes().startswith(b"Test_001,Tumor,IDC,Macro\r\n")
    result = c16.prepare(root)
    df = validate_manifest(result.manifest, root, check_files=True)
    assert len(df) == counts["slides"] and df["patient_id"].nunique() == counts["patients"]
    assert int(df["label"].sum()) == counts["positives"] and result.dropped.empty
    assert set(df["split"]) == {"train", "val", "test"}
    slide = open_slide(root / "training/tumor/tumor_001.tif")  # JPEG 2000 tiles
    assert slide.mpp == pytest.approx(0.243, rel=1e-3) and slide.level_downsamples[:2] == (1.0, 2.0)
    assert slide.read_region((0, 0), 64, 0.486).shape == (64, 64, 3)
    assert all(
        p.positive for p in read_asap_xml(root / df.set_index("sample_id").at["camelyon16_tumor_001", "roi_path"])
    )
