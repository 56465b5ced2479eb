"""The shipped configs' checkpointing: `best.ckpt` follows source validation, `last.ckpt` follows every epoch."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from helpers import tiny_fit_args

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["experiments/base.yaml", "experiments/synth.yaml", "experiments/evidence/base.yaml"]


def _checkpointing(config: str) -> list[dict]:
    callbacks = yaml.safe_load((REPO / config).read_text())["trainer"]["callbacks"]
    return [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]


def test_the_shipped_bases_checkpoint_alike() -> None:
    first = _checkpointing(SHIPPED[0])
    assert [c["init_args"]["filename"] for c in first] == ["best", "last"]
    assert all(_checkpointing(config) == first for config in SHIPPED[1:])  # so one fit below covers all three


def test_last_ckpt_is_written_every_epoch_and_best_only_on_improvement(synth_root: Path, tmp_path: Path) -> None:
    config = SHIPPED[0]
    # lr 0: the validation AUROC never changes, so `best` is saved once and never again; a killed run must still
    # resume from its latest epoch (Lightning's save_last alone would leave last.ckpt at epoch 0)
    (tmp_path / "ckpt.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": _checkpointing(config)}}))
    args = tiny_fit_args(
        synth_root, tmp_path, "--config", str(tmp_path / "ckpt.yaml"), "--trainer.max_epochs=3",
        "--trainer.limit_train_batches=1", "--trainer.enable_checkpointing=true",
        "--model.optimizer.init_args.lr=0.0", "--model.optimizer.init_args.weight_decay=0.0",
    )  # fmt: skip
    assert main(args) == 0
    found = {p.name: p for p in tmp_path.rglob("*.ckpt")}
    assert set(found) == {"best.ckpt", "last.ckpt"}, sorted(found)
    assert torch.load(found["last.ckpt"], weights_only=True, map_location="cpu")["epoch"] == 2
    assert torch.load(found["best.ckpt"], weights_only=True, map_location="cpu")["epoch"] == 0
