"""`make bench`: the table stays readable when piped, targets are checked, every suite is registered."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench.__main__ import SUITES
from bench.common import Result, peak_memory
from bench.table import COLUMNS, markdown, render

REPO = Path(__file__).resolve().parents[1]

RESULTS = [
    Result("1", "Trainer.fit vs plain loop (a long name that a narrow console would fold)", 650.0, 660.0, "images/s",
           0.985, "throughput Trainer.fit / plain PyTorch loop (steady state)", ">= 0.95"),
    Result("4", "adapter forward", 110.0, 100.0, "ms", 1.1, "time with adapters / plain timm", "<= 1.10"),
    Result("7", "metrics memory", 30.0, 20.0, "MiB", 1.5, "peak added / inputs", "<= 1.00"),
    Result("9", "context figure", 1.0, 2.0, "s", 0.5, "shown for context", "reported"),
]  # fmt: skip


def test_targets_are_checked_against_the_ratio() -> None:
    assert [r.ok for r in RESULTS] == [True, True, False, None]


def test_piped_output_is_one_markdown_line_per_result() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80)  # not a terminal, and narrow: what rich assumes when piped
    render(RESULTS, console, "title")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(RESULTS)  # header, separator, one line per result: nothing folded
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert "| 7 | metrics memory | 30.0 | 20.0 | MiB | 1.500 | <= 1.00 | NO |" in lines[4]
    assert "| - |" in lines[5] and out.getvalue() == "title\n\n" + markdown(RESULTS) + "\n"


def test_a_terminal_gets_the_rich_table() -> None:
    out = io.StringIO()
    render(RESULTS, Console(file=out, width=200, force_terminal=True), "title")
    assert "┃" in out.getvalue() or "│" in out.getvalue()


def test_every_numbered_item_has_a_suite() -> None:
    assert set(SUITES) == {"training", "slides", "mammograms", "adapters", "tta", "metrics"}


def test_tta_cost_lines_carry_the_analytic_floor() -> None:
    from bench.tta import tta_cost

    results = tta_cost("vit_tiny_patch16_224", batch=2, image_size=32, k=2, repeats=1, augmentations=3)
    floor = 1 + 2 * (12 - 2) / 12  # L = 12 blocks, intervention after the first 2, K = 2
    checked = [r for r in results if r.target == "<= 1.25" and r.unit == "x plain"]
    # marginalization; + the update with SAM (2 forwards with gradients, 2 backwards, the shuffled forward); trimming
    assert [r.raw for r in checked] == pytest.approx([floor, floor + 7, 1 + 3])
    for line in checked:  # the checked ratio is the reported time ratio over its floor
        assert line.ours > 1.0 and line.ratio == pytest.approx(line.ours / line.raw)
    (arithmetic,) = [r for r in results if "raw torch" in r.name]  # trimming vs the raw torch ops
    assert (
        arithmetic.ours > 0
        and arithmetic.raw > 0
        and arithmetic.ratio == pytest.approx(arithmetic.ours / arithmetic.raw)
    )


def test_peak_memory_sees_a_large_allocation_every_time() -> None:
    import numpy as np

    first = peak_memory(lambda: np.ones(4_000_000))  # 32 MB
    if first is None:
        pytest.skip("no /proc/self/clear_refs (not Linux)")
    second = peak_memory(lambda: np.ones(4_000_000))
    assert second is not None
    for value in (first, second):
        assert 30e6 < value < 40e6


@pytest.mark.slow
def test_bench_runs_piped(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "mammograms", "metrics"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 3 ") or line.startswith("| 7 ")]
    assert len(rows) == 3, proc.stdout + proc.stderr
