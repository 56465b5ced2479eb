"""`make bench` / `python -m bench`: every benchmark as a ratio against the raw library."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from bench.adapters import adapter_overhead
from bench.common import Result
from bench.readers import mammograms, slide_patches

SUITES = {"slides": slide_patches, "mammograms": mammograms, "adapters": adapter_overhead}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help=f"any of {list(SUITES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {list(SUITES)}")
    args.suites = args.suites or list(SUITES)
    results: list[Result] = []
    console = Console()
    for suite in args.suites:
        with console.status(f"running {suite}..."):
            results += SUITES[suite]()
    table = Table(title="mammopath benchmarks (ratio vs the raw library doing the same work)")
    for column in ("benchmark", "ours", "raw", "unit", "ratio", "meaning", "target", "ok"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            r.name,
            f"{r.ours:.1f}",
            f"{r.raw:.1f}",
            r.unit,
            f"{r.ratio:.3f}",
            r.meaning,
            r.target,
            "yes" if r.ok else "NO",
        )
    console.print(table)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
