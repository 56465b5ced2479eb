"""`on_bad_sample`: a corrupt file mid-epoch is skipped, listed in skipped.csv + TensorBoard; too many stop a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import squash, tiny_fit_args

from mammopath.cli import main


@pytest.fixture(scope="module")
def broken_data(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny synthetic cohort with one training mammogram truncated inside its pixel data."""
    data = tmp_path_factory.mktemp("broken") / "data"
    shutil.copytree(synth_root, data, ignore=shutil.ignore_patterns("CBIS-DDSM", "CAMELYON*", "INbreast*", "ICIAR*"))
    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    row = manifest[(manifest["modality"] == "mammo") & (manifest["split"] == "train")].iloc[3]
    path = data / row["path"]
    path.write_bytes(path.read_bytes()[:-500])
    return data, str(row["path"])


def test_skip_policy_finishes_and_records_the_file(
    broken_data: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, bad = broken_data
    out = tmp_path / "run"
    args = tiny_fit_args(
        data, out, "--data.on_bad_sample=skip", "--trainer.limit_train_batches=3",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger", f"--trainer.logger.save_dir={out / 'tb'}",
    )  # fmt: skip
    assert main(args) == 0  # 16 training mammograms in batches of 8: all are read, the broken one mid-epoch
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    assert set(skipped["file"]) == {bad}
    assert set(skipped["stage"]) == {"train"} and set(skipped["epoch"]) == {"0"}
    assert skipped["reason"].str.contains("DicomReadError: pixel data cannot be decoded").all()
    assert f"({bad})" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (out / "tb").rglob("events.out.tfevents*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert accumulator.Scalars("data/skipped")[-1].value == len(skipped)


def test_raise_policy_names_the_file(
    broken_data: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, bad = broken_data
    assert main(tiny_fit_args(data, tmp_path)) == 2
    printed = squash(capsys.readouterr().out)
    assert squash(bad.rsplit("/", 1)[-1]) in printed and squash("pixel data cannot be decoded") in printed


def test_too_many_bad_samples_stop_the_run(
    broken_data: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, bad = broken_data
    assert main(tiny_fit_args(data, tmp_path, "--data.on_bad_sample=skip", "--data.max_bad_fraction=0.01")) == 2
    printed = squash(capsys.readouterr().out)
    assert squash("skipped.csv") in printed and squash("max_bad_fraction=0.01") in printed
    assert set(pd.read_csv(tmp_path / "skipped.csv")["file"]) == {bad}


def test_preflight_fails_before_training(
    broken_data: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, bad = broken_data
    assert main(tiny_fit_args(data, tmp_path, "--data.preflight=true", "--trainer.enable_checkpointing=true")) == 2
    printed = squash(capsys.readouterr().out)
    assert squash(bad) in printed and squash("cannot be decoded") in printed
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped at setup: no step was trained


def test_validate_manifest_decode_reports_every_bad_file(
    broken_data: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(broken_data[0], data)
    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    slide = manifest[manifest["modality"] == "patho"]["path"].iloc[0]
    (data / slide).write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing else
    notes = manifest[(manifest["modality"] == "mammo") & (manifest["split"] == "test")]["path"].iloc[0]
    (data / notes).write_text("not an image")
    assert main(["validate-manifest", str(data / "manifest.csv")]) == 0  # files exist: the plain check passes
    capsys.readouterr()
    assert main(["validate-manifest", str(data / "manifest.csv"), "--decode", "--workers=2"]) == 2
    printed = squash(capsys.readouterr().out)
    assert squash("3 problem(s)") in printed
    expected = [
        (broken_data[1], "pixel data cannot be decoded"),
        (slide, "cannot open as a tiled TIFF"),
        (notes, "not a DICOM"),
    ]
    for path, reason in expected:
        assert squash(path) in printed and squash(reason) in printed, (path, reason)
