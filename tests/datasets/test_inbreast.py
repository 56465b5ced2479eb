"""INbreast builder: genuine CSV counts, fake release of all 410 rows, splits, errors, synthetic release."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from conftest import load_fake
from pydicom.uid import JPEG2000Lossless

from mammopath.datasets import inbreast
from mammopath.errors import DataFormatError
from mammopath.io.annotations import read_inbreast_xml
from mammopath.io.dicom import read_mammogram
from mammopath.manifest import validate_manifest
from mammopath.synth.releases_mammo import write_inbreast_release

HERE = Path(__file__).resolve().parents[1]
BIRADS_COUNTS = {"1": 67, "2": 220, "3": 23, "4a": 13, "4b": 8, "4c": 22, "5": 49, "6": 8}


@pytest.fixture(scope="module")
def genuine_csv(shared_samples: Path) -> Path:
    return shared_samples / "inbreast" / "INbreast.csv"


@pytest.fixture(scope="module")
def fake_release(genuine_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("inbreast")
    return root, load_fake("inbreast").make_fake(root, genuine_csv)


def test_genuine_metadata(genuine_csv: Path) -> None:
    meta = inbreast.read_metadata(genuine_csv)
    assert len(meta) == 410 and meta["file_name"].is_unique
    assert meta["birads"].value_counts().to_dict() == BIRADS_COUNTS
    assert int(meta["birads"].map(inbreast.label_of).sum()) == 100
    assert meta["view"].value_counts().to_dict() == {"MLO": 206, "CC": 203, "FB": 1}
    assert meta.loc[meta["file_name"] == "53582540", "acr"].item() == ""  # the ~190-space ACR
    assert (meta["acr"] == "").sum() == 1
    assert meta["laterality"].value_counts().to_dict() == {"L": 209, "R": 201}


def test_prepare_all_410(fake_release: tuple[Path, dict[str, int]], genuine_csv: Path) -> None:
    root, written = fake_release
    calls: list[object] = []
    result = inbreast.prepare(root, progress=lambda total=None: calls.append(total))
    m = validate_manifest(result.manifest, root, check_files=True)
    assert len(m) == 410 and result.dropped.empty and calls[0] == 410
    assert m["patient_id"].nunique() == written["patients"]
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(m["split"]) == {"train", "val", "test"}
    direct = pd.read_csv(genuine_csv, sep=";", dtype=str)
    direct_label = direct["Bi-Rads"].str.strip().str[0].isin(["4", "5", "6"]).astype(int)
    assert m["label"].astype(int).tolist() == direct_label.tolist()
    assert (m["label_source"] == "annotated").sum() == written["xml"] == (m["roi_path"] != "").sum()
    assert m["view"].value_counts().to_dict() == {"MLO": 206, "CC": 203, "FB": 1}
    assert m["path"].str.startswith("INbreast Release 1.0/AllDICOMs/").all()
    assert m["path"].str.contains("_ML_ANON").sum() == 206  # file names say ML, the manifest MLO
    assert m.loc[m["grade"].notna(), "grade"].between(1, 6).all()
    first = m.iloc[0]
    assert first["path"].split("/")[-1].split("_")[1] == first["patient_id"]
    assert len(read_inbreast_xml(root / m.loc[m["roi_path"] != "", "roi_path"].iloc[0])) == 1
    inner = inbreast.prepare(root / inbreast.RELEASE)
    assert len(inner.manifest) == 410 and inner.manifest["path"].str.startswith("AllDICOMs/").all()


def test_missing_dicom_is_dropped_with_reason(tmp_path: Path) -> None:
    load_fake("inbreast").make_fake(tmp_path)
    dicoms = tmp_path / inbreast.RELEASE / "AllDICOMs"
    victim = sorted(dicoms.iterdir())[0]
    victim.unlink()
    result = inbreast.prepare(tmp_path)
    assert len(result.manifest) == 5
    assert result.dropped.to_dict("records") == [
        {"item": victim.name.split("_")[0], "reason": "image file not on disk"}
    ]


def test_committed_split_table_is_current(genuine_csv: Path) -> None:
    committed = pd.read_csv(inbreast.SPLITS_FILE, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(committed, inbreast.build_split_table(genuine_csv).astype(str))


def test_missing_column_names_file_and_column(genuine_csv: Path, tmp_path: Path) -> None:
    bad = tmp_path / "INbreast.csv"
    bad.write_bytes(genuine_csv.read_bytes().replace(b";Bi-Rads", b";BiRads", 1))
    with pytest.raises(DataFormatError) as err:
        inbreast.read_metadata(bad)
    assert "INbreast.csv" in str(err.value) and "'Bi-Rads'" in str(err.value)


def test_bad_birads_value_names_row(genuine_csv: Path, tmp_path: Path) -> None:
    bad = tmp_path / "INbreast.csv"
    shutil.copyfile(genuine_csv, bad)
    lines = bad.read_bytes().split(b"\r\n")
    lines[3] = lines[3].rsplit(b";", 1)[0] + b";7"
    bad.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DataFormatError, match=r"row 3, column 'Bi-Rads'"):
        inbreast.read_metadata(bad)


@pytest.mark.skipif(importlib.util.find_spec("xlrd") is not None, reason="xlrd installed")
def test_xls_without_xlrd_says_what_to_install(tmp_path: Path) -> None:
    xls = tmp_path / "INbreast.xls"
    xls.write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(DataFormatError, match="xlrd"):
        inbreast.read_metadata(xls)


def test_synthetic_release_round_trip(tmp_path: Path) -> None:
    counts = write_inbreast_release(tmp_path, seed=1, n_patients=5)
    result = inbreast.prepare(tmp_path)
    m = validate_manifest(result.manifest, tmp_path, check_files=True)
    assert len(m) == counts["images"] and m["patient_id"].nunique() == counts["patients"]
    assert int(m["label"].sum()) == counts["malignant"] and (m["roi_path"] != "").sum() == counts["annotated"]
    photometric = set()
    for rel in m["path"]:
        image, info = read_mammogram(tmp_path / rel)
        assert image.dtype.name == "float32" and image.min() >= 0.0 and image.max() <= 1.0
        photometric.add(str(info.get("photometric", "")))
    assert {"MONOCHROME1", "MONOCHROME2"} <= photometric
    syntaxes = {
        str(pydicom.dcmread(tmp_path / rel, stop_before_pixels=True).file_meta.TransferSyntaxUID) for rel in m["path"]
    }
    assert JPEG2000Lossless in syntaxes
    raw = (tmp_path / inbreast.RELEASE / "INbreast.csv").read_bytes()
    assert raw.startswith(b"Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\r\n")
    assert b";" + b" " * 190 + b";" in raw


def test_cli_prepare_and_datamodule(tmp_path: Path) -> None:
    from mammopath.cli import main
    from mammopath.datamodules.inbreast import INbreastDataModule

    counts = write_inbreast_release(tmp_path, seed=2, n_patients=8)
    out = tmp_path / "inbreast.csv"
    assert main(["prepare", "inbreast", "--root", str(tmp_path / inbreast.RELEASE), "--out", str(out)]) == 0
    dm = INbreastDataModule(root=str(tmp_path / inbreast.RELEASE), manifest=str(out), image_size=32, batch_size=2)
    assert dm.modalities == ["mammo"] and len(dm.manifest) == counts["images"]
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[-2:] == (32, 32)
