from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mammopath.errors import ManifestError
from mammopath.manifest import (
    birads_to_grade,
    load_manifest,
    read_manifest,
    summarize,
    validate_manifest,
    write_manifest,
)


def good_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "sample_id": "a",
                "patient_id": "p1",
                "modality": "mammo",
                "dataset": "d",
                "domain": "h1",
                "split": "train",
                "path": "m/a.dcm",
                "label": "1",
                "grade": "4",
                "grade_scheme": "birads",
                "laterality": "L",
                "view": "CC",
            },
            {
                "sample_id": "b",
                "patient_id": "p1",
                "modality": "mammo",
                "dataset": "d",
                "domain": "h1",
                "split": "train",
                "path": "m/b.dcm",
                "label": "",
                "grade": "",
                "grade_scheme": "",
            },
            {
                "sample_id": "c",
                "patient_id": "p2",
                "modality": "patho",
                "dataset": "d",
                "domain": "c1",
                "split": "test",
                "path": "s/c.tif",
                "label": "0",
                "grade": "0",
                "grade_scheme": "bach4",
                "x": "10",
                "y": "20",
                "size": "64",
                "mpp": "1.0",
                "parent_id": "slide",
                "label_source": "annotated",
            },
        ]
    )


def problems_of(df: pd.DataFrame, root: Path | None = None, **kw) -> list[tuple]:
    with pytest.raises(ManifestError) as info:
        validate_manifest(df, root, source="m.csv", **kw)
    return info.value.problems


def test_good_manifest_is_typed(tmp_path: Path) -> None:
    out = validate_manifest(good_rows(), tmp_path)
    assert str(out["label"].dtype) == "Int64"
    assert out["label"].tolist()[0] == 1 and out["label"].isna().tolist() == [False, True, False]
    assert out["x"].tolist()[2] == 10.0
    assert out["grade"].tolist()[0] == 4


def test_missing_column_named() -> None:
    df = good_rows().drop(columns=["patient_id"])
    with pytest.raises(ManifestError, match="patient_id.*required column is missing"):
        validate_manifest(df, source="m.csv")


def test_duplicate_sample_id_names_row() -> None:
    df = good_rows()
    df.loc[2, "sample_id"] = "a"
    df.loc[2, "patient_id"] = "p9"
    problems = problems_of(df)
    assert (3, "sample_id", "duplicate sample_id (first used in row 1)") in problems


def test_patient_in_two_splits() -> None:
    df = good_rows()
    df.loc[1, "split"] = "test"
    with pytest.raises(ManifestError) as info:
        validate_manifest(df, source="m.csv")
    message = str(info.value)
    assert "row 2" in message and "patient 'p1'" in message and "patient-disjoint" in message


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("../outside.dcm", "'..'"),
        ("/etc/passwd", "absolute"),
        ("m/%2e%2e/x.dcm", "URL-encoded"),
        ("m/a\x00.dcm", "NUL"),
        ("C:\\data\\x.dcm", "absolute"),
    ],
)
def test_path_escaping_root_rejected(tmp_path: Path, bad: str, reason: str) -> None:
    df = good_rows()
    df.loc[0, "path"] = bad
    problems = problems_of(df, tmp_path)
    assert any(r == 1 and c == "path" and reason in m for r, c, m in problems), problems


def test_symlink_out_of_root_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    outside = tmp_path / "secret.dcm"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "m" / "a.dcm")
    problems = problems_of(good_rows(), root)
    assert any(r == 1 and "outside the data root" in m for r, c, m in problems)


def test_vocabulary_and_values() -> None:
    df = good_rows()
    df.loc[0, "modality"] = "ct"
    df.loc[2, "label"] = "2"
    df.loc[2, "grade"] = "7"
    df.loc[1, "split"] = "training"
    problems = problems_of(df)
    cols = {(r, c) for r, c, _ in problems}
    assert {(1, "modality"), (3, "label"), (3, "grade"), (2, "split")} <= cols


def test_check_files_and_required_domains(tmp_path: Path) -> None:
    problems = problems_of(good_rows(), tmp_path, check_files=True, required_domains=["h9"])
    assert any(c == "path" and "file not found" in m for _, c, m in problems)
    assert any(r is None and "domain 'h9'" in m for r, c, m in problems)


def test_round_trip_csv(tmp_path: Path) -> None:
    path = write_manifest(good_rows(), tmp_path / "m.csv")
    back = load_manifest(path, tmp_path)
    assert back["sample_id"].tolist() == ["a", "b", "c"]
    assert read_manifest(path).columns[0] == "sample_id"
    summary = summarize(back)
    assert summary["rows"].sum() == 3


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_manifest(good_rows(), tmp_path / "m.csv")
    before = path.read_bytes()

    def broken(self, target, *a, **k):  # writes half a file, then fails
        Path(target).write_text("sample_id,pat")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(good_rows(), path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".m.csv.tmp*"))


def test_birads_mapping() -> None:
    assert [birads_to_grade(v) for v in ("4a", "4B", "4c", "5", 3, "0", "", None, "x", "7")] == [
        4,
        4,
        4,
        5,
        3,
        0,
        None,
        None,
        None,
        None,
    ]


def test_cli_validate_manifest_reports_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mammopath.cli import main

    df = good_rows()
    df.loc[1, "split"] = "val"
    write_manifest(df, tmp_path / "m.csv")
    assert main(["validate-manifest", str(tmp_path / "m.csv"), "--no-check-files"]) == 2
    out = capsys.readouterr().out
    assert "row 2" in out and "patient 'p1'" in out
