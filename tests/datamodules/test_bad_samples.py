"""`on_bad_sample`: a corrupt file mid-epoch is skipped, listed in skipped.csv + TensorBoard; too many stop a run.

The broken file carries a PHI canary in its DICOM header (PatientName, InstitutionName): no error path may copy a
header value into an error message, ``skipped.csv``, a log line or the console.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from helpers import squash, tiny_fit_args

from mammopath.cli import main
from mammopath.datasets.manifest_dataset import ManifestDataset
from mammopath.errors import DataFormatError
from mammopath.manifest import load_manifest

CANARY = "CANARYSECRET"


@pytest.fixture(scope="module")
def broken_data(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny synthetic cohort with one training mammogram truncated inside its pixel data."""
    data = tmp_path_factory.mktemp("broken") / "data"
    shutil.copytree(synth_root, data, ignore=shutil.ignore_patterns("CBIS-DDSM", "CAMELYON*", "INbreast*", "ICIAR*"))
    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    row = manifest[(manifest["modality"] == "mammo") & (manifest["split"] == "train")].iloc[3]
    path = data / row["path"]
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.InstitutionName, ds.PatientID = f"{CANARY}^NAME", f"{CANARY} HOSPITAL", CANARY
    ds.save_as(path)
    path.write_bytes(path.read_bytes()[:-500])
    assert pydicom.dcmread(path, stop_before_pixels=True).PatientName == f"{CANARY}^NAME"  # the header still reads
    return data, str(row["path"])


def _no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text


def test_skip_policy_finishes_and_records_the_file(
    broken_data: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
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
    printed = capsys.readouterr()
    _no_canary((out / "skipped.csv").read_text(), caplog.text, printed.out, printed.err)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (out / "tb").rglob("events.out.tfevents*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert accumulator.Scalars("data/skipped")[-1].value == len(skipped)


def test_raise_policy_names_the_file(
    broken_data: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data, bad = broken_data
    assert main(tiny_fit_args(data, tmp_path)) == 2
    captured = capsys.readouterr()
    printed = squash(captured.out)
    assert squash(bad.rsplit("/", 1)[-1]) in printed and squash("pixel data cannot be decoded") in printed
    _no_canary(captured.out, captured.err, caplog.text)
    # the error itself, as raised by the dataset under either policy
    manifest = load_manifest(data / "manifest.csv", data)
    rows = manifest[manifest["path"] == bad]
    for policy in ("raise", "skip"):
        with pytest.raises(DataFormatError) as error:
            ManifestDataset(rows, data, image_size=32, on_bad_sample=policy)[0]  # no readable replacement in `rows`
        assert "cannot be decoded" in str(error.value)
        _no_canary(str(error.value), repr(error.value), *map(str, error.value.args))


def test_raise_policy_in_dataloader_workers_is_one_line_and_exit_2(
    broken_data: tuple[Path, str], tmp_path: Path
) -> None:
    """The same error raised inside DataLoader workers (num_workers: 2) reaches the user unwrapped, as one line."""
    import subprocess
    import sys

    data, bad = broken_data
    args = tiny_fit_args(data, tmp_path, "--data.num_workers=2")
    out = subprocess.run([sys.executable, "-m", "mammopath", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert bad in lines[-1] and "pixel data cannot be decoded" in lines[-1]
    assert "Traceback" not in out.stdout + out.stderr and "DataLoader worker" not in out.stdout + out.stderr
    _no_canary(out.stdout, out.stderr)


def test_a_skipped_sample_is_replaced_by_one_of_its_own_domain(broken_data: tuple[Path, str]) -> None:
    data, bad = broken_data
    manifest = load_manifest(data / "manifest.csv", data)
    train = manifest[(manifest["modality"] == "mammo") & (manifest["split"] == "train")]
    broken = train[train["path"] == bad].iloc[0]
    same = train[(train["domain"] == broken["domain"]) & (train["path"] != bad)]
    other = train[train["domain"] != broken["domain"]]
    assert len(same) >= 2 and len(other) >= 2
    # the rows on either side of the broken one (cyclically) are of another domain
    order = pd.concat(
        [other.iloc[[0]], broken.to_frame().T, other.iloc[[1]], same.iloc[[0]], other.iloc[2:], same.iloc[1:]]
    )
    dataset = ManifestDataset(order, data, image_size=32, on_bad_sample="skip")
    sample = dataset[1]
    assert sample["domain"] == broken["domain"]
    assert sample["sample_id"] == same.iloc[0]["sample_id"]  # the next row of its domain in the dataset's order
    assert [r["file"] for r in json.loads(sample["skipped"])] == [bad]
    last = ManifestDataset(pd.concat([other.iloc[[0]], same.iloc[[0]], broken.to_frame().T, other.iloc[[1]]]), data,
                           image_size=32, on_bad_sample="skip")  # fmt: skip
    assert last[2]["sample_id"] == same.iloc[0]["sample_id"]  # cyclically: past the end, from the start


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
