"""experiments/encoders/<preset>.yaml through the real CLI: fit starts with the load report, bad files fail at setup.

Every preset's config composes with ``experiments/base.yaml`` and the tiny synthetic cohort; the weights
are a depth-reduced twin written in the vendor's own layout at the vendor's image size
(``tests/data/encoders/make_fake.py``), shrunk to the test config through ``model.model_kwargs``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import load_fake

from mammopath.cli import main, run_lightning_cli
from mammopath.errors import CheckpointError
from mammopath.models.presets import ENCODER_PRESETS

REPO = Path(__file__).resolve().parents[1]
ENCODERS = REPO / "experiments" / "encoders"
fake = load_fake("encoders")
SMALL = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def fit_args(name: str, synth_root: Path, tmp_path: Path, weights: Path, *extra: str) -> list[str]:
    side = fake.twin_size(ENCODER_PRESETS[name])
    return [
        "fit",
        "--config",
        str(REPO / "experiments/base.yaml"),
        "--config",
        str(ENCODERS / f"{name}.yaml"),
        "--config",
        str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={synth_root / 'manifest.csv'}",
        f"--data.image_size={side}",
        "--data.batch_size=4",
        f"--model.checkpoint_path={weights}",
        f"--model.model_kwargs={json.dumps(SMALL)}",
        "--trainer.fast_dev_run=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.precision=32-true",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--results_dir={tmp_path / 'results'}",
        *extra,
    ]


def test_one_config_per_preset_setting_only_the_model() -> None:
    assert sorted(p.stem for p in ENCODERS.glob("*.yaml")) == sorted(ENCODER_PRESETS)
    for name, preset in ENCODER_PRESETS.items():
        config = yaml.safe_load((ENCODERS / f"{name}.yaml").read_text())
        assert set(config) == {"model"} and "callbacks" not in (ENCODERS / f"{name}.yaml").read_text()
        assert config["model"] == {"backbone": name, "checkpoint_path": preset.default_location}


@pytest.mark.parametrize("name", sorted(ENCODER_PRESETS))
def test_fit_starts_with_the_load_report(
    name: str, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = ENCODER_PRESETS[name]
    weights, reference, _ = fake.write_weights(preset, tmp_path / "w" / preset.files[0], model_kwargs=SMALL)
    assert main(fit_args(name, synth_root, tmp_path, weights)) == 0
    out = capsys.readouterr().out
    assert "Pretrained weights" in out and f"preset '{name}'" in out
    counts = dict(re.findall(r"│ (matched|unexpected|tensors in file) +│ ([\d,]+) ", out))
    assert counts == {"tensors in file": counts["tensors in file"], "matched": str(len(reference)), "unexpected": "0"}
    assert "pos_embed resampled" in out
    assert out.index("Pretrained weights") < out.index("Parameters")


def test_a_mismatched_or_truncated_file_fails_at_setup(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uni = ENCODER_PRESETS["uni"]
    weights, _, _ = fake.write_weights(uni, tmp_path / "uni" / "pytorch_model.bin", model_kwargs=SMALL)
    with pytest.raises(CheckpointError) as err:  # a UNI file for the Virchow2 preset
        run_lightning_cli(fit_args("virchow2", synth_root, tmp_path, weights))
    msg = str(err.value)
    assert str(weights) in msg and "preset 'virchow2'" in msg and "missing in file: reg_token" in msg
    cut = tmp_path / "cut.bin"
    cut.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{cut}: cannot read weights for preset 'uni'"):
        run_lightning_cli(fit_args("uni", synth_root, tmp_path, cut))
    assert main(fit_args("uni", synth_root, tmp_path, tmp_path / "absent.bin")) == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert "file not found" in printed and "weights/uni/pytorch_model.bin" in printed
