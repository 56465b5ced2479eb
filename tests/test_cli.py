"""The real CLI end to end on the tiny synthetic benchmark (the shipped YAMLs: tests/test_experiments.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[1]


def tiny_args(synth_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "tests/conf/tiny.yaml"),
        "--config",
        str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def test_fit_test_predict_through_cli(synth_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    callbacks = [
        "--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter",
        f"--trainer.callbacks.out_dir={results}",
    ]
    assert main(["fit", *tiny_args(synth_root, tmp_path), "--trainer.fast_dev_run=2"]) == 0
    assert main(["test", *tiny_args(synth_root, tmp_path), *callbacks]) == 0
    table = pd.read_csv(results / "metrics_by_domain.csv")
    # every domain is evaluated; the held-out ones carry role 'heldout'
    roles = dict(zip(table["domain"], table["role"], strict=True))
    assert roles["hospital_c"] == "heldout" and roles["centre_3"] == "heldout"
    assert roles["hospital_a"] == "source" and roles["centre_1"] == "source"
    assert {"auroc", "qwk", "pointing_game", "auroc_ci_low"} <= set(table.columns)
    predictions = pd.read_csv(results / "predictions.csv")
    manifest = pd.read_csv(synth_root / "manifest.csv")
    expected = manifest[(manifest["split"] == "test") | manifest["domain"].isin(["hospital_c", "centre_3"])]
    assert sorted(predictions["sample_id"]) == sorted(expected["sample_id"])
    assert predictions["score"].between(0, 1).all()
    assert (results / "lodo_summary.md").read_text().count("|") > 10
    assert (results / "roc.png").stat().st_size > 1000
    assert main(["predict", *tiny_args(synth_root, tmp_path), "--trainer.fast_dev_run=1"]) == 0


@pytest.mark.parametrize("entry", [["mammopath"], ["lightning"], [sys.executable, "-m", "mammopath"]])
def test_entry_points_agree(entry: list[str]) -> None:
    exe = Path(sys.executable).parent
    command = [str(exe / entry[0]), *entry[1:]] if len(entry) == 1 else entry
    out = subprocess.run([*command, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--data.help" in out.stdout and "--model.backbone" in out.stdout and "--run_name" in out.stdout


def test_data_command_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-manifest", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().out


def test_synth_then_prepare_through_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    small = ["--mammo-patients", "3", "--slides", "3", "--test-patients", "2", "--test-slides", "1"]
    assert main(["synth", "--out", str(out), *small, "--no-paired"]) == 0
    printed = capsys.readouterr().out
    assert "multi-hospital benchmark" in printed and "benchmark releases" in printed
    assert (out / "manifest.csv").is_file() and not (out / "paired_manifest.csv").exists()
    for folder in ("CBIS-DDSM", "INbreast Release 1.0", "ICIAR2018_BACH_Challenge", "CAMELYON16", "CAMELYON17"):
        assert (out / folder).is_dir(), folder
    manifest = tmp_path / "bach.csv"
    assert main(["prepare", "bach", "--root", str(out / "ICIAR2018_BACH_Challenge"), "--out", str(manifest)]) == 0
    rows = pd.read_csv(manifest)
    assert len(rows) == 12 and set(rows["grade_scheme"]) == {"bach4"}
    assert main(["validate-manifest", str(manifest), "--root", str(out / "ICIAR2018_BACH_Challenge")]) == 0


def test_checkpoint_is_weights_only_loadable(synth_root: Path, tmp_path: Path) -> None:
    import torch

    from mammopath.models.module import MammoPathModule

    args = tiny_args(synth_root, tmp_path, "--trainer.enable_checkpointing=true", "--trainer.max_steps=2")
    assert main(["fit", *args, "--trainer.limit_val_batches=1"]) == 0
    (ckpt,) = list(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain values only: no pickled objects
    assert state["hyper_parameters"]["grade_schemes"] == {"bach4": 4, "birads": 7}
    model = MammoPathModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    restored = dict(model.state_dict())
    for key, value in state["state_dict"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(restored[key], value), key
        else:  # a module's extra state (the style bank's domain names): plain values, restored as written
            assert restored[key] == value, key
