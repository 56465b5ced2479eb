"""Every user mistake ends as one line, ``error: <what, naming the file or key, and the fix>``, exit 2, no traceback.

Through the real CLI (``mammopath.cli.main``, the function behind the ``mammopath`` command). The corrupt file read
by DataLoader workers is in ``tests/datamodules/test_bad_samples.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning  # noqa: F401  (its log handler binds the session's stderr at import, not one test's capture)
import pandas as pd
import pytest
import torch

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config", str(REPO / "tests/conf/tiny.yaml"), "--config", str(REPO / "tests/conf/synth.yaml")]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line, which must be the last thing printed, with no traceback anywhere."""
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, captured.out[-3000:]
    assert lines[-1] == errors[0], captured.out[-3000:]
    assert "Traceback" not in captured.out + captured.err
    return errors[0]


def test_frozen_encoder_without_weights_is_refused_with_the_fix(
    synth_releases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "fit",
        "--config", str(REPO / "experiments/base.yaml"),
        "--config", str(REPO / "experiments/benchmarks/cbis_ddsm.yaml"),
        f"--data.init_args.root={synth_releases}",
        f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
    ]  # fmt: skip
    assert main(args) == 2
    line = error_line(capsys)
    assert "model.freeze=adapters" in line and "model.checkpoint_path" in line
    assert "--model.freeze=full" in line and "mammopath encoders" in line
    assert not (tmp_path / "runs").exists()  # refused before anything is written
    # with an encoder preset and its (missing) weights the error names the weights file instead
    assert main([*args, "--config", str(REPO / "experiments/encoders/vit_base.yaml")]) == 2
    assert "weights/vit_base/model.safetensors" in error_line(capsys)


def test_frozen_encoder_refusal_holds_in_python_too(synth_root: Path) -> None:
    import lightning as L

    from mammopath.datamodules.crossmodal import CrossModalDataModule
    from mammopath.errors import ConfigError
    from mammopath.models.module import MammoPathModule

    module = MammoPathModule(img_size=32, model_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 24})
    data = CrossModalDataModule(str(synth_root / "manifest.csv"), image_size=32, batch_size=4)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="model.checkpoint_path is not set"):
        trainer.fit(module, data)


def test_missing_checkpoint_fails_before_data_setup(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "runs/x/checkpoints/best.ckpt"
    assert main(["test", *TINY, f"--data.manifest={synth_root / 'manifest.csv'}", f"--ckpt_path={missing}"]) == 2
    line = error_line(capsys)
    assert f"--ckpt_path {missing}: file not found" in line and "checkpoint" in line
    # with a run name the fix names where that run's fit writes its checkpoints
    named = [
        "test", *TINY, f"--data.manifest={synth_root / 'manifest.csv'}", f"--ckpt_path={missing}",
        "--run_name=demo", f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
    ]  # fmt: skip
    assert main(named) == 2
    assert f"{tmp_path / 'runs' / 'demo' / 'checkpoints'}/best.ckpt" in error_line(capsys)


def test_unavailable_accelerator_is_one_line(synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = "mps" if torch.cuda.is_available() or torch.backends.mps.is_available() else "gpu"  # one this lacks
    args = ["fit", *TINY, f"--data.manifest={synth_root / 'manifest.csv'}", f"--trainer.accelerator={missing}"]
    assert main(args) == 2
    line = error_line(capsys)
    assert f"trainer.accelerator={missing}" in line and "--trainer.accelerator=cpu" in line


def test_missing_data_root_is_named_once(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = tmp_path / "nowhere"
    manifest = synth_root / "manifest.csv"
    args = ["fit", *TINY, f"--data.manifest={manifest}", f"--data.root={nowhere}", "--trainer.fast_dev_run=1"]
    assert main(args) == 2
    line = error_line(capsys)
    assert f"data root {nowhere} does not exist" in line and str(manifest) in line
    assert main(["validate-manifest", str(manifest), "--root", str(nowhere)]) == 2
    assert f"data root {nowhere} does not exist" in error_line(capsys)


def test_many_missing_files_give_one_summary_line(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong_root"
    (wrong / "mammo").mkdir(parents=True)
    manifest = pd.read_csv(synth_root / "manifest.csv", dtype=str, keep_default_na=False)
    shutil.copy(synth_root / manifest["path"].iloc[1], wrong / "kept.dcm")  # one file present, the rest not
    manifest.loc[1, "path"] = "kept.dcm"
    path = tmp_path / "m.csv"
    manifest.to_csv(path, index=False)
    assert main(["validate-manifest", str(path), "--root", str(wrong)]) == 2
    line = error_line(capsys)
    first = wrong / manifest["path"].iloc[0]
    assert f"row 1, column 'path': file not found under the data root: {first}" in line
    assert f"and {len(manifest) - 2} more of {len(manifest)} rows" in line


def test_prepare_that_finds_no_image_says_why_instead_of_writing_0_rows(
    synth_releases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csvs = tmp_path / "cbis"  # the four description CSVs, but no CBIS-DDSM/ image folder
    csvs.mkdir()
    for csv in synth_releases.glob("*_case_description_*.csv"):
        shutil.copy(csv, csvs / csv.name)
    out = tmp_path / "m.csv"
    assert main(["prepare", "cbis-ddsm", "--root", str(csvs), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: prepare cbis-ddsm: 0 rows from {csvs}") and "image file not on disk" in line
    assert "--root" in line and not out.exists()


def test_tiling_that_keeps_no_patch_names_the_parameters(
    synth_releases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synth_releases / "CAMELYON17"
    slides = tmp_path / "slides.csv"
    assert main(["prepare", "camelyon17", "--root", str(root), "--out", str(slides)]) == 0
    capsys.readouterr()
    out = tmp_path / "patches.csv"
    assert main(["tile", str(slides), "--root", str(root), "--out", str(out)]) == 2  # 224 px at 0.5 µm/px
    line = error_line(capsys)
    assert "tiling kept no patch from 50 slide(s) with size=224, mpp=0.5, min_tissue=0.5" in line
    assert "smaller than one patch" in line and not out.exists()
    assert main(["tile", str(slides), "--root", str(root), "--out", str(out), "--size", "32"]) == 0
    assert out.is_file()


def test_the_shipped_example_manifest_is_valid() -> None:
    from mammopath.manifest import REQUIRED_COLUMNS, load_manifest

    example = REPO / "docs/examples/manifest.csv"
    df = load_manifest(example, example.parent, check_files=False)
    assert set(REQUIRED_COLUMNS) <= set(pd.read_csv(example, nrows=0).columns)
    assert set(df["modality"]) == {"mammo", "patho"} and (df["split"] == "").any()  # a row to predict
    readme = (REPO / "README.md").read_text()
    assert "docs/examples/manifest.csv" in readme and all(f"`{c}`" in readme for c in REQUIRED_COLUMNS)
