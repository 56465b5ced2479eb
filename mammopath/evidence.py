"""`mammopath evidence`: the pre-registered evidence suite (docs/evidence.md, docs/evidence/preregistration.md).

For every scenario and replicate (a generator seed paired with a training seed) it writes the scenario's data
(generator v2, once per generator seed), composes one sweep grid whose arms share the base config of
experiments/evidence/ (same sampler, budget, selection rule and data) and runs it through the sweep runner
(:mod:`mammopath.sweep`: resumable, a finished run is never trained again). Then :mod:`mammopath.evidence_stats`
turns the runs' predictions into the per-scenario tables and the scorecard.

``--calibrate`` runs only the calibration of the pre-registration (§3): ERM and the oracle on the calibration
generator seeds, and prints the gates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mammopath.errors import ConfigError
from mammopath.sweep import Grid, Sweep

EXPERIMENTS = Path("experiments") / "evidence"


@dataclass(frozen=True)
class Arm:
    """One arm of a scenario: its method files, the manifest variant it reads, or the arm whose checkpoint it tests."""

    name: str
    methods: tuple[str, ...]
    manifest: str = "manifest.csv"
    test_of: str | None = None


def _arms(*names: str) -> tuple[Arm, ...]:
    known = {
        "erm": Arm("erm", ("erm",)),
        "oracle": Arm("oracle", ("erm",), manifest="manifest_oracle.csv"),
        "erm_no_aux": Arm("erm_no_aux", ("erm_no_aux",)),
        "mixstyle": Arm("mixstyle", ("mixstyle",)),
        "irm": Arm("irm", ("irm",)),
        "align": Arm("align", ("align",)),
        "align_shuffled": Arm("align_shuffled", ("align",), manifest="manifest_shuffled.csv"),
        "full": Arm("full", ("full",)),
        "full_tent": Arm("full_tent", ("full", "tent"), test_of="full"),
        "full_causal_tta": Arm("full_causal_tta", ("full", "causal_tta"), test_of="full"),
        "erm_causal_tta": Arm("erm_causal_tta", ("erm", "causal_tta"), test_of="erm"),
    }
    return tuple(known[n] for n in names)


@dataclass(frozen=True)
class ScenarioPlan:
    """The arms, replicates and primary target of one scenario of the suite (pre-registration §4)."""

    name: str
    config: str  # experiments/evidence/scenarios/<config>.yaml
    arms: tuple[Arm, ...]
    replicates: tuple[tuple[int, int], ...]  # (generator seed, training seed)
    targets: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> modality -> domain


_P_TARGETS = {
    "far": {"mammo": "hospital_c", "patho": "centre_3"},
    "near": {"mammo": "hospital_n", "patho": "centre_n"},
    "reversed": {"mammo": "hospital_r", "patho": "centre_r"},
}
_NEAR = {"near": {"mammo": "hospital_n", "patho": "centre_n"}}
_PAIRED = {"test": {"mammo": "paired_site"}}


def _reps(first: int, n: int) -> tuple[tuple[int, int], ...]:
    return tuple((first + i, 1 + i) for i in range(n))


_P_ARMS = ("erm", "oracle", "erm_no_aux", "mixstyle", "irm", "align", "full", "full_tent", "full_causal_tta")
_M1_TARGETS = {k: v for k, v in _P_TARGETS.items() if k != "reversed"}
SUITE: dict[str, ScenarioPlan] = {
    "P": ScenarioPlan("P", "P", _arms(*_P_ARMS), _reps(1001, 5), _P_TARGETS),
    "M1": ScenarioPlan("M1", "M1", _arms("erm", "mixstyle", "irm", "erm_causal_tta"), _reps(2001, 3), _M1_TARGETS),
    "M2": ScenarioPlan("M2", "M2", _arms("erm", "oracle", "irm"), _reps(3001, 3), _NEAR),
    "M3": ScenarioPlan("M3", "M3", _arms("erm", "mixstyle", "irm"), _reps(4001, 3), _NEAR),
    "M4": ScenarioPlan("M4", "M4", _arms("erm", "align", "align_shuffled"), _reps(5001, 3), _PAIRED),
    "M4N": ScenarioPlan("M4N", "M4", _arms("erm", "align"), _reps(6001, 3), _PAIRED),
}

#: pre-registration §3: calibration uses these generator seeds only, and only ERM and the oracle
CALIBRATION_SEEDS = ((901, 1), (902, 2))
CALIBRATION = {
    "P": ScenarioPlan("P", "P", _arms("erm", "oracle"), CALIBRATION_SEEDS, _P_TARGETS),
    "M1": ScenarioPlan("M1", "M1", _arms("erm"), CALIBRATION_SEEDS, SUITE["M1"].targets),
}


def data_dir(data_root: Path, scenario: str, generator_seed: int) -> Path:
    return data_root / scenario / f"g{generator_seed}"


def ensure_data(data_root: Path, scenario: str, generator_seed: int, workers: int | None = None,
                oracle: bool = True) -> Path:  # fmt: skip
    """The scenario's files for this generator seed, written unless already there for this generator version
    (``oracle``: with the cue-free copies, which only an oracle arm reads). Locked while it runs (``<folder>.lock``):
    a second writer is refused, never let loose on the same files."""
    from mammopath.locks import exclusive

    out = data_dir(data_root, scenario, generator_seed)
    with exclusive(out.with_name(out.name + ".lock"), f"the data folder {out}"):
        return _ensure_data(out, scenario, generator_seed, workers, oracle)


def _ensure_data(out: Path, scenario: str, generator_seed: int, workers: int | None, oracle: bool) -> Path:
    from mammopath.synth.scenarios import GENERATOR_VERSION
    from mammopath.synth.suite import write_scenario

    truth = out / "truth.json"
    if truth.is_file():
        found = json.loads(truth.read_text())
        has_oracle = (out / "manifest_oracle.csv").is_file()
        if (
            found.get("generator_version") == GENERATOR_VERSION
            and found.get("scenario") == scenario
            and (has_oracle or not oracle)
        ):
            return out
        raise ConfigError(
            f"{out}: written by generator {found.get('generator_version')} for scenario {found.get('scenario')}, "
            f"not {GENERATOR_VERSION} / {scenario}"
            + ("" if has_oracle or not oracle else " without the oracle copies")
            + "; remove the folder to write it again"
        )
    write_scenario(out, scenario, generator_seed, workers=workers, oracle=oracle)
    return out


def _data_config(folder: Path, data: Path, manifest: str) -> str:
    """A small YAML naming the replicate's manifest variant and root (composed before the method files)."""
    path = folder / f"data_{Path(manifest).stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"data": {"manifest": str(data / manifest), "root": str(data)}}, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def grid_for(plan: ScenarioPlan, generator_seed: int, training_seed: int, data: Path, runs_dir: str,
             results_dir: str, suite: str = "evidence") -> Grid:  # fmt: skip
    """One replicate of one scenario as a sweep grid (fold ``g<generator seed>``, seed = the training seed)."""
    folder = Path(runs_dir) / suite / plan.name / "configs" / f"g{generator_seed}"
    methods = {
        arm.name: [_data_config(folder, data, arm.manifest), *(str(EXPERIMENTS / "methods" / f"{m}.yaml")
                                                               for m in arm.methods)]
        for arm in plan.arms
    }  # fmt: skip
    return Grid(
        name=f"{suite}/{plan.name}",
        configs=[str(EXPERIMENTS / "base.yaml"), str(EXPERIMENTS / "scenarios" / f"{plan.config}.yaml")],
        methods=methods,
        folds={f"g{generator_seed}": []},
        seeds=[training_seed],
        baseline="erm",
        test_only={arm.name: arm.test_of for arm in plan.arms if arm.test_of},
        runs_dir=runs_dir,
        results_dir=results_dir,
    )


def run_suite(plans: dict[str, ScenarioPlan], *, data_root: Path, runs_dir: str, results_dir: str, suite: str,
              console=None, workers: int | None = None, jobs: int = 1) -> list[Grid]:  # type: ignore[no-untyped-def]  # fmt: skip
    """Write the data and run every replicate's grid (finished runs are skipped); return the grids."""
    grids = []
    for plan in plans.values():
        for generator_seed, training_seed in plan.replicates:
            oracle = any(arm.manifest == "manifest_oracle.csv" for arm in plan.arms)
            data = ensure_data(data_root, plan.name, generator_seed, workers, oracle=oracle)
            grid = grid_for(plan, generator_seed, training_seed, data, runs_dir, results_dir, suite)
            Sweep(grid).run_all(console=console, jobs=jobs)
            grids.append(grid)
    return grids


# -- analysis ---------------------------------------------------------------------------------------------
def predictions_path(results_dir: str, suite: str, plan: ScenarioPlan, generator_seed: int, training_seed: int,
                     arm: str) -> Path:  # fmt: skip
    return (
        Path(results_dir) / suite / plan.name / f"g{generator_seed}" / arm / f"seed{training_seed}" / "predictions.csv"
    )


def load(plan: ScenarioPlan, results_dir: str, suite: str) -> dict[tuple[int, str], pd.DataFrame]:
    """(generator seed, arm) -> the test predictions of every finished run of the scenario."""
    from mammopath.evidence_stats import read_predictions

    found = {}
    for generator_seed, training_seed in plan.replicates:
        for arm in plan.arms:
            path = predictions_path(results_dir, suite, plan, generator_seed, training_seed, arm.name)
            if path.is_file():
                found[(generator_seed, arm.name)] = read_predictions(path)
    return found


def scenario_table(plan: ScenarioPlan, runs: dict[tuple[int, str], pd.DataFrame]) -> pd.DataFrame:
    """Per arm, means over replicates: ID (source test) and target AUROC per modality and target kind, the gaps,
    the mean primary-target AUROC, the worst target AUROC, the ECE on the primary target, Δ vs ERM with its
    paired 95% t-interval, and the share of the ERM-to-oracle gap closed (where the scenario has an oracle)."""
    from mammopath.evidence_stats import auroc, source_auroc, t_interval, target_rows
    from mammopath.metrics.classification import expected_calibration_error

    primary = next(iter(plan.targets))
    per_run = []
    for (generator_seed, arm), frame in runs.items():
        row: dict[str, object] = {"arm": arm, "replicate": generator_seed}
        means = []
        for kind, domains in plan.targets.items():
            for modality, domain in domains.items():
                rows = target_rows(frame, modality, domain)
                value = auroc(rows["label"].to_numpy(), rows["score"].to_numpy())
                row[f"{modality} {kind}"] = value
                if kind == primary:
                    means.append(value)
        for modality in dict.fromkeys(m for d in plan.targets.values() for m in d):
            row[f"{modality} ID"] = source_auroc(frame, modality)
            row[f"{modality} gap"] = row[f"{modality} ID"] - row[f"{modality} {primary}"]  # type: ignore[operator]
        row["mean target"] = float(np.nanmean(means))
        targets = [v for k, v in row.items() if k.split(" ")[-1] in plan.targets and isinstance(v, float)]
        row["worst target"] = float(np.nanmin(targets)) if targets else np.nan
        row["ECE primary"] = float(np.nanmean([
            expected_calibration_error(rows["score"].to_numpy(), rows["label"].to_numpy())
            for modality, domain in plan.targets[primary].items()
            if len(rows := target_rows(frame, modality, domain))
        ]))  # fmt: skip
        per_run.append(row)
    if not per_run:
        return pd.DataFrame()
    frame = pd.DataFrame(per_run)
    table = frame.drop(columns="replicate").groupby("arm", sort=False).mean()
    table.insert(0, "replicates", frame.groupby("arm", sort=False).size())
    erm = frame[frame["arm"] == "erm"].set_index("replicate")["mean target"]
    oracle = frame[frame["arm"] == "oracle"].set_index("replicate")["mean target"]
    for arm in table.index:
        mine = frame[frame["arm"] == arm].set_index("replicate")["mean target"]
        deltas = (mine - erm).dropna().to_numpy()
        low, high = t_interval(deltas, 0.95)
        table.loc[arm, "Δ vs ERM"] = float(deltas.mean()) if len(deltas) else np.nan
        table.loc[arm, "Δ 95% CI"] = f"[{low:.3f}, {high:.3f}]" if len(deltas) > 1 else ""
        if len(oracle):
            gap = (oracle - erm).mean()
            table.loc[arm, "% oracle gap closed"] = 100 * float(deltas.mean()) / gap if gap > 0 else np.nan
    return table.reset_index()


COUNTERS = ("dg/irm_skipped_envs", "dg/irm_single_env_batches", "dg/mixstyle_batches", "dg/mixstyle_single_domain")
_TTA_LINE = re.compile(r"(TENT|CausalTTA): (\d+) adapted batches, (\d+) resets")


def run_counters(fit_dir: Path, log_file: Path) -> dict[str, float]:
    """The mechanism counters of one run: the last logged value of each DG counter in its fit's TensorBoard
    events, and the TTA callback's adapted batches and resets from its test log (NaN where absent)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, float] = {name.removeprefix("dg/"): np.nan for name in COUNTERS}
    for events in sorted(fit_dir.glob("events.out.tfevents.*")):  # a resumed fit adds a file: the last wins
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for name in set(COUNTERS) & set(accumulator.Tags()["scalars"]):
            found[name.removeprefix("dg/")] = float(accumulator.Scalars(name)[-1].value)
    found["tta_adapted_batches"], found["tta_resets"] = np.nan, np.nan
    if log_file.is_file():
        for match in _TTA_LINE.finditer(log_file.read_text(errors="replace")):
            found["tta_adapted_batches"], found["tta_resets"] = float(match[2]), float(match[3])
    return found


def counters_table(plan: ScenarioPlan, runs_dir: str, results_dir: str, suite: str) -> pd.DataFrame:
    """Per arm, the mechanism counters averaged over the replicates (a TTA arm shows its training arm's DG
    counters and its own TTA counters)."""
    rows = []
    for generator_seed, training_seed in plan.replicates:
        for arm in plan.arms:
            trained = arm.test_of or arm.name
            fit = Path(runs_dir) / suite / plan.name / f"g{generator_seed}" / trained / f"seed{training_seed}" / "fit"
            log_file = predictions_path(results_dir, suite, plan, generator_seed, training_seed, arm.name).parent
            if fit.is_dir():
                rows.append({"arm": arm.name, **run_counters(fit, log_file / "sweep.log")})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby("arm", sort=False).mean().reset_index()


def prediction_inputs(plans: dict[str, ScenarioPlan], results_dir: str, suite: str, n_boot: int = 2000
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """Per pre-registered prediction with results: the replicates' Δ and the two-stage bootstrap draws."""
    from mammopath.evidence_stats import PREDICTIONS, paired, replicate_delta, target_rows, two_stage_bootstrap

    deltas, boots = {}, {}
    for prediction in PREDICTIONS:
        plan = plans.get(prediction.scenario)
        if plan is None:
            continue
        runs = load(plan, results_dir, suite)
        replicates = []
        for generator_seed, _ in plan.replicates:
            base, other = runs.get((generator_seed, prediction.baseline)), runs.get((generator_seed, prediction.arm))
            if base is None or other is None:
                continue
            replicates.append([
                paired(target_rows(base, modality, domain), target_rows(other, modality, domain))
                for modality, domain in plan.targets[prediction.target].items()
            ])  # fmt: skip
        if replicates:
            deltas[prediction.id] = np.asarray([replicate_delta(r) for r in replicates])
            boots[prediction.id] = two_stage_bootstrap(replicates, n_boot=n_boot)
    return deltas, boots


def gates(results_dir: str, suite: str = "calibration") -> pd.DataFrame:
    """The calibration gates of the pre-registration (§3) on the calibration runs: value, threshold, pass.

    A gate holds on the mean over **both** calibration seeds: ``seeds`` says how many of them the value averages,
    and ``pass`` is true only when every seed was measured and the mean meets the threshold; ``status`` reads
    ``pass``, ``fail``, ``not run`` or, with some seeds missing, ``passes so far`` / ``fails so far``.
    """
    rows = []
    tables = {}
    for name, plan in CALIBRATION.items():
        table = scenario_table(plan, load(plan, results_dir, suite))
        tables[name] = table.set_index("arm") if len(table) else table  # no finished run: every value NaN
    needed = len(CALIBRATION_SEEDS)

    def value(scenario: str, arm: str, column: str) -> tuple[float, int]:
        table = tables[scenario]
        if arm not in table.index or column not in table:
            return float("nan"), 0
        return float(table.loc[arm, column]), int(table.loc[arm, "replicates"])

    for modality in ("mammo", "patho"):
        m1_id, m1_near = value("M1", "erm", f"{modality} ID"), value("M1", "erm", f"{modality} near")
        checks = [
            ("G1 oracle far target AUROC", value("P", "oracle", f"{modality} far"), ">= 0.85", lambda v: v >= 0.85),
            ("G2 oracle source-test AUROC", value("P", "oracle", f"{modality} ID"), ">= 0.90", lambda v: v >= 0.90),
            ("G3 ERM gap (ID - far), P", value("P", "erm", f"{modality} gap"), "in [0.06, 0.15]",
             lambda v: 0.06 <= v <= 0.15),
            ("G4 ERM gap far, M1", value("M1", "erm", f"{modality} gap"), ">= 0.05", lambda v: v >= 0.05),
            ("G4 ERM gap near, M1", (m1_id[0] - m1_near[0], min(m1_id[1], m1_near[1])), "<= 0.02",
             lambda v: v <= 0.02),
        ]  # fmt: skip
        for name, (measured, seeds), threshold, rule in checks:
            met = bool(rule(measured)) if measured == measured else False
            if seeds == 0 or measured != measured:
                status = "not run"
            elif seeds < needed:
                status = "passes so far" if met else "fails so far"
            else:
                status = "pass" if met else "fail"
            rows.append({"gate": name, "modality": modality, "measured": measured, "threshold": threshold,
                         "seeds": f"{seeds} of {needed}", "pass": met and seeds >= needed,
                         "status": status})  # fmt: skip
    return pd.DataFrame(rows)


def write_results(plans: dict[str, ScenarioPlan], results_dir: str, suite: str, out: Path, n_boot: int = 2000,
                  runs_dir: str = "runs") -> dict[str, pd.DataFrame]:  # fmt: skip
    """Every scenario's table, the scorecard and the gates as Markdown + CSV, and one report.html."""
    from mammopath.evidence_stats import scorecard
    from mammopath.report import atomic_write, to_markdown, write_frame

    out.mkdir(parents=True, exist_ok=True)
    frames: dict[str, pd.DataFrame] = {}
    for name, plan in plans.items():
        frames[f"table_{name}"] = scenario_table(plan, load(plan, results_dir, suite))
        frames[f"counters_{name}"] = counters_table(plan, runs_dir, results_dir, suite)
    deltas, boots = prediction_inputs(plans, results_dir, suite, n_boot)
    frames["scorecard"] = scorecard(deltas, boots) if deltas else pd.DataFrame()
    frames["gates"] = gates(results_dir)
    markdown, html = [], []
    for key, frame in frames.items():
        write_frame(out / f"{key}.csv", frame)
        title = {"scorecard": "Scorecard (pre-registered predictions)", "gates": "Calibration gates"}.get(key, "")
        if key.startswith("table_"):
            title = f"Scenario {key.removeprefix('table_')}: AUROC by arm (mean over replicates)"
        elif key.startswith("counters_"):
            title = f"Scenario {key.removeprefix('counters_')}: mechanism counters (mean over replicates)"
        markdown.append(to_markdown(frame.round(3), title) if len(frame) else f"## {title}\n\n(no finished runs)\n")
        html.append(f"<h2>{escape(title)}</h2>" + frame.round(3).to_html(index=False, escape=True, na_rep=""))
    atomic_write(out / "evidence.md", "\n\n".join(markdown))
    atomic_write(out / "report.html", "<!doctype html><meta charset='utf-8'><title>Evidence suite</title>"
                                      "<h1>Evidence suite</h1>" + "".join(html))  # fmt: skip
    return frames


def main(argv: Sequence[str] | None = None) -> int:
    """`mammopath evidence [--calibrate] [--scenarios P M1 ...] [--analyse-only]`."""
    import argparse

    from rich.console import Console

    from mammopath.cli import _print_frame

    parser = argparse.ArgumentParser(prog="mammopath evidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="only the calibration: ERM + oracle, the gates")
    parser.add_argument("--scenarios", nargs="+", default=None, help=f"a subset of {sorted(SUITE)}")
    parser.add_argument("--data-root", default="data/evidence", help="where the scenarios' data are written")
    parser.add_argument("--runs-dir", default="runs", help="checkpoints and logs")
    parser.add_argument("--results-dir", default="results", help="the runs' result tables")
    parser.add_argument("--out", default="results/evidence", help="the suite's tables, scorecard and report.html")
    parser.add_argument("--n-boot", type=int, default=2000, help="two-stage bootstrap draws per comparison")
    parser.add_argument("--analyse-only", action="store_true", help="train nothing; tables from finished runs")
    parser.add_argument("--workers", type=int, default=None, help="processes writing a scenario's data")
    parser.add_argument("--jobs", type=int, default=2, help="training runs side by side (one thread each on 2 cores)")
    args = parser.parse_args(list(argv or []))
    catalogue = CALIBRATION if args.calibrate else SUITE
    unknown = sorted(set(args.scenarios or []) - set(catalogue))
    if unknown:
        raise ConfigError(f"unknown scenario(s) {unknown}; choose from {sorted(catalogue)}")
    plans = {k: v for k, v in catalogue.items() if not args.scenarios or k in args.scenarios}
    suite = "calibration" if args.calibrate else "evidence"
    console = Console()
    if not args.analyse_only:
        run_suite(plans, data_root=Path(args.data_root), runs_dir=args.runs_dir, results_dir=args.results_dir,
                  suite=suite, console=console, workers=args.workers, jobs=args.jobs)  # fmt: skip
    if args.calibrate:
        table = gates(args.results_dir, suite)
        out = Path(args.out) / "calibration"
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "gates.csv", index=False)
        for name, plan in plans.items():
            scenario_table(plan, load(plan, args.results_dir, suite)).to_csv(out / f"table_{name}.csv", index=False)
        _print_frame(table.round(3).astype(str), "calibration gates (pre-registration §3)")
        return 0
    frames = write_results(plans, args.results_dir, suite, Path(args.out), args.n_boot, args.runs_dir)
    for key, frame in frames.items():
        if len(frame):
            _print_frame(frame.round(3).astype(str), key)
    console.print(f"tables, scorecard and report.html: {args.out}")
    return 0
