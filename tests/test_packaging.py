"""A clean clone installs as a wheel (not editable), and a shipped config trains from any folder.

Slow (a clone, a wheel build, a new virtual environment): ``pytest -m slow tests/test_packaging.py`` (CI runs it,
``.ci/run``). Offline: the wheel is built without build isolation and the new environment borrows this one's
installed dependencies through a ``.pth`` line, so only mammopath itself comes from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_wheel_from_a_clean_clone_runs_a_packaged_config_from_any_folder(synth_root: Path, tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a repository to clone")
    clone = tmp_path / "clone"
    _run("git", "clone", "-q", REPO, clone)
    _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", clone
    )
    (wheel,) = (tmp_path / "dist").glob("mammopath-*.whl")
    env = tmp_path / "env"
    _run(sys.executable, "-m", "venv", env)
    python = env / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    elsewhere = tmp_path / "elsewhere"  # no experiments/ here: the config comes from the installed package
    elsewhere.mkdir()
    probe = (
        "import json, importlib.metadata as m, mammopath, mammopath.resources as r; "
        "print(json.dumps([mammopath.__file__, str(r.experiments_dir()), m.requires('mammopath')]))"
    )
    where, configs, requires = json.loads(_run(python, "-c", probe, cwd=elsewhere).stdout)
    assert Path(where).is_relative_to(env) and Path(configs).is_relative_to(env)  # the wheel, not this checkout
    assert any(r.replace(" ", "").startswith("torch>=") for r in requires) and not any("torch==" in r for r in requires)
    tiny = json.dumps({"patch_size": 8, "depth": 1, "embed_dim": 24})
    fit = _run(
        env / "bin" / "mammopath", "fit", "--config", "experiments/synth.yaml",
        f"--data.manifest={synth_root / 'manifest.csv'}", "--data.image_size=32", "--data.batch_size=4",
        f"--model.model_kwargs={tiny}", "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
        cwd=elsewhere,
    )  # fmt: skip
    assert "Traceback" not in fit.stdout + fit.stderr
    assert (elsewhere / "runs" / "synth").is_dir()  # outputs land in the folder it was run from
