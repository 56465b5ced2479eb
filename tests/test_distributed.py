"""CPU DDP (gloo): training and evaluation with 2 and 3 processes, as one process does, and no rank-only logging.

Every distributed run is a `python -m mammopath` subprocess in its own session with a timeout: the `ddp` strategy
starts its other ranks by re-running the command line, which inside pytest would be pytest itself, and a hung
collective then fails the test (the whole process group is killed) instead of stalling the suite.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per command; a deadlock fails the test
CPU2 = ["--trainer.accelerator=cpu", "--trainer.devices=2"]


def mammopath(*args: str, cwd: Path, timeout: int = TIMEOUT) -> str:
    """Run `python -m mammopath ARGS`; fail with its output on error or timeout (killing every rank)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("MASTER_PORT", None)  # a free port per run: parallel sessions must not collide
    proc = subprocess.Popen(
        [sys.executable, "-m", "mammopath", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`mammopath {' '.join(args[:1])}` hung for {timeout} s (deadlock?):\n{out[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"`mammopath {' '.join(args)}` exited {proc.returncode}:\n{out[-6000:]}")
    return out


def tiny(synth_root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}",
        f"--trainer.default_root_dir={out}",
        *extra,
    ]  # fmt: skip


def evaluate(synth_root: Path, out: Path, ckpt: Path, *extra: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`test` of a checkpoint (uneven evaluation batches of 7); returns (predictions, metrics_by_domain)."""
    results = ["--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter", f"--trainer.callbacks.out_dir={out}"]
    args = tiny(synth_root, out, "--data.eval_batch_size=7", *results, f"--ckpt_path={ckpt}", *extra)
    mammopath("test", *args, cwd=out.parent)
    predictions = pd.read_csv(out / "predictions.csv").sort_values("sample_id").reset_index(drop=True)
    metrics = pd.read_csv(out / "metrics_by_domain.csv").sort_values(["modality", "domain"]).reset_index(drop=True)
    return predictions, metrics


@pytest.mark.slow  # four launches of the CLI (about 2 min); CI runs it (.ci/run)
def test_ddp_fit_then_test_with_2_and_3_processes_equals_one(synth_root: Path, tmp_path: Path) -> None:
    ddp = ["--config", str(REPO / "experiments/strategies/ddp.yaml")]
    # fit under DDP (2 gloo processes), with the slide-grouped sampler giving each rank its share
    fit = tiny(synth_root, tmp_path / "fit", *ddp, *CPU2, "--trainer.enable_checkpointing=true")
    mammopath("fit", *fit, "--data.group_by_slide=true", "--data.slide_group_size=4", cwd=tmp_path)
    (ckpt,) = (tmp_path / "fit" / "checkpoints").glob("*.ckpt")
    one = evaluate(synth_root, tmp_path / "one", ckpt)
    two = evaluate(synth_root, tmp_path / "two", ckpt, *ddp, *CPU2)
    spawn = ["--config", str(REPO / "experiments/strategies/ddp_spawn.yaml"), "--trainer.accelerator=cpu"]
    three = evaluate(synth_root, tmp_path / "three", ckpt, *spawn, "--trainer.devices=3")
    for predictions, metrics in (two, three):
        # the padded duplicates of the distributed sampler are dropped: every sample once, none missing
        assert list(predictions["sample_id"]) == list(one[0]["sample_id"])
        assert predictions["sample_id"].is_unique
        pd.testing.assert_series_equal(predictions["score"], one[0]["score"], atol=1e-5, rtol=0)
        assert list(metrics[["modality", "domain", "n", "n_pos"]].itertuples()) == list(
            one[1][["modality", "domain", "n", "n_pos"]].itertuples()
        )
        for column in ("auroc", "accuracy", "balanced_accuracy", "sens_at_spec", "ece", "qwk"):
            pd.testing.assert_series_equal(metrics[column], one[1][column], atol=1e-6, rtol=0, check_names=False)
    assert one[1]["auroc"].notna().any()


# -- no collective or synced log in a rank-only branch --------------------------------------------------------
RANK_WORDS = ("is_global_zero", "global_rank", "local_rank", "rank_zero", "get_rank", "is_main_process")
COLLECTIVES = ("log", "log_dict", "all_gather", "all_reduce", "barrier", "broadcast", "reduce", "gather")


def _rank_conditional(test: ast.expr) -> bool:
    return any(word in ast.unparse(test) for word in RANK_WORDS)


def _collectives(nodes: list[ast.stmt]) -> list[str]:
    found = []
    for node in nodes:
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                if name in COLLECTIVES or any(k.arg == "sync_dist" for k in call.keywords):
                    found.append(f"line {call.lineno}: {ast.unparse(call)[:80]}")
    return found


def rank_only_collectives(source: str) -> list[str]:
    """Logs and collectives inside `if <rank condition>:` branches or `@rank_zero_only` functions."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and _rank_conditional(node.test):
            problems += _collectives(node.body + node.orelse)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            "rank_zero" in ast.unparse(d) for d in node.decorator_list
        ):
            problems += _collectives(node.body)
    return problems


def test_the_checker_finds_a_rank_only_log() -> None:
    bad = "def f(self):\n    if self.trainer.is_global_zero:\n        self.log('val/auroc', 1.0, sync_dist=True)\n"
    assert rank_only_collectives(bad)
    worse = "@rank_zero_only\ndef f(self, t):\n    return self.all_gather(t)\n"
    assert rank_only_collectives(worse)
    fine = "def f(self):\n    if self.trainer.is_global_zero:\n        console.print(table)\n    self.log('x', 1)\n"
    assert not rank_only_collectives(fine)


def test_no_log_or_collective_sits_in_a_rank_only_branch() -> None:
    problems = {}
    for path in sorted((REPO / "mammopath").rglob("*.py")):
        found = rank_only_collectives(path.read_text())
        if found:
            problems[str(path.relative_to(REPO))] = found
    assert not problems, f"rank-conditional logging/collectives deadlock DDP (pitfalls §3.5): {problems}"


# -- FSDP -------------------------------------------------------------------------------------------------
def test_fsdp_is_gpu_only_in_lightning_and_its_policy_wraps_every_block() -> None:
    import importlib

    import lightning as L
    from lightning.pytorch.strategies import FSDPStrategy

    # Lightning refuses FSDP without a CUDA accelerator, so FSDP is documented and tested as GPU-only
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), logger=False)
    config = yaml.safe_load((REPO / "experiments/strategies/fsdp.yaml").read_text())
    init = config["trainer"]["strategy"]["init_args"]
    classes = tuple(
        getattr(importlib.import_module(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1])
        for path in init["auto_wrap_policy"]
    )
    assert "activation_checkpointing_policy" not in init and config["model"]["grad_checkpointing"] is True
    from mammopath.models.encoders import ViTEncoder

    for adapter in ("adaptformer", "houlsby", "lora", "none"):  # every block is an FSDP unit, whatever the adapter
        enc = ViTEncoder(
            "vit_tiny_patch16_224", img_size=32, model_kwargs={"patch_size": 8, "depth": 2}, adapter=adapter
        )
        assert all(isinstance(block, classes) for block in enc.vit.blocks), adapter


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.device_count() >= 2, reason="needs 2 CUDA devices (NCCL)")
def test_fsdp_two_gpu_fit_saves_a_checkpoint_a_plain_model_loads(synth_root: Path, tmp_path: Path) -> None:
    fsdp = ["--config", str(REPO / "experiments/strategies/fsdp.yaml"), "--trainer.devices=2"]
    args = tiny(synth_root, tmp_path / "fit", *fsdp, "--trainer.accelerator=gpu", "--trainer.enable_checkpointing=true")
    mammopath("fit", *args, cwd=tmp_path)
    (ckpt,) = (tmp_path / "fit" / "checkpoints").glob("*.ckpt")
    import torch

    from mammopath.models.module import MammoPathModule

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model = MammoPathModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
