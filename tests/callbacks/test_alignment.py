"""Alignment through the real CLI: align/* curves in TensorBoard every validation epoch, results after test."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[2]
CURVES = ("align/loss", "align/temperature", "align/logit_scale", "align/alignment", "align/uniformity", "align/R@1",
          "align/R@1_chance", "align/R@1_label_chance", "align/P@5", "align/mAP@R", "align/pos_minus_neg")  # fmt: skip


def _args(synth_root: Path, tmp_path: Path) -> list[str]:
    manifests = f"[{synth_root / 'manifest.csv'},{synth_root / 'paired_manifest.csv'}]"
    return [
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={manifests}",
        f"--data.root=[{synth_root},{synth_root}]",
        "--model.alignment=true",
        "--trainer.callbacks+=mammopath.callbacks.alignment.AlignmentMonitor",
        "--run_name=align_tiny",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--results_dir={tmp_path / 'results'}",
        "--trainer.logger=true",
    ]  # fmt: skip


def test_alignment_curves_every_validation_epoch_and_results(synth_root: Path, tmp_path: Path) -> None:
    args = _args(synth_root, tmp_path)
    fit = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.enable_checkpointing=true"]
    assert main(["fit", *args, *fit]) == 0
    events = EventAccumulator(str(tmp_path / "runs" / "align_tiny" / "fit"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    missing = [t for t in CURVES if t not in tags]
    assert not missing, missing
    for tag in CURVES:
        assert len(events.Scalars(tag)) == 2, tag  # one point per validation epoch
    temperature = events.Scalars("align/temperature")[0].value
    assert temperature == pytest.approx(1 / events.Scalars("align/logit_scale")[0].value, rel=1e-5)
    assert "loss/align" in tags
    history = pd.read_csv(tmp_path / "results" / "align_tiny" / "alignment_history.csv")
    assert len(history) == 2 and {"R@1", "R@1_chance", "R@1_label_chance"} <= set(history.columns)

    (ckpt,) = list((tmp_path / "runs" / "align_tiny").rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    assert "logit_scale" in state and any(k.startswith("projectors.patho") for k in state)  # on the module
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) == 0
    results = tmp_path / "results" / "align_tiny"
    table = pd.read_csv(results / "alignment.csv").set_index("metric")
    row = table.loc["R@1"]
    assert 0 <= row["value"] <= 1 and 0 < row["chance"] < row["label_only_chance"] <= 1
    pairing = pd.read_csv(results / "pairing.csv").set_index(["modality", "domain"])
    assert pairing.loc[("patho", "paired_site"), "pairing"] == "patient-level"
    assert pairing.loc[("mammo", "hospital_a"), "pairing"].startswith("label-level")
