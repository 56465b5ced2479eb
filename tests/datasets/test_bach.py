"""BACH builder: genuine ground-truth counts, layout quirks, errors, splits and the synthetic release."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import load_fake

from mammopath.datasets import bach
from mammopath.errors import DataFormatError
from mammopath.manifest import validate_manifest

REPO = Path(__file__).resolve().parents[2]
fake = load_fake("bach")


@pytest.fixture(scope="module")
def genuine(shared_samples: Path) -> Path:
    return shared_samples / "bach" / "microscopy_ground_truth.csv"


@pytest.fixture(scope="module")
def release(genuine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.make_fake(tmp_path_factory.mktemp("bach"), genuine)


def test_genuine_release_gives_400_rows_100_per_class(release: Path) -> None:
    result = bach.prepare(release)
    df = validate_manifest(result.manifest, release, check_files=True)
    assert len(df) == 400 and result.dropped.empty
    assert df.groupby("grade").size().to_dict() == {0: 100, 1: 100, 2: 100, 3: 100}
    assert int(df["label"].sum()) == 200  # InSitu + Invasive
    assert set(df["domain"]) == {"bach"} and set(df["label_source"]) == {"weak"}
    assert df["x"].isna().all() and df["patient_id"].nunique() == 400
    assert (df.loc[df["sample_id"] == "bach_is042", "path"] == "Photos/InSitu/is042.tif").all()


def test_committed_split_table_equals_a_fresh_build(genuine: Path) -> None:
    committed = pd.read_csv(REPO / "data_manifests/bach_splits.csv", dtype=str)
    fresh = bach.split_table(bach.read_ground_truth(genuine))
    pd.testing.assert_frame_equal(committed, fresh.astype(str))
    per_class = fresh.groupby(["class", "split"]).size().unstack()
    assert (per_class["train"] == 60).all() and (per_class["val"] == 20).all() and (per_class["test"] == 20).all()


def test_prepare_uses_the_committed_split(release: Path) -> None:
    df = bach.prepare(release).manifest
    committed = pd.read_csv(REPO / "data_manifests/bach_splits.csv", dtype=str)
    expected = dict(zip("bach_" + committed["file"].str.removesuffix(".tif"), committed["split"], strict=True))
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == expected


def test_missing_photo_dropped_and_extra_file_noted(tmp_path: Path) -> None:
    root = fake.make_fake(tmp_path)
    (root / "Photos/Benign/b002.tif").unlink()
    (root / "Photos/Benign/b101.tif").write_bytes((root / "Photos/Benign/b001.tif").read_bytes())
    result = bach.prepare(root)
    assert len(result.manifest) == 7
    assert result.dropped.values.tolist() == [
        ["Photos/Benign/b002.tif", "listed in microscopy_ground_truth.csv but file not found"]
    ]
    assert any("Photos/Benign/b101.tif" in note for note in result.notes)


def test_ground_truth_found_at_root_or_through_metadata(tmp_path: Path) -> None:
    root = fake.make_fake(tmp_path / "a")
    (root / "Photos/microscopy_ground_truth.csv").rename(root / "microscopy_ground_truth.csv")
    assert len(bach.prepare(root).manifest) == 8
    meta = tmp_path / "meta"
    meta.mkdir()
    (root / "microscopy_ground_truth.csv").rename(meta / "microscopy_ground_truth.csv")
    with pytest.raises(DataFormatError, match="not found"):
        bach.prepare(root)
    assert len(bach.prepare(root, metadata=str(meta)).manifest) == 8


def test_bad_class_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "microscopy_ground_truth.csv"
    path.write_bytes(b"n001.tif,Normal\r\nb001.tif,Benin\r\n")
    with pytest.raises(DataFormatError, match=r"microscopy_ground_truth\.csv, row 2, column 'class': class 'Benin'"):
        bach.read_ground_truth(path)
    path.write_bytes(b"n001.tif,Normal\r\nb001.tif\r\n")
    with pytest.raises(DataFormatError, match=r"row 2: expected 2 fields"):
        bach.read_ground_truth(path)


def test_ranked_split_is_deterministic_and_stratified() -> None:
    keys = [f"k{i}" for i in range(50)]
    strata = {k: i % 2 for i, k in enumerate(keys)}
    first = bach.ranked_split(keys, strata, salt="s")
    assert first == bach.ranked_split(list(reversed(keys)), strata, salt="s")
    for value in (0, 1):
        counts = pd.Series([first[k] for k in keys if strata[k] == value]).value_counts().to_dict()
        assert counts == {"train": 15, "val": 5, "test": 5}
    assert set(bach.ranked_split(["a", "b", "c"], salt="s").values()) == {"train", "val", "test"}


def test_synthetic_release_round_trip(tmp_path: Path) -> None:
    from mammopath.io.microscopy import read_microscopy
    from mammopath.synth.releases_patho import write_bach_release

    counts = write_bach_release(tmp_path, seed=1, n_per_class=3)
    root = counts["root"]
    assert (root / "Photos/microscopy_ground_truth.csv").read_bytes().count(b"\r\n") == 12
    df = validate_manifest(bach.prepare(root).manifest, root, check_files=True)
    assert len(df) == counts["slides"] and df["patient_id"].nunique() == counts["patients"]
    assert int(df["label"].sum()) == counts["positives"]
    assert set(df["split"]) == {"train", "val", "test"}
    image = read_microscopy(root / df.at[0, "path"])
    assert image.shape == (96, 128, 3)


def test_wsi_slides_become_annotated_slide_rows(tmp_path: Path) -> None:
    import numpy as np

    from mammopath.io.annotations import Polygon, write_imagescope_xml

    root = fake.make_fake(tmp_path)
    (root / "WSI").mkdir()
    for stem in ("A01", "A02"):
        (root / "WSI" / f"{stem}.svs").write_bytes((root / "Photos/Normal/n001.tif").read_bytes())
    square = np.array([[0.0, 0.0], [9.0, 0.0], [9.0, 9.0], [0.0, 9.0]])
    write_imagescope_xml(root / "WSI/A01.xml", [Polygon(square, "Benign", False, "benign"),
                                                 Polygon(square + 20, "InSitu", True, "in situ")])  # fmt: skip
    result = bach.prepare(root)
    df = validate_manifest(result.manifest, root, check_files=True)
    wsi = df[df["sample_id"] == "bach_wsi_A01"].iloc[0]
    assert (wsi["label"], wsi["grade"], wsi["roi_path"], wsi["label_source"]) == (1, 2, "WSI/A01.xml", "annotated")
    assert result.dropped.values.tolist() == [["WSI/A02.svs", "WSI without its ImageScope XML"]]
