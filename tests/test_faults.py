"""Faults: a non-finite loss stops the run keeping the good checkpoints; unwritable or full output folders fail early;
result files are replaced atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import squash, tiny_fit_args

from mammopath.cli import main


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpts = tmp_path / "ckpt"
    args = tiny_fit_args(
        synth_root, tmp_path,
        "--model.optimizer.class_path=torch.optim.SGD",
        "--model.optimizer.init_args.lr=1e30",  # one step blows the weights up: a later loss is not finite
        "--trainer.max_steps=6",
        "--trainer.enable_checkpointing=true",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={ckpts}",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=-1",
    )  # fmt: skip
    assert main(args) == 2
    printed = squash(capsys.readouterr().out)
    assert squash("the training loss is not finite at epoch 0, step") in printed
    assert squash("checkpoints already saved") in printed
    saved = sorted(ckpts.glob("*.ckpt"))
    assert saved, "the checkpoints written before the bad step are kept"
    for path in saved:
        state = torch.load(path, weights_only=True, map_location="cpu")
        assert state["global_step"] < 6
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if torch.is_tensor(v)), path


def test_unwritable_output_folder_fails_before_training(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder under a regular file cannot be created, even by root
    assert main(tiny_fit_args(synth_root, blocker / "run", "--trainer.max_steps=1")) == 2
    printed = squash(capsys.readouterr().out)
    assert squash(f"output folder {blocker / 'run'} is not writable") in printed
    assert main(tiny_fit_args(synth_root, tmp_path / "run", "--trainer.max_steps=1", "--min_free_space_mb=1e15")) == 2
    printed = squash(capsys.readouterr().out)
    assert squash("MiB free, less than --min_free_space_mb=1e+15") in printed
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "lightning_logs").exists()


def test_interrupted_result_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from mammopath.report import write_frame

    target = tmp_path / "metrics_by_domain.csv"
    write_frame(target, pd.DataFrame({"auroc": [0.5]}))
    before = target.read_bytes()
    real = Path.write_text

    def interrupted(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real(self, text[: len(text) // 2])  # half of the new content reaches the disk, then the process is stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_frame(target, pd.DataFrame({"auroc": [0.75] * 1000}))
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left behind
