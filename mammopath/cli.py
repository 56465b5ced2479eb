"""Command line: `mammopath` (also installed as `lightning`, and `python -m mammopath`).

Training commands are LightningCLI subcommands (``fit``, ``validate``, ``test``, ``predict``),
configured by YAML files composed left to right (``--config a.yaml --config b.yaml``). The data
commands (``synth``, ``prepare``, ``tile``, ``validate-manifest``, ``report``) are plain argparse
commands with rich output. ``mammopath --help`` lists every command once with an example.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mammopath.errors import ConfigError, user_message

console = Console(stderr=False)
log = logging.getLogger("mammopath")

#: (command, what it does, an example); `mammopath --help` lists each once, in this order.
COMMAND_HELP: tuple[tuple[str, str, str], ...] = (
    ("fit", "train; model selection on the source domains' validation split",
     "mammopath fit --config experiments/synth.yaml"),
    ("validate", "one pass over the validation split",
     "mammopath validate --config experiments/synth.yaml --ckpt_path runs/synth/checkpoints/best.ckpt"),
    ("test", "per-domain metrics on the source test split and the held-out domains",
     "mammopath test --config experiments/synth.yaml --ckpt_path runs/synth/checkpoints/best.ckpt"),
    ("predict", "score new cases (manifest rows with an empty split) -> results/<run>/predict/predictions.csv",
     "mammopath predict --config experiments/synth.yaml --data.manifest=new.csv --ckpt_path runs/synth/.../best.ckpt"),
    ("synth", "write the synthetic multi-hospital benchmark (real formats) and its manifest",
     "mammopath synth --out data/synth"),
    ("prepare", "build a manifest from a benchmark release, or from your own folder of DICOMs/slides",
     "mammopath prepare folder --root /data/site_a --domain site_a --out site_a.csv"),
    ("tile", "turn whole-slide rows into patch rows (tissue detection, tumour fraction)",
     "mammopath tile slides.csv --root /data/slides --out patches.csv --size 224 --mpp 0.5"),
    ("validate-manifest", "check a manifest against its data root (--decode: decode every file)",
     "mammopath validate-manifest site_a.csv --root /data/site_a"),
    ("report", "merge result folders into one table with figures",
     "mammopath report results/demo --out results/report"),
    ("sweep", "run a methods x folds x seeds grid (resumable) and summarize it",
     "mammopath sweep experiments/sweeps/reproduce_demo.yaml"),
    ("evidence", "the pre-registered evidence suite (generator v2 scenarios; --calibrate: the gates)",
     "mammopath evidence --calibrate"),
    ("encoders", "the pretrained encoder presets: licence and where each weight file goes",
     "mammopath encoders"),
)  # fmt: skip
TRAINING_COMMANDS = ("fit", "validate", "test", "predict")


def top_level_help() -> str:
    """`mammopath --help`: every command once, with what it does and an example."""
    lines = [
        f"mammopath {_version()}: domain-generalized cross-modal learning for mammography and histopathology",
        "",
        "usage: mammopath <command> [options]      mammopath <command> --help: the command's options",
        "       mammopath --version",
        "",
        "commands (fit/validate/test/predict take YAML configs, composed left to right: --config a --config b):",
    ]
    for name, what, example in COMMAND_HELP:
        lines += [f"  {name:<18} {what}", f"  {'':<18} e.g. {example}"]
    lines += ["", "also installed as `lightning` and `python -m mammopath`; docs: README.md and docs/"]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mammopath")
    except PackageNotFoundError:  # pragma: no cover (a source tree without installing)
        return "unknown"


def _cmd_synth(argv: Sequence[str]) -> int:
    import pandas as pd

    from mammopath.synth.benchmark import RELEASES, make_synth_benchmark, write_releases
    from mammopath.synth.styles import SynthConfig

    parser = argparse.ArgumentParser(prog="mammopath synth", description="Write the synthetic benchmark.")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mammo-patients", type=int, default=None, help="patients per mammography domain")
    parser.add_argument("--slides", type=int, default=None, help="slides per pathology domain")
    parser.add_argument("--test-patients", type=int, default=None, help="test patients per mammography domain")
    parser.add_argument("--test-slides", type=int, default=None, help="test slides per pathology domain")
    parser.add_argument("--paired-patients", type=int, default=None, help="patients of the paired cohort")
    parser.add_argument("--no-paired", action="store_true", help="skip the paired (both modalities) cohort")
    parser.add_argument("--no-releases", action="store_true", help="skip the five benchmark releases")
    parser.add_argument(
        "--no-oracle", action="store_true", help="skip the marker-free copies (only the synthetic oracle reads them)"
    )
    parser.add_argument(
        "--scenario", default=None, help="write one scenario of the evidence suite (generator v2: P, M1, M2, M3, "
        "M4, M4N; docs/evidence.md) instead of the benchmark; --no-oracle applies, the other options do not",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="processes writing a scenario's domains")
    args = parser.parse_args(argv)
    if args.scenario is not None:
        return _synth_scenario(args.out, args.scenario, args.seed, oracle=not args.no_oracle, workers=args.workers)
    cfg = SynthConfig()
    overrides = {}
    if args.mammo_patients is not None:
        overrides["mammo_patients_per_domain"] = args.mammo_patients
    if args.slides is not None:
        overrides["slides_per_domain"] = args.slides
    if args.test_patients is not None:
        overrides["mammo_test_patients"] = args.test_patients
    if args.test_slides is not None:
        overrides["test_slides_per_domain"] = args.test_slides
    if args.paired_patients is not None:
        overrides["paired_patients"] = args.paired_patients
    if args.no_oracle:
        overrides["oracle"] = False
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    total_mammo = 2 * (cfg.mammo_patients_per_domain + cfg.mammo_test_patients) * len(cfg.mammo_styles)
    total_slides = (cfg.slides_per_domain + cfg.test_slides_per_domain) * len(cfg.patho_styles)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        tasks = {
            "mammo": progress.add_task("mammograms (DICOM)", total=total_mammo),
            "patho": progress.add_task("slides (pyramidal TIFF)", total=total_slides),
            "paired": progress.add_task("paired cohort", total=0 if args.no_paired else cfg.paired_patients),
            "releases": progress.add_task("benchmark releases", total=0 if args.no_releases else len(RELEASES)),
        }

        def advance(kind: str, n: int) -> None:
            progress.advance(tasks[kind], n)

        manifest = make_synth_benchmark(args.out, seed=args.seed, cfg=cfg, progress=advance, paired=not args.no_paired)
        counts = {} if args.no_releases else write_releases(args.out, seed=args.seed, progress=advance)
    from mammopath.manifest import summarize

    _print_frame(summarize(manifest), f"multi-hospital benchmark → {Path(args.out) / 'manifest.csv'}")
    probe = pd.read_csv(Path(args.out) / "shortcut_probe.csv").round(3)
    _print_frame(probe.astype(str), "shortcut probe: the marker alone vs the causal appearance alone (AUROC)")
    if counts:
        table = pd.DataFrame(
            [{"benchmark": k, "prepare --root": str(Path(args.out) / RELEASES[k]), **v} for k, v in counts.items()]
        )
        numeric = [c for c in table.columns if c not in ("benchmark", "prepare --root")]
        table[numeric] = table[numeric].astype("Int64")
        _print_frame(
            table.astype(str).replace("<NA>", ""),
            "benchmark releases (real layouts; `mammopath prepare` must find these counts)",
        )
    return 0


def _synth_scenario(out: str, name: str, seed: int, *, oracle: bool, workers: int | None) -> int:
    import pandas as pd

    from mammopath.manifest import summarize
    from mammopath.synth.scenarios import scenario
    from mammopath.synth.suite import write_scenario

    spec = scenario(name)  # an unknown name fails here, before anything is written
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:  # fmt: skip
        task = progress.add_task(f"scenario {spec.name}: domains (DICOM, pyramidal TIFF)", total=len(spec.domains))
        manifest = write_scenario(
            out, name, seed, oracle=oracle, workers=workers, progress=lambda _kind, n: progress.advance(task, n)
        )
    _print_frame(summarize(manifest), f"scenario {spec.name}, generator seed {seed} → {Path(out) / 'manifest.csv'}")
    probe = pd.read_csv(Path(out) / "probe.csv").round(3)
    _print_frame(probe.astype(str), "ground truth per domain: the cue's agreement, cue-only and causal-only AUROC")
    return 0


def _print_frame(df, title: str) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title=title)
    for column in df.columns:
        table.add_column(str(column), overflow="fold")
    for _, row in df.iterrows():
        table.add_row(*(str(v) for v in row.tolist()))
    console.print(table)


def _cmd_validate_manifest(argv: Sequence[str]) -> int:
    from mammopath.manifest import load_manifest, manifest_warnings, summarize

    parser = argparse.ArgumentParser(prog="mammopath validate-manifest", description="Validate a manifest.")
    parser.add_argument("manifest")
    parser.add_argument("--root", default=None, help="data root (default: the manifest's folder)")
    parser.add_argument("--no-check-files", action="store_true", help="skip checking that files exist")
    parser.add_argument("--holdout", nargs="*", default=[], help="domains that must be present (LODO fold)")
    parser.add_argument(
        "--decode", action="store_true", help="also open and decode every file, reporting every bad one with its reason"
    )
    parser.add_argument("--workers", type=int, default=4, help="threads decoding in parallel (with --decode)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else Path(args.manifest).parent
    df = load_manifest(args.manifest, root, check_files=not args.no_check_files, required_domains=args.holdout)
    if args.decode:
        from mammopath.preflight import decode_check, raise_for_bad

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("decode every file", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            bad = decode_check(df, root, workers=args.workers, progress=advance)
        raise_for_bad(bad, args.manifest, len(df))
    _print_frame(summarize(df), f"{args.manifest}: valid ({len(df)} rows, {df['patient_id'].nunique()} patients)")
    for warning in manifest_warnings(df, root if not args.no_check_files else None):
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    return 0


def _cmd_report(argv: Sequence[str]) -> int:
    from mammopath.report import make_report, render_table

    parser = argparse.ArgumentParser(prog="mammopath report", description="Merge result folders into one report.")
    parser.add_argument("results", nargs="+", help="result folders (each with metrics_by_domain.csv)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--baseline", default="erm", help="method the others are compared with (sweep runs)")
    parser.add_argument("--n-boot", type=int, default=200, help="patient bootstrap resamples of the intervals")
    args = parser.parse_args(argv)
    if all((Path(r) / "run.json").is_file() for r in args.results):  # a study: runs of `mammopath sweep`
        from mammopath.study import make_study_report

        table = make_study_report(args.results, args.out, baseline=args.baseline, n_boot=args.n_boot)
        columns = [c for c in table.columns if not c.endswith(("_mean", "_sd", "_ci_low", "_ci_high"))]
        _print_frame(table[columns].round(3).astype(str), f"study report → {Path(args.out) / 'report.md'}")
        return 0
    summary = make_report(args.results, args.out)
    console.print(render_table(summary, "leave-one-domain-out summary"))
    console.print(f"report written to [bold]{args.out}[/bold]")
    return 0


def _cmd_prepare(argv: Sequence[str]) -> int:
    from mammopath.datasets import BUILDERS, builder
    from mammopath.manifest import summarize, validate_manifest, write_manifest

    parser = argparse.ArgumentParser(
        prog="mammopath prepare", description="Build a manifest from a benchmark release or your own folder."
    )
    parser.add_argument("benchmark", choices=sorted(BUILDERS))
    parser.add_argument("--root", required=True, help="the release folder as downloaded")
    parser.add_argument("--out", required=True, help="manifest to write (.csv or .parquet)")
    parser.add_argument("--metadata", default=None, help="folder holding the metadata files, if not in --root")
    parser.add_argument("--domain", default=None, help="folder: the site / scanner of every file (required)")
    parser.add_argument("--salt", default=None, help="folder: secret salt of the hashed ids ($MAMMOPATH_ID_SALT)")
    args = parser.parse_args(argv)
    module = builder(args.benchmark)
    own = {"domain": args.domain, "salt": args.salt} if args.benchmark == "folder" else {}
    if not own and (args.domain or args.salt):
        raise ConfigError(f"--domain / --salt are options of `prepare folder`; {args.benchmark} sets its own domains")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(f"prepare {args.benchmark}", total=None)

        def advance(total: int | None = None, step: int = 1) -> None:
            if total is not None:
                progress.update(task, total=total)
            else:
                progress.advance(task, step)

        result = module.prepare(Path(args.root), metadata=args.metadata, progress=advance, **own)
    if len(result.manifest) == 0:  # nothing to write: say why instead of an empty manifest
        raise ConfigError(empty_prepare(args.benchmark, args.root, result.dropped))
    manifest = validate_manifest(result.manifest, args.root, source=args.out)
    write_manifest(manifest, args.out)
    _print_frame(summarize(manifest), f"{args.benchmark} → {args.out} ({len(manifest)} rows)")
    if len(result.dropped):
        reasons = result.dropped.groupby("reason").size().reset_index(name="count")
        _print_frame(reasons, "dropped (item counts by reason)")
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    return 0


def empty_prepare(benchmark: str, root: str, dropped) -> str:  # type: ignore[no-untyped-def]
    """Why ``prepare`` found no sample: the most common drop reason and the first item, or that nothing was listed."""
    if dropped is not None and len(dropped):
        reasons = dropped.groupby("reason").size().sort_values(ascending=False)
        reason, count = str(reasons.index[0]), int(reasons.iloc[0])
        first = dropped[dropped["reason"] == reason]["item"].iloc[0]
        return (
            f"prepare {benchmark}: 0 rows from {root}: all {len(dropped)} listed item(s) were dropped, {count} because "
            f"'{reason}' (first: {first}); point --root at the release folder holding the image files"
        )
    return f"prepare {benchmark}: 0 rows: no sample found under {root}; point --root at the release folder"


def _cmd_tile(argv: Sequence[str]) -> int:
    from mammopath.datasets.tiling import tile_manifest
    from mammopath.manifest import load_manifest, summarize, validate_manifest, write_manifest

    parser = argparse.ArgumentParser(prog="mammopath tile", description="Slide rows → patch rows.")
    parser.add_argument("manifest", help="manifest whose pathology slide rows are tiled")
    parser.add_argument("--out", required=True, help="patch manifest to write")
    parser.add_argument("--root", default=None, help="data root (default: the manifest's folder)")
    parser.add_argument("--size", type=int, default=224, help="patch size in output pixels")
    parser.add_argument("--mpp", type=float, default=0.5, help="patch resolution in µm/px")
    parser.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept patch")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else Path(args.manifest).parent
    slides = load_manifest(args.manifest, root)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("tile slides", total=None)

        def advance(total: int | None = None, step: int = 1) -> None:
            if total is not None:
                progress.update(task, total=total)
            else:
                progress.advance(task, step)

        result = tile_manifest(slides, root, size=args.size, mpp=args.mpp, min_tissue=args.min_tissue, progress=advance)
    patches = validate_manifest(result.manifest, root, source=args.out)
    write_manifest(patches, args.out)
    _print_frame(summarize(patches), f"patches → {args.out} ({len(patches)} rows)")
    if len(result.dropped):
        _print_frame(result.dropped, "slides without patches")
    return 0


def _cmd_encoders(argv: Sequence[str]) -> int:
    from mammopath.models.presets import ENCODER_PRESETS

    parser = argparse.ArgumentParser(
        prog="mammopath encoders", description="List the pretrained encoder presets and where each weight file goes."
    )
    parser.parse_args(argv)
    lines = ["encoder presets (nothing is downloaded; use one with --config experiments/encoders/<name>.yaml):", ""]
    for name, preset in ENCODER_PRESETS.items():
        lines += [
            f"  {name:<12} {preset.title}, pretrained on {preset.domain}; licence: {preset.licence}",
            f"  {'':<12} weight file: {preset.default_location}  (or --model.checkpoint_path=FILE)",
            f"  {'':<12} obtain: {preset.source} ({preset.obtain})",
        ]
    lines += ["", "Without weights, train the whole encoder instead: --model.freeze=full."]
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
    return 0


def _cmd_sweep(argv: Sequence[str]) -> int:
    from mammopath.sweep import main as sweep_main

    return sweep_main(argv)


def _cmd_evidence(argv: Sequence[str]) -> int:
    from mammopath.evidence import main as evidence_main

    return evidence_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "sweep": _cmd_sweep,
    "evidence": _cmd_evidence,
    "tile": _cmd_tile,
    "prepare": _cmd_prepare,
    "synth": _cmd_synth,
    "validate-manifest": _cmd_validate_manifest,
    "report": _cmd_report,
    "encoders": _cmd_encoders,
}


def run_lightning_cli(args: Sequence[str] | None = None, run: bool = True):  # type: ignore[no-untyped-def]
    """The LightningCLI for MammoPathModule + CrossModalDataModule (``args`` as on the command line)."""
    from mammopath.lightning_cli import MammoPathCLI

    return MammoPathCLI.create(args, run=run, epilog="all commands: mammopath --help")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A log handler writing to whatever ``sys.stderr`` is at the time of each record (not the one at creation)."""

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # type: ignore[no-untyped-def]
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mammopath`, `lightning` and `python -m mammopath`."""
    import warnings

    # noise from Lightning internals that users cannot act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        if not argv or argv[0] in ("-h", "--help"):
            console.print(top_level_help(), highlight=False, markup=False, soft_wrap=True)
            return 0 if argv else 2
        if argv[0] == "--version":
            console.print(f"mammopath {_version()}", highlight=False)
            return 0
        if argv[0] not in TRAINING_COMMANDS and not (argv[0].startswith("-") and set(argv) & set(TRAINING_COMMANDS)):
            raise ConfigError(unknown_command(argv[0]))
        cli = run_lightning_cli(None if from_command_line else argv)
        if getattr(cli, "subcommand", None) == "fit":
            _print_next_step(cli, argv)
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        report_error(message)
        return 2
    return 0


def unknown_command(word: str) -> str:
    """The error for a first word that is not a command (the nearest command suggested)."""
    import difflib

    names = [name for name, _, _ in COMMAND_HELP]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    what = "option" if word.startswith("-") else "command"
    return f"unknown {what} '{word}': {hint}the commands are {', '.join(names)} (mammopath --help)"


def _print_next_step(cli, argv: Sequence[str]) -> None:  # type: ignore[no-untyped-def]
    """After ``fit``: one line naming the best checkpoint and the ``test`` command to run next."""
    import shlex

    callback = getattr(getattr(cli, "trainer", None), "checkpoint_callback", None)
    best = str(getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "") or "")
    if not best or not Path(best).is_file():
        return
    args, skip = [], False
    for arg in argv[1:]:  # the same configs and options, without fit's own --ckpt_path (a resume)
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            args.append(arg)
    command = shlex.join(["mammopath", "test", *args, f"--ckpt_path={best}"])
    console.print(f"best checkpoint: {best}; next: {command}", highlight=False, markup=False, soft_wrap=True)


def report_error(message: str) -> None:
    """Print ``error: <message>`` for a user's mistake: no traceback, never wrapped by the console's width."""
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
