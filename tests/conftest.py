"""Shared fixtures: a tiny synthetic benchmark written once per test session."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from mammopath.synth.styles import SynthConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def tiny_config() -> SynthConfig:
    """The default benchmark shrunk to seconds: 6 patients per hospital, 6 small slides per centre."""
    return replace(
        SynthConfig(),
        mammo_patients_per_domain=6,
        slides_per_domain=6,
        slide_size=512,
        tile=128,
        paired_patients=20,
        mammo_test_patients=4,
        test_slides_per_domain=2,
    )


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mammopath.synth.benchmark import make_synth_benchmark

    root = tmp_path_factory.mktemp("synth")
    make_synth_benchmark(root, seed=0, cfg=tiny_config())
    return root


@pytest.fixture(scope="session")
def shared_samples() -> Path:
    """The genuine benchmark metadata files (skipped with a reason when ../shared is absent)."""
    path = SHARED / "real_samples"
    if not path.is_dir():
        pytest.skip(f"genuine sample files not found at {path} (clone without ../shared)")
    return path


def load_fake(name: str) -> ModuleType:
    """The fake-release generator ``tests/data/<name>/make_fake.py`` as a module (torchgeo style)."""
    spec = importlib.util.spec_from_file_location(f"{name}_make_fake", REPO / "tests" / "data" / name / "make_fake.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synth_releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five benchmark releases `mammopath synth` writes, in their official layouts (read-only by convention)."""
    from mammopath.synth.benchmark import write_releases

    root = tmp_path_factory.mktemp("releases")
    write_releases(root, seed=0)
    return root


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (to prove a folder was not written)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
