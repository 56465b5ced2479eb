"""Every shipped experiment YAML parses, and base × data × method × fold configs compose as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mammopath.cli import run_lightning_cli

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if p.parent.name != "sweeps")
FOLDS = sorted((REPO / "experiments" / "lodo").glob("*.yaml"))
BASE = REPO / "experiments" / "base.yaml"
PUBLIC = REPO / "experiments" / "benchmarks" / "public.yaml"


def resolved(capsys: pytest.CaptureFixture[str], *configs: Path) -> dict:
    """The config LightningCLI resolves from ``configs`` (``fit --print_config``)."""
    args = ["fit"]
    for config in configs:
        args += ["--config", str(config)]
    with pytest.raises(SystemExit) as info:
        run_lightning_cli([*args, "--print_config"])
    assert info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def callback_names(config: dict) -> list[str]:
    return [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"] or []]


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[str(p.relative_to(REPO / "experiments")) for p in EXPERIMENTS])
def test_experiment_yaml_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a fold, a method or an encoder alone is an overlay: it parses composed after the base and a data config
    overlay = config.parent.name in ("lodo", "baselines", "encoders", "strategies", "explain")
    if config.name == "demo.yaml":  # the demo is the synthetic benchmark plus alignment
        printed = resolved(capsys, REPO / "experiments" / "synth.yaml", config)
    elif "evidence" in config.parts:  # the evidence suite composes base → scenario → method
        evidence = REPO / "experiments" / "evidence"
        printed = resolved(capsys, *dict.fromkeys([evidence / "base.yaml", evidence / "scenarios" / "P.yaml", config]))
    else:
        printed = resolved(capsys, BASE, PUBLIC, config) if overlay else resolved(capsys, config)
    assert printed["model"]["backbone"] and printed["data"]["class_path"].startswith("mammopath.datamodules")


@pytest.mark.parametrize("fold", FOLDS, ids=[p.stem for p in FOLDS])
def test_folds_state_only_their_holdout_and_run_name(fold: Path) -> None:
    config = yaml.safe_load(fold.read_text())
    assert set(config) == {"run_name", "data"} and set(config["data"]) == {"holdout_domains"}
    assert "callbacks" not in fold.read_text()


def test_a_callback_added_to_base_reaches_every_fold_and_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = yaml.safe_load(BASE.read_text())
    base["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"})
    new_base = tmp_path / "base.yaml"
    new_base.write_text(yaml.safe_dump(base))
    method = tmp_path / "method.yaml"  # a method appends its callbacks, never restates the list
    early_stop = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/auroc"}}
    method.write_text(yaml.safe_dump({"method": "early_stop", "trainer": {"callbacks+": [early_stop]}}))
    erm = REPO / "experiments" / "baselines" / "erm.yaml"
    expected = ["ModelCheckpoint", "ModelCheckpoint", "RichProgressBar", "ResultsWriter", "PredictionWriter",
                "LearningRateMonitor"]  # fmt: skip
    for fold in FOLDS:
        plain = resolved(capsys, new_base, PUBLIC, fold)
        assert callback_names(plain) == expected, fold.name
        assert plain["run_name"] == yaml.safe_load(fold.read_text())["run_name"]
        assert (
            plain["data"]["init_args"]["holdout_domains"] == yaml.safe_load(fold.read_text())["data"]["holdout_domains"]
        )
        # method × fold, in either order: base callbacks kept, the method's appended
        for configs in ((new_base, PUBLIC, method, fold), (new_base, PUBLIC, fold, method)):
            composed = resolved(capsys, *configs)
            assert callback_names(composed) == [*expected, "EarlyStopping"], fold.name
            assert composed["method"] == "early_stop"
        assert callback_names(resolved(capsys, new_base, PUBLIC, erm, fold)) == expected


def test_run_name_decides_every_output_folder(tmp_path: Path) -> None:
    from jsonargparse import Namespace

    from mammopath.lightning_cli import apply_run_layout

    callbacks = [
        Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint", init_args=Namespace(dirpath=None)),
        Namespace(class_path="mammopath.callbacks.results.ResultsWriter", init_args=Namespace(out_dir="x", title=None)),
        Namespace(class_path="mammopath.callbacks.predictions.PredictionWriter", init_args=Namespace(out_dir=None)),
    ]
    config = Namespace(
        run_name="lodo_inbreast",
        method="irm",
        runs_dir=str(tmp_path / "runs"),
        results_dir=str(tmp_path / "results"),
        trainer=Namespace(logger=None, callbacks=callbacks, default_root_dir=None),
    )
    assert apply_run_layout(config, "test") == "lodo_inbreast/irm"
    run = tmp_path / "runs" / "lodo_inbreast" / "irm"
    assert config.trainer.default_root_dir == str(run)
    assert config.trainer.logger.init_args.name == "lodo_inbreast/irm"
    assert config.trainer.logger.init_args.version == "test"  # fit and test: sibling TensorBoard runs
    assert callbacks[0].init_args.dirpath == str(run / "checkpoints")
    assert callbacks[1].init_args.out_dir == str(tmp_path / "results" / "lodo_inbreast" / "irm")
    # predict writes beside the test results of the same run, never over them
    assert callbacks[2].init_args.out_dir == str(tmp_path / "results" / "lodo_inbreast" / "irm" / "predict")
    off = Namespace(run_name="r", trainer=Namespace(logger=False, callbacks=[], default_root_dir=None))
    apply_run_layout(off, "fit")
    assert off.trainer.logger is False  # a logger switched off stays off
    assert apply_run_layout(Namespace(run_name=None, trainer=Namespace()), "fit") is None
