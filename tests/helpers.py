"""Helpers shared by test modules (importable as ``helpers``: pytest puts ``tests/`` on the path for its conftest)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def squash(text: str) -> str:
    """Console text without whitespace (rich wraps long lines anywhere)."""
    return "".join(str(text).split())


def tiny_fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``mammopath fit`` of the tiny test config on the synthetic cohort under ``data``, outputs under ``out``."""
    return [
        "fit",
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={data / 'manifest.csv'}",
        f"--trainer.default_root_dir={out}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        *extra,
    ]  # fmt: skip
