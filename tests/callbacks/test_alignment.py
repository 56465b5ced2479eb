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


def test_gathered_outputs_keep_each_sample_once_when_padded_duplicates_are_not_adjacent() -> None:
    """A distributed sampler pads by repeating indices; gathered in rank order they land far apart."""
    from types import SimpleNamespace

    from mammopath.callbacks.alignment import AlignmentMonitor
    from mammopath.datamodules.pairing import MODALITY_CODES

    # rank 0 saw samples 0, 1, 2 and rank 1 saw 3, 4 and then 0 again (padding): duplicates 5 positions apart
    index = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    embedding = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 3)
    embedding[5], embedding[6] = embedding[0], embedding[2]  # a padded copy is the same sample's output
    modality = torch.tensor(
        [MODALITY_CODES[m] for m in ("mammo", "patho", "mammo", "patho", "mammo", "mammo", "mammo")]
    )
    monitor = AlignmentMonitor()
    monitor._parts = {"index": [index], "embedding": [embedding], "modality": [modality], "cls": [index % 2]}
    table = pd.DataFrame({"patient_code": [10, 11, 12, 13, 14], "paired": [True, True, False, True, False]})
    module = SimpleNamespace(
        device=torch.device("cpu"), trainer=SimpleNamespace(datamodule=SimpleNamespace(sample_table=table))
    )
    z, keys = monitor._gathered(module)
    # written out: mammography samples 0, 2, 4 once each (in index order), pathology samples 1, 3
    torch.testing.assert_close(z["mammo"], torch.tensor([[0.0] * 3, [2.0] * 3, [4.0] * 3]))
    torch.testing.assert_close(z["patho"], torch.tensor([[1.0] * 3, [3.0] * 3]))
    assert keys["mammo"]["patient"].tolist() == [10, 12, 14] and keys["patho"]["patient"].tolist() == [11, 13]
    assert keys["mammo"]["paired"].tolist() == [True, False, False] and keys["mammo"]["cls"].tolist() == [0, 0, 0]
