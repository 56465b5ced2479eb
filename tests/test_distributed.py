"""CPU DDP (gloo): two processes evaluate exactly the samples one process does, with the same metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammopath.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_test(synth_root: Path, out: Path, *extra: str) -> pd.DataFrame:
    args = [
        "test",
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}",
        "--data.eval_batch_size=7",
        f"--trainer.default_root_dir={out}",
        "--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter",
        f"--trainer.callbacks.out_dir={out}",
        *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return pd.read_csv(out / "predictions.csv").sort_values("sample_id").reset_index(drop=True)


def test_two_process_evaluation_equals_one(synth_root: Path, tmp_path: Path) -> None:
    single = run_test(synth_root, tmp_path / "one")
    double = run_test(
        synth_root, tmp_path / "two", "--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"
    )
    assert list(single["sample_id"]) == list(double["sample_id"])  # no padded duplicate, none missing
    pd.testing.assert_series_equal(single["score"], double["score"], atol=1e-5, rtol=0)
    one = pd.read_csv(tmp_path / "one" / "metrics_by_domain.csv")
    two = pd.read_csv(tmp_path / "two" / "metrics_by_domain.csv")
    pd.testing.assert_series_equal(one["auroc"], two["auroc"], atol=1e-6, rtol=0)
