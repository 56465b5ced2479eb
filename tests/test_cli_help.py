"""The CLI a new user meets: one help listing every command, --version, typos answered in one line with the fix."""

from __future__ import annotations

import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import lightning  # noqa: F401  (its log handler binds the session's stderr at import, not one test's capture)
import pytest

from mammopath.cli import COMMAND_HELP, COMMANDS, TRAINING_COMMANDS, main
from mammopath.models.presets import ENCODER_PRESETS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config", str(REPO / "tests/conf/tiny.yaml"), "--config", str(REPO / "tests/conf/synth.yaml")]
MAMMOPATH = str(Path(sys.executable).parent / "mammopath")


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.out[-3000:]
    assert "Traceback" not in captured.out + captured.err and "usage:" not in captured.out + captured.err
    return errors[0]


def test_top_level_help_lists_every_command_once_with_an_example() -> None:
    out = subprocess.run([MAMMOPATH, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stderr.strip()
    names = [name for name, _, _ in COMMAND_HELP]
    assert sorted(names) == sorted([*COMMANDS, *TRAINING_COMMANDS])
    lines = out.stdout.splitlines()
    for name, what, example in COMMAND_HELP:
        listed = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert len(listed) == 1, name
        assert what in lines[listed[0]] and f"e.g. {example}" in lines[listed[0] + 1]
        assert example.startswith(f"mammopath {name}")
    assert max(len(line) for line in lines) < 200  # descriptions are whole, never cut
    bare = subprocess.run([MAMMOPATH], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and bare.stdout == out.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mammopath {version('mammopath')}"


def test_an_unknown_command_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt': did you mean 'fit'?" in error_line(capsys)
    assert main(["prepar", "bach"]) == 2
    assert "did you mean 'prepare'?" in error_line(capsys)


def test_config_keys_are_never_abbreviated_and_typos_get_the_near_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", *TINY, "--model.backbon=vit_small", "--print_config"]) == 2  # was taken as backbone
    line = error_line(capsys)
    assert "--model.backbon: unknown option; did you mean --model.backbone?" in line
    assert main(["fit", *TINY, "--trainer.max_epoch=3", "--print_config"]) == 2
    assert "did you mean --trainer.max_epochs?" in error_line(capsys)
    assert main(["fit", *TINY, "--trainer.max_epochs=abc", "--print_config"]) == 2
    assert "--trainer.max_epochs: expected int or None, got 'abc'" in error_line(capsys)
    benchmark = [
        "--config",
        str(REPO / "experiments/base.yaml"),
        "--config",
        str(REPO / "experiments/benchmarks/bach.yaml"),
    ]
    assert main(["fit", *benchmark, "--data.init_args.rooot=/data", "--print_config"]) == 2
    assert "--data.init_args.rooot: BACHDataModule has no option 'rooot'; did you mean root?" in error_line(capsys)


def test_config_file_mistakes_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.yaml"
    key.write_text("model:\n  backbon: vit_small\n")
    assert main(["fit", *TINY, "--config", str(key), "--print_config"]) == 2
    assert f"{key}: model.backbon: unknown key; did you mean model.backbone?" in error_line(capsys)
    value = tmp_path / "value.yaml"
    value.write_text("trainer:\n  max_epochs: many\n")
    assert main(["fit", *TINY, "--config", str(value), "--print_config"]) == 2
    assert f"{value}: trainer.max_epochs: expected int or None, got 'many'" in error_line(capsys)
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("model:\n  backbone: [vit_small\n")
    assert main(["fit", *TINY, "--config", str(syntax)]) == 2
    assert f"{syntax}, line 3, column 1: YAML syntax error" in error_line(capsys)
    assert main(["fit", *TINY, "--config", str(tmp_path / "absent.yaml")]) == 2
    assert f"--config {tmp_path / 'absent.yaml'}: file not found" in error_line(capsys)


def test_an_unknown_backbone_lists_the_presets_and_the_near_name(
    synth_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", *TINY, f"--data.manifest={synth_root / 'manifest.csv'}", "--trainer.fast_dev_run=1"]
    assert main([*args, "--model.backbone=vit_smal"]) == 2
    line = error_line(capsys)
    assert "model.backbone 'vit_smal'" in line and "did you mean 'vit_small'" in line
    assert all(name in line for name in ENCODER_PRESETS) and "mammopath encoders" in line


def test_encoders_lists_every_preset_and_where_its_file_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name, preset in ENCODER_PRESETS.items():
        assert f"  {name} " in out and preset.default_location in out and preset.licence in out
        assert (REPO / "experiments/encoders" / f"{name}.yaml").is_file()


def test_fit_ends_with_the_best_checkpoint_and_the_test_command_that_runs(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "fit", *TINY, f"--data.manifest={synth_root / 'manifest.csv'}", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_checkpointing=true", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
    ]  # fmt: skip
    assert main(args) == 0
    last = [line for line in capsys.readouterr().out.splitlines() if line.strip()][-1]
    assert last.startswith("best checkpoint: ")
    best, command = last.removeprefix("best checkpoint: ").split("; next: ")
    assert Path(best).is_file() and Path(best).parent.parent == tmp_path
    words = shlex.split(command)
    assert words[:2] == ["mammopath", "test"] and words[-1] == f"--ckpt_path={best}"
    assert main([*words[1:], "--trainer.limit_test_batches=1"]) == 0


def test_a_sweep_grid_runs_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammopath.sweep import Grid

    monkeypatch.chdir(tmp_path)  # far from the repository: the grid's config paths are relative to the grid file
    for path in sorted((REPO / "experiments/sweeps").glob("*.yaml")):
        grid = Grid.load(path)
        configs = [*grid.configs, *(c for v in grid.methods.values() for c in v)]
        assert configs and all(Path(c).is_file() for c in configs), path
    assert main(["sweep", str(REPO / "experiments/sweeps/reproduce_demo.yaml"), "--dry-run"]) == 0
