"""`mammopath sweep GRID.yaml`: methods × folds × seeds from a declarative grid, resumable, then a summary.

A grid file::

    name: dg_synth                      # runs/<name>/..., results/<name>/...
    configs: [../synth.yaml]            # applied first to every run; paths relative to this grid file
    methods: {erm: [../baselines/erm.yaml], irm: [../baselines/irm.yaml]}
    folds: {designed: []}               # fold configs per fold name (empty: the configs' own holdout)
    seeds: [0, 1, 2]
    args: ["--trainer.max_epochs=6"]    # extra command-line arguments of every run
    baseline: erm                       # the method others are compared with
    test_only: {}                       # method -> method whose checkpoint it tests (e.g. TTA variants)

Each run ``<name>/<fold>/<method>/seed<k>`` is ``mammopath fit`` then ``mammopath test`` on its best
checkpoint, in a subprocess, with ``--run_name`` and ``--seed_everything`` set. A run is finished when
``results/<run>/run.json`` says so; finished runs are skipped, so a killed sweep continues where it
stopped (an interrupted fit restarts from its ``last.ckpt`` when there is one). Each run directory keeps
its resolved config (Lightning's ``config.yaml``), and ``run.json`` records the seed, the package
version, the git commit, the manifest hash and the command lines.

The summary (``results/<name>/summary.csv``/``.md``): per fold, method and held-out domain, mean ± sd over
seeds of the held-out AUROC, the mean source AUROC and the domain gap; and ``deltas.csv``/``.md``: per
held-out domain the difference method − baseline with a paired patient-level bootstrap 95% CI (the same
patients are resampled for both, and the difference is averaged over the seeds both have).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mammopath.errors import ConfigError

DONE = "run.json"


@dataclass
class Grid:
    """A parsed grid file (see the module docstring)."""

    name: str
    configs: list[str]
    methods: dict[str, list[str]]
    folds: dict[str, list[str]]
    seeds: list[int]
    args: list[str] = field(default_factory=list)
    baseline: str = "erm"
    test_only: dict[str, str] = field(default_factory=dict)
    runs_dir: str = "runs"
    results_dir: str = "results"

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        from mammopath.resources import resolve_config

        path = resolve_config(path)  # a shipped grid (experiments/sweeps/...) from any folder
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the sweep grid ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a sweep grid is a mapping (name, configs, methods, folds, seeds)")
        missing = [k for k in ("name", "methods", "folds", "seeds") if k not in raw]
        if missing:
            raise ConfigError(f"{path}: the sweep grid lacks {missing}")

        def here(config: Any) -> str:  # relative to the grid file, so a sweep runs from any folder
            given = Path(str(config))
            if given.is_absolute():
                return str(given)
            beside = path.parent / given
            if beside.is_file() or not given.is_file():
                return str(beside)
            return str(given)  # a grid written relative to the working folder (before grid-relative paths)

        grid = cls(
            name=str(raw["name"]),
            configs=[here(c) for c in raw.get("configs", [])],
            methods={str(k): [here(c) for c in (v or [])] for k, v in raw["methods"].items()},
            folds={str(k): [here(c) for c in (v or [])] for k, v in raw["folds"].items()},
            seeds=[int(s) for s in raw["seeds"]],
            args=[str(a) for a in raw.get("args", [])],
            baseline=str(raw.get("baseline", "erm")),
            test_only={str(k): str(v) for k, v in (raw.get("test_only") or {}).items()},
        )
        for method, source in grid.test_only.items():
            if source not in grid.methods or method not in grid.methods:
                raise ConfigError(f"{path}: test_only {method} -> {source}: both must be methods of the grid")
        for config in (
            grid.configs + [c for v in grid.methods.values() for c in v] + [c for v in grid.folds.values() for c in v]
        ):
            if not Path(config).is_file():
                raise ConfigError(f"{path}: config {config} not found (config paths are relative to the grid file)")
        return grid


@dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    fold: str
    method: str
    seed: int
    name: str

    @property
    def id(self) -> str:
        return f"{self.name}/{self.fold}/{self.method}/seed{self.seed}"


def runs_of(grid: Grid) -> list[Run]:
    """Every run of the grid; methods that only test another method's checkpoint come after it."""
    order = sorted(grid.methods, key=lambda m: m in grid.test_only)
    return [Run(f, m, s, grid.name) for f in grid.folds for m in order for s in grid.seeds]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _manifest_hash(run_dir: Path) -> str:
    """SHA-256 of the manifest files named by a run's resolved config (Lightning's config.yaml); '' if none."""
    digest = hashlib.sha256()
    found = False
    for config in sorted(run_dir.rglob("config.yaml")):
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        manifests = (data.get("init_args") or data).get("manifest") or []
        for path in [manifests] if isinstance(manifests, str) else manifests:
            if Path(path).is_file():
                digest.update(Path(path).read_bytes())
                found = True
        if found:
            break
    return digest.hexdigest() if found else ""


class Sweep:
    """Run a grid in sequence on this machine, skipping finished runs."""

    def __init__(self, grid: Grid, python: str = sys.executable) -> None:
        self.grid, self.python = grid, python
        self.env: dict[str, str] | None = None  # the runs' environment (None: this process's)

    def results(self, run: Run) -> Path:
        return Path(self.grid.results_dir) / run.id

    def checkpoints(self, run: Run) -> Path:
        return Path(self.grid.runs_dir) / run.id / "checkpoints"

    def done(self, run: Run) -> bool:
        marker = self.results(run) / DONE
        return marker.is_file() and json.loads(marker.read_text()).get("status") == "done"

    def command(self, run: Run, subcommand: str, extra: Sequence[str] = ()) -> list[str]:
        configs = [*self.grid.configs, *self.grid.methods[run.method], *self.grid.folds[run.fold]]
        args = [self.python, "-m", "mammopath", subcommand]
        for config in configs:
            args += ["--config", config]
        args += [
            f"--run_name={run.name}/{run.fold}",
            f"--method={run.method}/seed{run.seed}",
            f"--seed_everything={run.seed}",
            f"--runs_dir={self.grid.runs_dir}",
            f"--results_dir={self.grid.results_dir}",
            *self.grid.args,
            *extra,
        ]
        return args

    def _call(self, args: list[str], log_file: Path) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as handle:
            handle.write("$ " + " ".join(args) + "\n")
            handle.flush()
            code = subprocess.call(args, stdout=handle, stderr=subprocess.STDOUT, env=self.env)
        if code != 0:
            raise ConfigError(f"sweep run failed (exit {code}); its output is in {log_file}")

    def execute(self, run: Run) -> None:
        """Fit (unless the method tests another's checkpoint) and test one run, then mark it done.

        The run is locked while it executes (``runs/<run>/.lock``, :mod:`mammopath.locks`): a second sweep on the
        same runs refuses it instead of training it side by side.
        """
        from mammopath.locks import exclusive

        with exclusive(Path(self.grid.runs_dir) / run.id / ".lock", f"sweep run {run.id}"):
            if self.done(run):  # finished by another sweep while this one waited for its turn
                return
            self._execute(run)

    def _execute(self, run: Run) -> None:
        out = self.results(run)
        log_file = out / "sweep.log"
        commands = []
        source = self.grid.test_only.get(run.method)
        if source is None:
            last = self.checkpoints(run) / "last.ckpt"
            resume = [f"--ckpt_path={last}"] if last.is_file() else []
            fit = self.command(run, "fit", resume)
            self._call(fit, log_file)
            commands.append(fit)
            best = self.checkpoints(run) / "best.ckpt"
        else:
            best = self.checkpoints(Run(run.fold, source, run.seed, run.name)) / "best.ckpt"
        if not best.is_file():
            raise ConfigError(f"{run.id}: no checkpoint {best} to test")
        test = self.command(run, "test", [f"--ckpt_path={best}"])
        self._call(test, log_file)
        commands.append(test)
        from mammopath import __version__

        info = {
            "status": "done",
            "run": run.id,
            "fold": run.fold,
            "method": run.method,
            "seed": run.seed,
            "version": __version__,
            "git_commit": _git_commit(),
            "manifest_sha256": _manifest_hash(Path(self.grid.runs_dir) / run.id),
            "commands": [" ".join(c) for c in commands],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (out / DONE).write_text(json.dumps(info, indent=2) + "\n")

    def run_all(self, console: Any | None = None, jobs: int = 1) -> None:
        """Every unfinished run, with rich progress (runs done / left, time estimate).

        ``jobs`` > 1 runs that many side by side, each with its share of the CPU threads (``OMP_NUM_THREADS``):
        small models train faster as parallel single-threaded runs than one after the other on all cores. Runs
        that test another method's checkpoint start once every training run has finished.
        """
        from concurrent.futures import ThreadPoolExecutor

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if jobs < 1:
            raise ConfigError(f"sweep jobs must be >= 1; got {jobs}")
        runs = runs_of(self.grid)
        todo = [r for r in runs if not self.done(r)]
        if jobs > 1:
            threads = str(max(1, (os.cpu_count() or 1) // jobs))
            self.env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        phases = [
            [r for r in todo if r.method not in self.grid.test_only],
            [r for r in todo if r.method in self.grid.test_only],
        ]
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console,
        ) as progress:  # fmt: skip
            task = progress.add_task(f"sweep {self.grid.name}", total=len(runs), completed=len(runs) - len(todo))

            def one(run: Run) -> None:
                progress.update(task, description=f"sweep {self.grid.name}: {run.id}")
                self.execute(run)
                progress.advance(task)

            for phase in phases:
                if jobs == 1:
                    for run in phase:
                        one(run)
                    continue
                with ThreadPoolExecutor(jobs) as pool:
                    for future in [pool.submit(one, run) for run in phase]:
                        future.result()  # the first failure is raised once the phase's other runs are done


# -- summary --------------------------------------------------------------------------------------
def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from mammopath.metrics import auroc

    return auroc(scores, labels) if 0 < labels.sum() < len(labels) else float("nan")


def collect(grid: Grid) -> pd.DataFrame:
    """One row per finished run and (modality, domain) of its metrics_by_domain.csv."""
    frames = []
    sweep = Sweep(grid)
    for run in runs_of(grid):
        path = sweep.results(run) / "metrics_by_domain.csv"
        if sweep.done(run) and path.is_file():
            frames.append(pd.read_csv(path).assign(fold=run.fold, method=run.method, seed=run.seed))
    if not frames:
        raise ConfigError(f"sweep {grid.name}: no finished run yet (run `mammopath sweep` first)")
    return pd.concat(frames, ignore_index=True)


def summarize(grid: Grid) -> pd.DataFrame:
    """Per fold, method, modality and held-out domain: mean ± sd over seeds (held-out AUROC, source AUROC, gap)."""
    table = collect(grid)
    source = table[table["role"] == "source"].groupby(["fold", "method", "seed", "modality"])["auroc"].mean()
    held = table[table["role"] == "heldout"].set_index(["fold", "method", "seed", "modality"])
    held = held.assign(source_auroc=source.reindex(held.index).to_numpy())
    held["domain_gap"] = held["source_auroc"] - held["auroc"]
    rows = []
    for (fold, method, modality, domain), group in held.reset_index().groupby(["fold", "method", "modality", "domain"]):
        row: dict[str, Any] = {"fold": fold, "method": method, "modality": modality, "heldout_domain": domain}
        row["n_seeds"] = len(group)
        for column, name in (
            ("auroc", "heldout_auroc"),
            ("source_auroc", "source_auroc"),
            ("domain_gap", "domain_gap"),
        ):
            row[f"{name}_mean"] = float(group[column].mean())
            row[f"{name}_sd"] = float(group[column].std(ddof=1)) if len(group) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _delta(idx: np.ndarray, labels: np.ndarray, base: np.ndarray, other: np.ndarray, seed_of: np.ndarray,
           seeds: list[int]) -> float:  # fmt: skip
    """Mean over seeds of AUROC(other) − AUROC(base) on the rows ``idx``."""
    values = []
    for s in seeds:
        sel = idx[seed_of[idx] == s]
        values.append(_auroc(labels[sel], other[sel]) - _auroc(labels[sel], base[sel]))
    return float(np.nanmean(values))


def _paired_bootstrap(
    group: pd.DataFrame, seeds: list[int], n_boot: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Point difference and percentile 95% CI, resampling patients (all their rows, every seed) together."""
    labels, seed_of = group["label"].to_numpy(), group["seed"].to_numpy()
    base, other = group["score"].to_numpy(), group["score_m"].to_numpy()
    codes, patients = pd.factorize(group["patient_id"])
    members = [np.flatnonzero(codes == i) for i in range(len(patients))]
    point = _delta(np.arange(len(group)), labels, base, other, seed_of, seeds)
    boots = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(members), size=len(members))
        boots.append(_delta(np.concatenate([members[i] for i in drawn]), labels, base, other, seed_of, seeds))
    low, high = np.nanquantile(boots, [0.025, 0.975])
    return point, float(low), float(high)


def paired_deltas(
    grid: Grid, n_boot: int = 1000, seed: int = 0, pairs: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Per held-out domain: held-out AUROC of each method minus the baseline, with a paired patient bootstrap CI.

    The two methods' predictions of the same seed are paired by sample; each bootstrap resample draws the
    domain's patients with replacement once and recomputes both AUROCs on it; the difference is averaged
    over the seeds both methods finished. ``pairs`` (method -> the method it is compared with) replaces the
    default comparison of every method with ``grid.baseline``.
    """
    sweep = Sweep(grid)
    predictions: dict[tuple[str, str, int], pd.DataFrame] = {}
    for run in runs_of(grid):
        path = sweep.results(run) / "predictions.csv"
        if sweep.done(run) and path.is_file():
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
            predictions[(run.fold, run.method, run.seed)] = frame[(frame["role"] == "heldout") & (frame["label"] >= 0)]
    rng = np.random.default_rng(seed)
    rows = []
    comparisons = dict(pairs) if pairs is not None else {m: grid.baseline for m in grid.methods if m != grid.baseline}
    for fold in grid.folds:
        for method, baseline in comparisons.items():
            seeds = [s for s in grid.seeds if (fold, method, s) in predictions and (fold, baseline, s) in predictions]
            if not seeds:
                continue
            base = pd.concat([predictions[(fold, baseline, s)].assign(seed=s) for s in seeds])
            other = pd.concat([predictions[(fold, method, s)].assign(seed=s) for s in seeds])
            merged = base.merge(other[["seed", "sample_id", "score"]], on=["seed", "sample_id"], suffixes=("", "_m"))
            for (modality, domain), group in merged.groupby(["modality", "domain"]):
                point, low, high = _paired_bootstrap(group, seeds, n_boot, rng)
                rows.append(
                    {"fold": fold, "method": method, "baseline": baseline, "modality": modality,
                     "heldout_domain": domain, "n_seeds": len(seeds), "n_patients": group["patient_id"].nunique(),
                     "delta_auroc": point, "ci_low": low, "ci_high": high}
                )  # fmt: skip
    return pd.DataFrame(rows)


def write_summary(grid: Grid, n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv/.md and deltas.csv/.md under ``results/<name>``."""
    from mammopath.report import atomic_write, to_markdown, write_frame

    out = Path(grid.results_dir) / grid.name
    summary, deltas = summarize(grid), paired_deltas(grid, n_boot=n_boot)
    write_frame(out / "summary.csv", summary)
    title = f"{grid.name}: held-out AUROC, mean ± sd over seeds"
    atomic_write(out / "summary.md", to_markdown(summary, title, columns=list(summary.columns)))
    write_frame(out / "deltas.csv", deltas)
    title = f"{grid.name}: method − {grid.baseline}, held-out AUROC, paired patient bootstrap 95% CI"
    atomic_write(out / "deltas.md", to_markdown(deltas, title, columns=list(deltas.columns)))
    if grid.test_only:  # a test-time variant against the very checkpoints it adapts
        vs_source = paired_deltas(grid, n_boot=n_boot, pairs=grid.test_only)
        write_frame(out / "deltas_vs_source.csv", vs_source)
        title = f"{grid.name}: test-time variant − the method it tests, held-out AUROC, paired patient bootstrap 95% CI"
        atomic_write(out / "deltas_vs_source.md", to_markdown(vs_source, title, columns=list(vs_source.columns)))
    return summary, deltas


SBATCH = """#!/bin/bash
#SBATCH --job-name=mammopath-{name}-{part}
#SBATCH --array=0-{last}
#SBATCH --output={logs}/%x-%A_%a.out
{extra}
# Written by `mammopath sweep {grid} --launcher slurm`: one array task per run of the grid ({part} runs).
# Each task runs `mammopath sweep --run-index`, which skips a finished run, so resubmitting is safe.
cd {cwd}
srun {python} -m mammopath sweep {grid} --run-index "${{INDICES[$SLURM_ARRAY_TASK_ID]}}"
"""


def write_slurm(grid_path: str, grid: Grid, sbatch_args: Sequence[str] = ()) -> list[Path]:
    """sbatch job-array scripts: the training runs, then the test-only runs (which need their checkpoints)."""
    runs = runs_of(grid)
    out = Path(grid.results_dir) / grid.name
    out.mkdir(parents=True, exist_ok=True)
    scripts = []
    for part, keep in (
        ("train", lambda r: r.method not in grid.test_only),
        ("test_only", lambda r: r.method in grid.test_only),
    ):
        indices = [i for i, r in enumerate(runs) if keep(r)]
        if not indices:
            continue
        body = SBATCH.format(
            name=grid.name, part=part, last=len(indices) - 1, logs=out, grid=grid_path, cwd=Path.cwd(),
            python=sys.executable, extra="\n".join(f"#SBATCH {a}" for a in sbatch_args),
        )  # fmt: skip
        body = body.replace("cd ", f"INDICES=({' '.join(map(str, indices))})\ncd ", 1)
        path = out / f"sweep_{part}.sbatch"
        path.write_text(body)
        scripts.append(path)
    return scripts


def submit_slurm(scripts: list[Path]) -> list[str]:
    """Submit the scripts with sbatch (the test-only array after the training array); [] when sbatch is absent."""
    import shutil

    if shutil.which("sbatch") is None:
        return []
    job_ids: list[str] = []
    for script in scripts:
        args = ["sbatch", "--parsable"]
        if job_ids:
            args.append(f"--dependency=afterok:{job_ids[-1]}")
        job_ids.append(subprocess.run([*args, str(script)], capture_output=True, text=True, check=True).stdout.strip())
    return job_ids


def main(argv: Sequence[str]) -> int:
    """``mammopath sweep GRID.yaml [--launcher local|slurm] [--run-index I] [--summary-only] [--dry-run]``."""
    from mammopath.cli import _print_frame, console

    parser = argparse.ArgumentParser(prog="mammopath sweep", description="Run a methods x folds x seeds grid.")
    parser.add_argument("grid", help="the grid YAML (see mammopath.sweep)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their state, run nothing")
    parser.add_argument("--summary-only", action="store_true", help="only (re)write the summary of finished runs")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the paired deltas")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local", help="run here, or submit to SLURM")
    parser.add_argument("--sbatch", action="append", default=[], help="an extra #SBATCH line, e.g. '--gres=gpu:1'")
    parser.add_argument("--run-index", type=int, default=None, help="run only this run of the grid (array tasks)")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="an extra argument of every run, e.g. '--extra=--data.init_args.data_root=/data'",
    )
    parser.add_argument("--runs-dir", default="runs", help="TensorBoard logs and checkpoints")
    parser.add_argument("--results-dir", default="results", help="result tables")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each with its share of the CPUs)")
    args = parser.parse_args(argv)
    grid = Grid.load(args.grid)
    grid.runs_dir, grid.results_dir = args.runs_dir, args.results_dir
    grid.args = [*grid.args, *args.extra]
    sweep = Sweep(grid)
    if args.run_index is not None:
        run = runs_of(grid)[args.run_index]
        if not sweep.done(run):
            sweep.execute(run)
        return 0
    if args.launcher == "slurm":
        scripts = write_slurm(args.grid, grid, args.sbatch)
        jobs = submit_slurm(scripts)
        for script in scripts:
            console.print(f"wrote {script}")
        console.print(f"submitted jobs {jobs}" if jobs else "sbatch not found: submit the scripts yourself (in order)")
        return 0
    if args.dry_run:
        frame = pd.DataFrame([{"run": r.id, "done": sweep.done(r)} for r in runs_of(grid)])
        _print_frame(frame.astype(str), f"sweep {grid.name}: {int(frame['done'].sum())}/{len(frame)} done")
        return 0
    if not args.summary_only:
        sweep.run_all(console, jobs=args.jobs)
    summary, deltas = write_summary(grid, n_boot=args.n_boot)
    _print_frame(summary.round(3).astype(str), f"sweep {grid.name}: held-out AUROC (mean ± sd over seeds)")
    if len(deltas):
        _print_frame(deltas.round(3).astype(str), f"sweep {grid.name}: method − {grid.baseline} (paired bootstrap)")
    return 0
