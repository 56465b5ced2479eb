"""`make bench` / `python -m bench`: every benchmark as a ratio against the raw library doing the same work.

The numbered items are those of ``docs/performance.md``; the exit status is 1 when a target does not hold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable

import torch
from rich.console import Console

from bench.adapters import adapter_overhead
from bench.common import Result
from bench.metrics import per_domain_metrics
from bench.readers import mammograms, slide_patches
from bench.table import render
from bench.tta import tta_cost

#: suite name -> benchmark, in table order.
SUITES: dict[str, Callable[[], list[Result]]] = {}


def _training() -> list[Result]:
    from bench.training import training

    return training()


SUITES.update(
    {
        "training": _training,  # (1) Trainer.fit vs plain loop, (6) data pipeline vs model
        "slides": slide_patches,  # (2)
        "mammograms": mammograms,  # (3)
        "adapters": adapter_overhead,  # (4)
        "tta": tta_cost,  # (5) CausalTTA vs plain inference, against its analytic floor
        "metrics": per_domain_metrics,  # (7)
    }
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"any of {list(SUITES)} (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table even on a terminal")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {list(SUITES)}")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*train_dataloader.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    results: list[Result] = []
    start, load = time.perf_counter(), os.getloadavg()[0]
    for suite in args.suites or list(SUITES):
        with console.status(f"running {suite}..."):
            results += SUITES[suite]()
    results.sort(key=lambda r: r.item)
    title = (
        f"mammopath benchmarks: ours vs the raw library doing the same work ({time.perf_counter() - start:.0f} s on "
        f"{os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads, load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end)"
    )
    render(results, console, title, as_markdown=True if args.markdown else None)
    return 0 if all(r.ok is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
