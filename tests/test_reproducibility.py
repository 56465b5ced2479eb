"""Determinism and resumption on CPU: same seed → same run; killed at an epoch boundary or mid-epoch and resumed →
the same weights; augmentations differ across workers and epochs but repeat with the seed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[1]


def _fit(synth_root: Path, out: Path, epochs: int, *extra: str) -> Path:
    args = [
        "fit",
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}",
        f"--trainer.default_root_dir={out}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=true",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={out}",
        *extra,
    ]  # fmt: skip
    assert main(args) == 0
    (ckpt,) = sorted(out.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)[-1:]
    return ckpt


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def _metrics(out: Path) -> pd.DataFrame:
    (path,) = out.rglob("metrics.csv")
    return pd.read_csv(path)


def test_same_seed_same_run_and_epoch_boundary_resume_is_exact(synth_root: Path, tmp_path: Path) -> None:
    straight = _weights(_fit(synth_root, tmp_path / "a", 2))
    again = _weights(_fit(synth_root, tmp_path / "b", 2))
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    pd.testing.assert_frame_equal(_metrics(tmp_path / "a"), _metrics(tmp_path / "b"))  # every logged value

    first = _fit(synth_root, tmp_path / "c", 1)  # the run "killed" after epoch 1 ...
    assert torch.load(first, weights_only=True)["rng_states"]["torch"].dtype == torch.uint8
    resumed = _weights(_fit(synth_root, tmp_path / "d", 2, f"--ckpt_path={first}"))  # ... and resumed
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, different[:5]
    other_seed = _weights(_fit(synth_root, tmp_path / "e", 2, "--seed_everything=1"))
    assert any(not torch.equal(straight[k], other_seed[k]) for k in straight)  # the comparison can fail


def test_mid_epoch_resume_from_a_step_checkpoint_is_exact(synth_root: Path, tmp_path: Path) -> None:
    """Killed after step 6 (2 of the 4 batches of the second epoch) and resumed: the same final weights and
    metrics as the uninterrupted run, with augmentations and stochastic depth on (both draw random numbers)."""
    every = [
        "--trainer.limit_train_batches=4",
        "--data.augment=true",
        "--model.drop_path_rate=0.2",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename=step{step}",
    ]

    def run(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        _fit(synth_root, out, 2, *every, f"--trainer.callbacks.dirpath={out / 'steps'}", *extra)
        return _weights(out / "steps" / "stepstep=8.ckpt")  # after the last step

    straight = run(tmp_path / "a")
    step6 = tmp_path / "a" / "steps" / "stepstep=6.ckpt"
    state = torch.load(step6, weights_only=True)
    loader_states = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [s["completed"] for s in loader_states] == [2, 2]  # the batch Lightning had prefetched is not counted
    resumed = run(tmp_path / "b", f"--ckpt_path={step6}")
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, different[:5]
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    after = a["step"] > 6  # what the resumed run logged is what the uninterrupted one logged after step 6
    pd.testing.assert_frame_equal(
        a[after].reset_index(drop=True), b[b["step"] > 6].reset_index(drop=True), check_dtype=False
    )


def test_augmentations_differ_across_workers_and_epochs_and_repeat_with_the_seed(synth_root: Path) -> None:
    from lightning.fabric.utilities.seed import pl_worker_init_function, seed_everything

    from mammopath.datasets.manifest_dataset import ManifestDataset
    from mammopath.manifest import load_manifest

    rows = load_manifest(synth_root / "manifest.csv", synth_root)
    row = rows[(rows["modality"] == "patho") & rows["x"].notna()].head(1)
    copies = pd.concat([row] * 16, ignore_index=True).assign(sample_id=[f"c{i}" for i in range(16)])
    dataset = ManifestDataset(copies, synth_root, image_size=16, augment=True)

    def epochs(workers: int) -> list[list[bytes]]:
        seed_everything(7, workers=True)
        loader = DataLoader(
            dataset, batch_size=1, num_workers=workers, worker_init_fn=pl_worker_init_function, persistent_workers=True
        )
        return [[b["image"].numpy().tobytes() for b in loader] for _ in range(2)]

    first, second = epochs(2)
    assert epochs(2) == [first, second]  # the same seed repeats every augmentation
    assert first != second  # epochs differ
    worker0, worker1 = first[0::2], first[1::2]  # batch i comes from worker i % 2
    assert worker0 != worker1  # workers are not copies of each other
    assert len(set(first)) > 2  # and within an epoch the 8 rotation/flip outcomes are drawn, not one
