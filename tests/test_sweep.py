"""The sweep runner on a tiny grid: runs, skips finished runs, summarizes with paired deltas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mammopath.errors import ConfigError
from mammopath.sweep import Grid, Sweep, main, paired_deltas, runs_of

REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, synth_root: Path) -> Path:
    grid = {
        "name": "tiny",
        "configs": [str(REPO / "tests/conf/tiny.yaml"), str(REPO / "tests/conf/synth.yaml")],
        "methods": {"erm": [str(REPO / "experiments/baselines/erm.yaml")],
                    "irm": [str(REPO / "experiments/baselines/irm.yaml")]},
        "folds": {"designed": []},
        "seeds": [0],
        "args": [
            f"--data.manifest={synth_root / 'manifest.csv'}", "--trainer.max_steps=3", "--trainer.limit_val_batches=2",
            "--trainer.enable_checkpointing=true", "--model.test_bootstrap=20",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.filename=best",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks.enable_version_counter=false",
            "--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter",
        ],
        "baseline": "erm",
    }  # fmt: skip
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.slow  # six launches of the CLI (about 2 min); CI runs it (.ci/run)
def test_sweep_runs_skips_and_summarizes(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ and results/ of the grid land here
    path = _grid(tmp_path, synth_root)
    assert main([str(path), "--n-boot", "50"]) == 0
    grid = Grid.load(path)
    sweep = Sweep(grid)
    for run in runs_of(grid):
        info = json.loads((sweep.results(run) / "run.json").read_text())
        assert info["status"] == "done" and info["seed"] == 0 and info["version"] and info["manifest_sha256"]
        assert any((Path("runs") / run.id).rglob("config.yaml"))  # the resolved config is kept
    summary = pd.read_csv(Path("results/tiny/summary.csv"))
    assert set(summary["method"]) == {"erm", "irm"} and set(summary["heldout_domain"]) == {"hospital_c", "centre_3"}
    deltas = pd.read_csv(Path("results/tiny/deltas.csv"))
    assert set(deltas["method"]) == {"irm"} and (deltas["ci_low"] <= deltas["ci_high"]).all()
    # the sign, against scikit-learn on the runs' own predictions: delta = AUROC(irm) - AUROC(erm) per domain
    from sklearn.metrics import roc_auc_score

    def held_auroc(method: str, domain: str) -> float:
        run = next(r for r in runs_of(grid) if r.method == method)
        frame = pd.read_csv(sweep.results(run) / "predictions.csv", keep_default_na=False, na_values=[""])
        frame = frame[(frame["role"] == "heldout") & (frame["domain"] == domain) & (frame["label"] >= 0)]
        return float(roc_auc_score(frame["label"], frame["score"]))

    for row in deltas.itertuples():
        expected = held_auroc("irm", row.heldout_domain) - held_auroc("erm", row.heldout_domain)
        assert expected != 0 and row.delta_auroc == pytest.approx(expected, abs=1e-6), row.heldout_domain
    reverse = paired_deltas(grid, n_boot=50, pairs={"erm": "irm"})  # any pairing, e.g. TTA vs its source
    assert (reverse["baseline"] == "irm").all()
    np.testing.assert_allclose(reverse["delta_auroc"].to_numpy(), -deltas["delta_auroc"].to_numpy(), atol=1e-9)
    for name, frame in (("summary", summary), ("deltas", deltas)):  # the Markdown tables carry every column
        header = Path(f"results/tiny/{name}.md").read_text().splitlines()[2]
        assert header == "| " + " | ".join(frame.columns) + " |"
    logs = {r.id: (sweep.results(r) / "sweep.log").read_text().count("$ ") for r in runs_of(grid)}
    first_summary = pd.read_csv(Path("results/tiny/summary.csv"))
    # a second call runs nothing; a run whose marker is gone runs again (its fit resumes from last.ckpt)
    irm = next(r for r in runs_of(grid) if r.method == "irm")
    (sweep.results(irm) / "run.json").unlink()
    assert main([str(path), "--n-boot", "20"]) == 0
    again = {r.id: (sweep.results(r) / "sweep.log").read_text().count("$ ") for r in runs_of(grid)}
    assert again[irm.id] == logs[irm.id] + 2 and all(again[k] == v for k, v in logs.items() if k != irm.id)
    assert "--ckpt_path=" in (sweep.results(irm) / "sweep.log").read_text().split("$ ")[-2]
    # the interrupted sweep, continued, gives the same table as the uninterrupted one
    pd.testing.assert_frame_equal(pd.read_csv(Path("results/tiny/summary.csv")), first_summary)

    # the study report of these runs

    from mammopath.cli import main as cli

    folders = [str(sweep.results(r)) for r in runs_of(grid)]
    assert cli(["report", *folders, "--out", "report", "--n-boot", "20"]) == 0
    table = pd.read_csv("report/report.csv").set_index("method")
    predictions = pd.read_csv(sweep.results(irm) / "predictions.csv", keep_default_na=False, na_values=[""])
    held = predictions[(predictions["domain"] == "centre_3") & (predictions["label"] >= 0)]
    assert table.at["irm", "centre_3_mean"] == pytest.approx(roc_auc_score(held["label"], held["score"]), abs=1e-6)
    html = Path("report/report.html").read_text()
    import re

    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert ref.startswith("data:") or (Path("report") / ref).is_file(), ref  # nothing outside the file
    assert "Published reference numbers" in Path("report/report.md").read_text()
    for figure in ("gaps.png", "reliability.png", "seeds.png", "roc_centre_3.png"):
        assert (Path("report") / figure).stat().st_size > 1000


def test_grid_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "grid.yaml"
    bad.write_text("name: x\nmethods: {erm: [missing.yaml]}\nfolds: {a: []}\nseeds: [0]\n")
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        Grid.load(bad)
    bad.write_text("name: x\n")
    with pytest.raises(ConfigError, match="lacks"):
        Grid.load(bad)
    for path in sorted((REPO / "experiments/sweeps").glob("*.yaml")):  # every shipped grid loads
        loaded = Grid.load(path)
        assert loaded.baseline in loaded.methods, path
    grid = Grid.load(REPO / "experiments/sweeps/dg_synth.yaml")
    assert len(runs_of(grid)) == 21 and grid.baseline == "erm" and grid.test_only["full_tent"] == "full"


def test_slurm_launcher_writes_job_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.chdir(REPO)  # the grid's config paths are relative to the repository
    grid_path = "experiments/sweeps/dg_synth.yaml"
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no scheduler here: scripts only
    assert (
        main([grid_path, "--launcher", "slurm", "--sbatch=--gres=gpu:1", f"--results-dir={tmp_path / 'results'}"]) == 0
    )
    train = (tmp_path / "results/dg_synth/sweep_train.sbatch").read_text()
    test_only = (tmp_path / "results/dg_synth/sweep_test_only.sbatch").read_text()
    runs = runs_of(Grid.load(REPO / grid_path))
    n_train = sum(r.method not in ("full_tent", "full_causal_tta") for r in runs)
    assert f"#SBATCH --array=0-{n_train - 1}" in train and "#SBATCH --gres=gpu:1" in train
    assert f"#SBATCH --array=0-{len(runs) - n_train - 1}" in test_only
    assert "--run-index" in train and "sweep" in train and train.startswith("#!/bin/bash")
    indices = train.split("INDICES=(")[1].split(")")[0].split()
    assert [runs[int(i)].method for i in indices] == [
        r.method for r in runs if r.method not in ("full_tent", "full_causal_tta")
    ]


FAKE_PYTHON = """#!{python}
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[4:] if a.startswith("--") and "=" in a)
command = sys.argv[3]
start = time.time()
time.sleep(0.6)
run = os.path.join(args["--runs_dir"], args["--run_name"], args["--method"])
if command == "fit":
    os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
    open(os.path.join(run, "checkpoints", "best.ckpt"), "w").close()
with open({log!r}, "a") as log:
    log.write(json.dumps({{"run": args["--method"], "command": command, "start": start, "end": time.time(),
                          "threads": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
"""


def test_parallel_jobs_overlap_training_runs_and_test_checkpoints_only_after_them(tmp_path: Path) -> None:
    import os
    import sys

    log = tmp_path / "calls.jsonl"
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, log=str(log)))
    python.chmod(0o755)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    grid = Grid(name="par", configs=[str(config)], methods={"a": [], "b": [], "a_tta": []}, folds={"f": []},
                seeds=[0], test_only={"a_tta": "a"}, runs_dir=str(tmp_path / "runs"),
                results_dir=str(tmp_path / "results"))  # fmt: skip
    sweep = Sweep(grid, python=str(python))
    sweep.run_all(jobs=2)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    spans = {(c["run"].split("/")[0], c["command"]): (c["start"], c["end"]) for c in calls}
    fits = [spans[("a", "fit")], spans[("b", "fit")]]
    assert max(s for s, _ in fits) < min(e for _, e in fits)  # the two training runs ran side by side
    assert spans[("a_tta", "test")][0] >= max(e for _, e in fits)  # the TTA test waited for the checkpoints
    assert {c["threads"] for c in calls} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert all(sweep.done(r) for r in runs_of(grid))
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        sweep.run_all(jobs=0)
