"""Checkpoints never run code; configs cannot import what the policy denies (pitfalls §3.3, §6.1, §6.2)."""

from __future__ import annotations

import ast
from pathlib import Path

import jsonargparse._common as jsonargparse_settings
import pytest
import torch
from helpers import squash

from mammopath.cli import main
from mammopath.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: a harmless stand-in for a code-running payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": Payload(marker)}, "epoch": 0}, path)
    return path


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore jsonargparse's process-wide import policy after the test."""
    for key in ("import_path_verdicts", "import_paths_enforced"):
        monkeypatch.setitem(jsonargparse_settings.parsing_settings, key, jsonargparse_settings.parsing_settings[key])


def test_pickled_payload_is_refused_everywhere_and_never_runs(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: None
) -> None:
    from mammopath.models.module import MammoPathModule
    from mammopath.models.weights import read_state_dict

    marker = tmp_path / "PAYLOAD_RAN"
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: cannot read weights"):
        read_state_dict(evil)  # backbone weights (model.checkpoint_path)
    with pytest.raises(Exception, match="Weights only load failed"):
        MammoPathModule.load_from_checkpoint(evil, map_location="cpu", weights_only=True)
    args = [
        "--config", str(REPO / "tests/conf/tiny.yaml"), "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}", f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    for command in ("fit", "test"):  # resume or evaluate from the file through the CLI
        assert main([command, *args, f"--ckpt_path={evil}"]) == 2
        printed = squash(capsys.readouterr().out)
        assert squash(f"{evil}: refused: the checkpoint holds Python objects (getattr)") in printed
    absent = tmp_path / "absent.ckpt"
    assert main(["fit", *args, f"--ckpt_path={absent}", "--weights_only=false"]) == 2  # needs the trust variable
    assert squash("weights_only=false would run any code") in squash(capsys.readouterr().out)
    assert not marker.exists()  # the payload never ran
    torch.load(evil, weights_only=False)  # the control: the payload is real and runs when unpickling is allowed
    assert marker.exists()


def test_every_torch_load_is_weights_only() -> None:
    """Every torch.load call in mammopath passes weights_only=True literally."""
    calls = []
    for path in (REPO / "mammopath").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append(path)
                keywords = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in keywords and ast.literal_eval(keywords["weights_only"]) is True, path
    assert calls


def _config_with(tmp_path: Path, class_path: str, marker: Path) -> Path:
    config = tmp_path / "evil.yaml"
    config.write_text(
        f"model:\n  optimizer:\n    class_path: {class_path}\n    init_args:\n      args: [touch, {marker}]\n"
    )
    return config


@pytest.mark.parametrize("class_path", ["subprocess.Popen", "os.system"])
def test_config_naming_a_denied_import_is_rejected_before_instantiation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], class_path: str, policy: None
) -> None:
    marker = tmp_path / "CONFIG_RAN"
    config = _config_with(tmp_path, class_path, marker)
    assert main(["fit", "--config", str(REPO / "tests/conf/tiny.yaml"), "--config", str(config), "--print_config"]) == 2
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip()]  # one line, the file named
    assert line.startswith(f"error: {config}: model.optimizer") and f"Importing '{class_path}' is not allowed" in line
    assert not marker.exists()


def test_opt_in_allow_list_denies_everything_else(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, policy: None
) -> None:
    from mammopath.lightning_cli import SUGGESTED_CLASS_PATHS

    monkeypatch.setenv("MAMMOPATH_ALLOWED_CLASS_PATHS", ",".join(SUGGESTED_CLASS_PATHS))
    base = ["--config", str(REPO / "tests/conf/tiny.yaml"), "--config", str(REPO / "tests/conf/synth.yaml")]
    with pytest.raises(SystemExit) as info:  # the shipped configs only name allowed prefixes
        main(["fit", *base, "--print_config"])
    assert info.value.code in (0, None)
    capsys.readouterr()
    config = tmp_path / "other.yaml"
    config.write_text("model:\n  optimizer:\n    class_path: collections.OrderedDict\n")  # harmless, but not allowed
    assert main(["fit", *base, "--config", str(config), "--print_config"]) == 2
    assert "Importing 'collections.OrderedDict' is not allowed" in capsys.readouterr().out
