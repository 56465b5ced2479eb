"""The evidence suite's arms are fair: the same sampler, budget, selection rule and data for every method.

Each training arm composes experiments/evidence/base.yaml → a scenario → one method file; what may differ
between arms is only the method's own mechanism (its callbacks, `model.alignment`, and for the no-auxiliary arm
the auxiliary loss weights). Checked on the configs LightningCLI resolves, not on the files' text alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_experiments import callback_names, resolved

EVIDENCE = Path(__file__).resolve().parents[1] / "experiments" / "evidence"
METHODS = sorted((EVIDENCE / "methods").glob("*.yaml"))
TRAINING = [m for m in METHODS if m.stem not in ("tent", "causal_tta")]  # TTA arms test another arm's ckpt
MECHANISMS = {"AlignmentMonitor", "MixStyle", "IRM", "TENT", "CausalTTA"}


def shared_part(config: dict) -> dict:
    """Everything an arm must share: data (sampler included), trainer budget, selection, optimizer, model."""
    model = {k: v for k, v in config["model"].items() if k not in ("alignment", "loss_weights")}
    checkpoint = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    trainer = {k: config["trainer"][k] for k in ("max_epochs", "accelerator", "devices", "precision")}
    base = [n for n in callback_names(config) if n not in MECHANISMS]
    return {"data": config["data"], "seed": config["seed_everything"], "model": model, "trainer": trainer,
            "checkpoint": checkpoint, "callbacks": base}  # fmt: skip


@pytest.mark.parametrize("scenario", ["P", "M4"])
def test_every_training_arm_shares_sampler_budget_selection_and_data(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = {m.stem: resolved(capsys, EVIDENCE / "base.yaml", EVIDENCE / "scenarios" / f"{scenario}.yaml", m)
               for m in TRAINING}  # fmt: skip
    erm = shared_part(configs["erm"])
    assert erm["data"]["init_args"]["balance_domains"] is True  # domain-balanced for every arm, ERM included
    assert erm["checkpoint"][0]["init_args"]["monitor"] == "val/auroc"  # source validation only
    for name, config in configs.items():
        assert shared_part(config) == erm, name
        weights = config["model"]["loss_weights"]
        if name != "erm_no_aux":
            assert weights == configs["erm"]["model"]["loss_weights"], name
        else:  # the one arm that switches the auxiliary heads off changes only their weights
            assert {k: v for k, v in weights.items() if v} == {"cls": 1.0, "align": 1.0}


def test_method_files_state_only_their_mechanism() -> None:
    for method in METHODS:
        config = yaml.safe_load(method.read_text())
        assert set(config) <= {"method", "model", "trainer"}, method.name  # never data, seed or run name
        assert set(config.get("trainer", {})) <= {"callbacks+", "inference_mode"}, method.name
        assert set(config.get("model", {})) <= {"alignment", "loss_weights"}, method.name
        for callback in config.get("trainer", {}).get("callbacks+", []):
            assert callback["class_path"].rsplit(".", 1)[-1] in MECHANISMS, (method.name, callback)
