"""The benchmark table: a rich table on a terminal, a Markdown table (one line per result) anywhere else.

Piped or redirected output (CI logs, ``make bench > out.txt``) must stay readable: a rich table squeezed into the
80 columns rich assumes without a terminal folds every cell into a tall column, so there the same rows are printed
as a Markdown table, which also pastes straight into ``docs/performance.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bench.common import Result

COLUMNS = ("#", "benchmark", "ours", "raw", "unit", "ratio", "target", "holds", "ratio means")


def _number(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _holds(result: Result) -> str:
    return {True: "yes", False: "NO", None: "-"}[result.ok]


def rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    """One tuple of cell texts per result, in :data:`COLUMNS` order."""
    return [
        (
            r.item,
            r.name,
            _number(r.ours),
            _number(r.raw),
            r.unit,
            f"{r.ratio:.3f}",
            r.target,
            _holds(r),
            r.meaning,
        )
        for r in results
    ]


def markdown(results: Sequence[Result]) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(results)]
    return "\n".join(lines)


def render(results: Sequence[Result], console: Console, title: str, *, as_markdown: bool | None = None) -> None:
    """Print the table: rich on a terminal (unless ``as_markdown``), Markdown otherwise."""
    if as_markdown is None:
        as_markdown = not console.is_terminal
    if as_markdown:
        console.print(f"{title}\n\n{markdown(results)}", markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("ours", "raw", "ratio") else "left")
    for cells, result in zip(rows(results), results, strict=True):
        table.add_row(*cells, style="red" if result.ok is False else None)
    console.print(table)
