"""The LightningCLI behind `mammopath fit|validate|test|predict`.

- The data is in subclass mode: ``data.class_path`` names any datamodule by its short name
  (``CBISDDSMDataModule``, ``CrossModalDataModule``..., any subclass of ``LodoDataModule``; they are
  re-exported by ``mammopath.datamodules``); without a ``class_path`` the data is a
  ``CrossModalDataModule`` (``data: {manifest: ...}``).
- What the model needs from the data is linked once, at instantiation: input size, grade schemes and
  input normalization (which the checkpoint then carries).
- ``run_name`` (and an optional ``method``) decide where a run writes (:func:`apply_run_layout`): TensorBoard
  ``runs/<run>/<subcommand>`` (fit and test are sibling TensorBoard runs), checkpoints
  ``runs/<run>/checkpoints``, results ``results/<run>``. A LODO fold config therefore states only its
  held-out domains and its run name, and every callback of ``base.yaml`` reaches every fold.

A module-level class (not one defined inside a function) so that ``ddp_spawn`` can pickle the
trainer's references to it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

import mammopath.datamodules  # noqa: F401  (registers the short datamodule names for class_path)
from mammopath.config_errors import OneLineParser, check_yaml_files, config_files_of, resolve_config_args
from mammopath.datamodules.lodo import LodoDataModule
from mammopath.errors import CheckpointError, ConfigError, OutputDirError
from mammopath.models.encoders import check_pretrained
from mammopath.models.module import MammoPathModule

log = logging.getLogger(__name__)

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def _class_name(entry: Any) -> str:
    class_path = entry.get("class_path", "") if isinstance(entry, Namespace | dict) else ""
    return str(class_path).rsplit(".", 1)[-1]


def _set(init_args: Namespace, key: str, value: str, what: str) -> None:
    old = init_args.get(key)
    if old not in (None, "", value):
        log.info("run_name: %s.%s %r replaced by %r", what, key, old, value)
    init_args[key] = value


def apply_run_layout(config: Namespace, subcommand: str) -> str | None:
    """Derive every output folder of a run from ``run_name`` (+ ``method``); returns the run id or None.

    With ``run_name: R`` (and ``method: M``, run id ``R/M``): ``trainer.default_root_dir = runs/<id>``, a
    TensorBoard logger ``save_dir=runs, name=<id>, version=<subcommand>`` (created when the logger is left at
    its default, updated when it is a TensorBoardLogger, untouched when it is off or another logger),
    ``ModelCheckpoint.dirpath = runs/<id>/checkpoints`` and ``ResultsWriter.out_dir`` /
    ``AlignmentMonitor.out_dir = results/<id>``. Values
    given for these in YAML are replaced (logged). Without ``run_name`` nothing changes.
    """
    run = config.get("run_name")
    if not run:
        return None
    method = config.get("method")
    run_id = f"{run}/{method}" if method else str(run)
    runs_dir, results_dir = Path(config.get("runs_dir") or "runs"), Path(config.get("results_dir") or "results")
    run_dir = runs_dir / run_id
    trainer = config.trainer
    trainer.default_root_dir = str(run_dir)
    logger = trainer.get("logger")
    tensorboard = {"save_dir": str(runs_dir), "name": run_id, "version": subcommand}
    if logger is None or logger is True:
        trainer.logger = Namespace(class_path=TENSORBOARD, init_args=Namespace(**tensorboard))
    else:
        for entry in logger if isinstance(logger, list) else [logger]:
            if _class_name(entry) == "TensorBoardLogger":
                for key, value in tensorboard.items():
                    _set(entry.init_args, key, value, "TensorBoardLogger")
    for entry in trainer.get("callbacks") or []:
        name = _class_name(entry)
        if name == "ModelCheckpoint":
            _set(entry.init_args, "dirpath", str(run_dir / "checkpoints"), name)
        elif name == "AlignmentMonitor":
            _set(entry.init_args, "out_dir", str(results_dir / run_id), name)
        elif name == "PredictionWriter":
            _set(entry.init_args, "out_dir", str(results_dir / run_id / "predict"), name)
        elif name == "AttentionMapWriter":
            _set(entry.init_args, "out_dir", str(results_dir / run_id / "attention"), name)
        elif name == "ResultsWriter":
            _set(entry.init_args, "out_dir", str(results_dir / run_id), name)
            if entry.init_args.get("title") in (None, "Test results"):
                entry.init_args["title"] = run_id
    return run_id


def output_dirs(config: Namespace) -> list[Path]:
    """Every folder a run writes to: the root dir, the loggers' save dirs, the writing callbacks' folders."""
    trainer = config.trainer
    dirs = [Path(trainer.get("default_root_dir") or ".")]
    logger = trainer.get("logger")
    for entry in logger if isinstance(logger, list) else [logger]:
        if isinstance(entry, Namespace | dict) and entry.get("init_args") is not None:
            save_dir = entry["init_args"].get("save_dir")
            if save_dir:
                dirs.append(Path(str(save_dir)))
    for entry in trainer.get("callbacks") or []:
        init_args = entry.get("init_args") if isinstance(entry, Namespace | dict) else None
        for key in ("dirpath", "out_dir"):
            value = init_args.get(key) if init_args is not None else None
            if value:
                dirs.append(Path(str(value)))
    return list(dict.fromkeys(dirs))


def check_writable(folder: Path, min_free_mb: float = 100.0) -> None:
    """Create ``folder`` and write a probe file in it, and require ``min_free_mb`` of free space there.

    Raises:
        OutputDirError: naming the folder and the reason, before any data is read or any step is trained.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mammopath-write-test-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(
            f"output folder {folder} is not writable ({exc.strerror or exc}); choose another folder "
            "(trainer.default_root_dir, run_name/runs_dir, the callbacks' out_dir) or free space there"
        ) from exc
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OutputDirError(
            f"output folder {folder} has {free_mb:.0f} MiB free, less than --min_free_space_mb={min_free_mb:g}; "
            "a run there would fail when it writes a checkpoint or its results"
        )


#: Environment variable that allows ``weights_only=false`` (a checkpoint you made yourself, with pickled objects).
TRUST_CHECKPOINT_ENV = "MAMMOPATH_TRUST_CHECKPOINT"
#: Environment variable with the opt-in allow-list of ``class_path`` prefixes (comma-separated).
ALLOWED_CLASS_PATHS_ENV = "MAMMOPATH_ALLOWED_CLASS_PATHS"
#: A suggested allow-list: everything the shipped configs name.
SUGGESTED_CLASS_PATHS = ("mammopath", "torch.optim", "lightning.pytorch", "timm")


def configure_import_policy(allowed: str | None = None) -> list[str] | None:
    """Restrict what a config may import (pitfalls §6.2: a ``class_path`` is code).

    Always enforced: jsonargparse's import-path denylist (``os``, ``subprocess``, ``pickle``, ``importlib``,
    ``builtins.eval``...), so a config naming them fails at parsing, before anything is instantiated. With
    ``allowed`` (default: the ``MAMMOPATH_ALLOWED_CLASS_PATHS`` environment variable), e.g.
    ``"mammopath,torch.optim,lightning.pytorch,timm"``, every other import path is denied as well.

    Returns:
        the allow-list in force, or None.
    """
    from jsonargparse import set_parsing_settings

    text = os.environ.get(ALLOWED_CLASS_PATHS_ENV, "") if allowed is None else allowed
    prefixes = [p.strip() for p in text.split(",") if p.strip()]
    if prefixes:
        set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=prefixes)
        return prefixes
    set_parsing_settings(import_path_denylist=[])  # enforce the default denylist (otherwise only a warning)
    return None


#: ``ckpt_path`` values Lightning resolves itself.
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


def _checkpoint_hint(config: Namespace) -> str:
    """Where ``fit`` of this config wrote its checkpoints (the fix for a wrong ``--ckpt_path``)."""
    run = config.get("run_name")
    if run:
        method = config.get("method")
        folder = Path(config.get("runs_dir") or "runs") / (f"{run}/{method}" if method else str(run)) / "checkpoints"
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        listed = f" (there: {', '.join(found)})" if found else " (none there yet: run fit first)"
        return f"fit of this config writes {folder}/best.ckpt and last.ckpt{listed}"
    return "pass a checkpoint that fit wrote (its ModelCheckpoint dirpath, e.g. runs/<run>/checkpoints/best.ckpt)"


def check_accelerator(accelerator: Any) -> None:
    """Fail in the first second when ``trainer.accelerator`` names a device this machine does not have."""
    import torch

    name = str(accelerator or "auto").lower()
    available = {
        "gpu": torch.cuda.is_available() or torch.backends.mps.is_available(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if name in available and not available[name]:
        raise ConfigError(
            f"trainer.accelerator={name}: this machine has no {'CUDA GPU' if name != 'mps' else 'Apple MPS device'} "
            "that torch can use; use --trainer.accelerator=cpu (or auto, which takes a GPU when there is one)"
        )


class MammoPathCLI(LightningCLI):
    """LightningCLI with the data → model links stated once and outputs derived from one run name."""

    def init_parser(self, **kwargs: Any):  # type: ignore[no-untyped-def]
        """Every parser (main and subcommands) refuses abbreviated options: ``--model.backbon`` is not ``backbone``."""
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--run_name", type=str | None, default=None, help="run name: decides every output folder")
        parser.add_argument("--method", type=str | None, default=None, help="method tag: runs/<run_name>/<method>")
        parser.add_argument("--runs_dir", type=str, default="runs", help="TensorBoard logs and checkpoints")
        parser.add_argument("--results_dir", type=str, default="results", help="result tables and figures")
        parser.add_argument(
            "--min_free_space_mb", type=float, default=100.0, help="free space every output folder needs at start"
        )
        parser.set_defaults({"data": {"class_path": "mammopath.datamodules.crossmodal.CrossModalDataModule"}})
        parser.link_arguments("data.image_size", "model.img_size", apply_on="instantiate")
        parser.link_arguments("data.grade_schemes", "model.grade_schemes", apply_on="instantiate")
        parser.link_arguments("data.normalization", "model.normalization", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_id = apply_run_layout(config, self.subcommand or "run")
        if run_id:
            log.info("run %s: logs and checkpoints under %s", run_id, config.trainer.default_root_dir)
        if self.subcommand and "weights_only" in config:  # resuming never unpickles code (pitfalls §3.3)
            if config.get("weights_only") is False and os.environ.get(TRUST_CHECKPOINT_ENV) != "1":
                raise CheckpointError(
                    f"weights_only=false would run any code a checkpoint carries; mammopath checkpoints hold plain "
                    f"values only and load with weights_only=true. Set {TRUST_CHECKPOINT_ENV}=1 only for a checkpoint "
                    "you made yourself"
                )
            if config.get("weights_only") is None:
                config["weights_only"] = True
        ckpt_path = config.get("ckpt_path") if self.subcommand else None
        local = bool(ckpt_path) and ckpt_path not in CKPT_KEYWORDS and "://" not in str(ckpt_path)
        if local and not Path(str(ckpt_path)).is_file():  # Lightning would fail only after the data setup
            raise CheckpointError(f"--ckpt_path {ckpt_path}: file not found; {_checkpoint_hint(config)}")
        if self.subcommand:
            check_accelerator(config.trainer.get("accelerator"))
        if self.subcommand and not config.get("ckpt_path"):  # a checkpoint brings its own encoder weights
            model = config.get("model") or Namespace()
            check_pretrained(str(model.get("backbone")), str(model.get("freeze")), model.get("checkpoint_path"))
        if self.subcommand:  # fail in the first second, not after the first epoch
            for folder in output_dirs(config):
                check_writable(folder, float(config.get("min_free_space_mb") or 0.0))

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the hyper-parameters of ``ckpt_path`` with ``weights_only=True``; a refusal names it."""
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as exc:
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{ckpt_path}: refused: the checkpoint holds Python objects{what} that would run code when loaded; "
                "mammopath checkpoints hold tensors and plain values only and load with weights_only=True. Do not "
                "load checkpoints from untrusted sources"
            ) from exc

    @classmethod
    def create(cls, args: Sequence[str] | None = None, *, run: bool = True, epilog: str = "") -> MammoPathCLI:
        """Build (and by default run) the CLI; ``args=None`` reads ``sys.argv``."""
        configure_import_policy()
        if args is None:  # the command line itself (LightningCLI reads sys.argv)
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        else:
            args = resolve_config_args(args)
        check_yaml_files(config_files_of(list(args) if args is not None else sys.argv[1:]))
        return cls(
            MammoPathModule,
            LodoDataModule,
            subclass_mode_data=True,
            parser_class=OneLineParser,
            args=list(args) if args is not None else None,
            run=run,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"epilog": epilog},
        )
