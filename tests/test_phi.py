"""No patient-identifying DICOM value reaches any artefact (results, logs, TensorBoard, checkpoints)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[1]
CANARY = "CANARYSECRET"


def _plant_slide_canary(data: Path) -> None:
    """Re-write every slide of one centre with the canary in its TIFF ImageDescription."""
    import tifffile

    from mammopath.synth.patho import write_pyramid_tiff

    for path in sorted((data / "patho" / "centre_3").glob("*.tif")):
        rgb = tifffile.imread(path, level=0)
        write_pyramid_tiff(path, rgb, mpp=0.5, tile=128, description=f"Aperio {CANARY} |Patient={CANARY}^SLIDE")


@pytest.mark.slow  # fit, test and predict through the CLI (about 2 min); CI runs it (.ci/run)
def test_dicom_header_values_never_reach_outputs(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_root, data, ignore=shutil.ignore_patterns("CBIS-DDSM", "CAMELYON*", "INbreast*", "ICIAR*"))
    for path in (data / "mammo").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientName = f"{CANARY}^NAME"
        ds.PatientBirthDate = "19000101"
        ds.InstitutionName = f"{CANARY} HOSPITAL"
        ds.save_as(path)
    _plant_slide_canary(data)
    out = tmp_path / "out"
    common = [
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={data / 'manifest.csv'}",
        f"--trainer.default_root_dir={out}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={out / 'tb'}",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_checkpointing=true",
    ]  # fmt: skip
    assert main(["fit", *common]) == 0
    results = out / "results"
    callbacks = [
        "--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter",
        f"--trainer.callbacks.out_dir={results}",
    ]
    assert main(["test", *common, *callbacks]) == 0
    export = [
        "--config", str(REPO / "experiments/explain/export.yaml"), "--model.alignment=true",
        f"--trainer.callbacks.out_dir={out / 'attention'}",
        f"--data.manifest=[{data / 'manifest.csv'},{data / 'paired_manifest.csv'}]", f"--data.root=[{data},{data}]",
    ]  # fmt: skip
    assert main(["predict", *common, *export]) == 0
    assert (out / "attention" / "index.csv").is_file() and list((out / "attention").rglob("*.json"))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any("events.out.tfevents" in p.name for p in files)
    assert (results / "predictions.csv").is_file()
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), path
        assert CANARY not in str(path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in {p.parent for p in files if "events.out.tfevents" in p.name}:
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        assert not any(CANARY in tag for kind in accumulator.Tags().values() if isinstance(kind, list) for tag in kind)
    printed = capsys.readouterr()
    assert CANARY not in printed.out + printed.err  # console and log lines
    assert CANARY not in caplog.text
