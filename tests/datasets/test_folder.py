"""`mammopath prepare folder`: a manifest from a folder of DICOMs and slides; ids hashed, laterality/view read."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning  # noqa: F401  (its log handler binds the session's stderr at import, not one test's capture)
import pandas as pd
import pydicom
import pytest
from PIL import Image

from mammopath.cli import main
from mammopath.datasets.folder import pseudonym

CANARY = "CANARYMRN123"


@pytest.fixture
def site(synth_root: Path, synth_releases: Path, tmp_path: Path) -> Path:
    """A hospital folder: DICOM mammograms (headers carrying a PHI canary), one ROI mask, slides, a PNG export."""
    root = tmp_path / "site"
    manifest = pd.read_csv(synth_root / "manifest.csv", dtype=str, keep_default_na=False)
    mammo = manifest[manifest["modality"] == "mammo"].head(4)
    for i, rel in enumerate(mammo["path"]):
        target = root / "dicom" / f"study{i}" / "image"  # no extension: found by the DICOM preamble
        target.parent.mkdir(parents=True)
        ds = pydicom.dcmread(synth_root / rel)
        ds.PatientID, ds.PatientName = f"{CANARY}{i // 2}", f"{CANARY}^NAME"  # two images per patient
        ds.ImageLaterality, ds.ViewPosition = ("L", "CC") if i % 2 else ("R", "MLO")
        ds.save_as(target)
    roi = pydicom.dcmread(synth_root / mammo["path"].iloc[0])
    roi.SeriesDescription = "ROI mask images"
    roi.SOPInstanceUID = pydicom.uid.generate_uid()
    roi.save_as(root / "dicom" / "study0" / "mask")
    slides = sorted((synth_releases / "CAMELYON17/training/center_0").glob("*.tif"))[:2]
    (root / "slides" / "case_a").mkdir(parents=True)
    for slide in slides:
        shutil.copy(slide, root / "slides" / "case_a" / slide.name)
    Image.new("L", (8, 8)).save(root / "dicom" / "export.png")
    return root


def test_prepare_folder_builds_a_valid_manifest_without_identifiers_in_clear(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site.csv"
    assert (
        main(["prepare", "folder", "--root", str(site), "--domain", "site_a", "--out", str(out), "--salt", "s3"]) == 0
    )
    printed = capsys.readouterr().out
    text = out.read_text()
    assert CANARY not in text and CANARY not in printed
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    mammo = df[df["modality"] == "mammo"].sort_values("path")
    assert list(mammo["path"]) == [f"dicom/study{i}/image" for i in range(4)]  # the ROI mask and the PNG are not rows
    assert list(mammo["laterality"]) == ["R", "L", "R", "L"] and list(mammo["view"]) == ["MLO", "CC", "MLO", "CC"]
    assert list(mammo["patient_id"]) == [f"site_a-{pseudonym(f'{CANARY}{i // 2}', 's3')}" for i in range(4)]
    assert mammo["patient_id"].nunique() == 2 and (df["domain"] == "site_a").all() and (df["split"] == "").all()
    slides = df[df["modality"] == "patho"]
    assert len(slides) == 2 and slides["patient_id"].nunique() == 1 and (slides["x"] == "").all()
    assert df["sample_id"].is_unique and not df["sample_id"].str.contains(CANARY).any()
    assert "ROI mask" in printed and "not DICOM" in printed
    # the same folder and salt give the same ids (rows of one patient pair across runs); another salt does not
    again = tmp_path / "again.csv"
    assert (
        main(["prepare", "folder", "--root", str(site), "--domain", "site_a", "--out", str(again), "--salt", "s3"]) == 0
    )
    assert again.read_text() == text
    other = tmp_path / "other.csv"
    assert main(["prepare", "folder", "--root", str(site), "--domain", "site_a", "--out", str(other)]) == 0
    assert set(pd.read_csv(other)["patient_id"]).isdisjoint(df["patient_id"])
    capsys.readouterr()
    # validate-manifest: valid, with a warning that the slide rows need tiling
    assert main(["validate-manifest", str(out), "--root", str(site)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 whole-slide row(s) have no x/y" in warnings[0] and "mammopath tile" in warnings[0]


def test_prepare_folder_needs_a_domain(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "folder", "--root", str(site), "--out", str(tmp_path / "m.csv")]) == 2
    assert "needs --domain SITE" in capsys.readouterr().out


def test_validate_manifest_warns_on_a_non_dicom_mammogram(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = pd.read_csv(synth_root / "manifest.csv", dtype=str, keep_default_na=False)
    Image.new("L", (16, 16)).save(tmp_path / "export.png")
    rows = manifest.head(3).copy()
    shutil.copytree(synth_root / "mammo", tmp_path / "mammo")
    rows.iloc[1, rows.columns.get_loc("path")] = "export.png"
    rows.to_csv(tmp_path / "m.csv", index=False)
    assert main(["validate-manifest", str(tmp_path / "m.csv"), "--root", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "1 mammogram row(s) are not DICOM files, first row 2 (export.png)" in warnings[0]
