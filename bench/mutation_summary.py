"""`make mutation`'s summary: mutmut's verdicts per critical module, as a table and as files.

Reads the ``mutants/<module>.meta`` files ``mutmut run`` leaves (one exit code per mutant) for the modules of
``[tool.mutmut] only_mutate`` and prints, per module: mutants, killed, survived, timeout, no tests (no selected test
calls the mutated function), not run (an interrupted run), other (suspicious, segfault) and the score. Writes
``results/mutation/summary.md`` and ``summary.csv``, and ``survivors.md`` with the diff of every surviving mutant
(what ``mutmut show <name>`` prints), the list that docs/mutation.md sorts into killed-by-a-new-test and equivalent.

Score = (killed + timeout) / (killed + timeout + survived): the share of the mutants the selected tests ran on that
they caught. ``no tests`` is reported beside it, not hidden in it (mutmut's own score counts it as not caught;
``score_all`` is that one).

Run from the repository root, after ``mutmut run``: ``python -m bench.mutation_summary [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from mammopath.report import to_markdown

#: mutmut 3's exit-code → verdict map (``mutmut.stats.status_by_exit_code``), folded into the columns below
_STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
           -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "killed", None: "not run"}  # fmt: skip
COLUMNS = ["module", "mutants", "killed", "survived", "timeout", "no tests", "not run", "other", "score", "score_all"]


def critical_modules(pyproject: Path = Path("pyproject.toml")) -> list[str]:
    """The files ``[tool.mutmut] only_mutate`` lists (docs/architecture.md, "Critical modules")."""
    return list(tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"])


def verdicts(mutants_dir: Path, modules: list[str]) -> dict[str, dict[str, str]]:
    """``{module path: {mutant name: verdict}}`` from mutmut's meta files under ``mutants_dir``.

    Only ``modules`` count: a meta file left by an earlier configuration is not part of this one's score.
    """
    out: dict[str, dict[str, str]] = {}
    for module in modules:
        meta = mutants_dir / f"{module}.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        if codes:
            out[module] = {name: _STATUS.get(code, "other") for name, code in codes.items()}
    return out


def summary(by_module: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One row per module and a ``total`` row (columns :data:`COLUMNS`)."""
    rows = []
    totals: Counter[str] = Counter()
    for module, by_mutant in [*by_module.items(), ("total", {})]:
        counts = Counter(by_mutant.values()) if module != "total" else totals
        totals.update(counts if module != "total" else {})
        caught = counts["killed"] + counts["timeout"]
        ran = caught + counts["survived"]
        n = sum(counts.values())
        other = n - ran - counts["no tests"] - counts["not run"]
        tested = n - counts["skipped"]
        rows.append(
            {
                "module": module,
                "mutants": n,
                "killed": counts["killed"],
                "survived": counts["survived"],
                "timeout": counts["timeout"],
                "no tests": counts["no tests"],
                "not run": counts["not run"],
                "other": other,
                "score": round(100 * caught / ran, 1) if ran else float("nan"),
                "score_all": round(100 * caught / tested, 1) if tested else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def survivor_diffs(names: list[str]) -> str:
    """Markdown with the diff of each surviving mutant (mutmut's own rendering)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    parts = ["# Surviving mutants\n", "Written by `make mutation`; docs/mutation.md sorts them.\n"]
    for name in names:
        try:
            diff = get_diff_for_mutant(name)
        except Exception as exc:  # a mutant whose source changed since the run: name it, keep going
            diff = f"(no diff: {type(exc).__name__}: {exc})"
        parts.append(f"\n## `{name}`\n\n```diff\n{diff.strip()}\n```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's working folder")
    parser.add_argument("--out", type=Path, default=Path("results/mutation"))
    args = parser.parse_args(argv)
    by_module = verdicts(args.mutants, critical_modules())
    if not by_module:
        Console(stderr=True).print(f"no mutmut results under {args.mutants}/: run `make mutation` first")
        return 1
    frame = summary(by_module)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "summary.csv", index=False)
    (args.out / "summary.md").write_text(
        to_markdown(frame, "Mutation testing of the critical modules (make mutation)", columns=COLUMNS)
    )
    survivors = sorted(n for by_mutant in by_module.values() for n, v in by_mutant.items() if v == "survived")
    (args.out / "survivors.md").write_text(survivor_diffs(survivors))
    table = Table(title="mutation testing of the critical modules (make mutation)")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "module" else "right", no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(*[str(v) for v in row], style="bold" if row[0] == "total" else None)
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print(f"{len(survivors)} survivors: {args.out / 'survivors.md'}; table: {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
