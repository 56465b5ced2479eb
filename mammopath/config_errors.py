"""Configuration mistakes as one line: the key, the file that sets it, and what was probably meant.

jsonargparse reports a bad option as its usage (dozens of lines) and a message that names neither the YAML
file nor the nearest valid key. :class:`OneLineParser` (the parser of ``mammopath fit|validate|test|predict``)
turns that message into a :class:`~mammopath.errors.ConfigError`:

- ``unrecognized arguments: --model.backbon=x`` → ``--model.backbon: unknown option; did you mean --model.backbone?``
- a key in a YAML file → ``FILE: model.backbon: unknown key ...; did you mean model.backbone?``
- a YAML syntax error → ``FILE, line 2: YAML syntax error (...)``, checked before parsing (:func:`check_yaml_files`).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from mammopath.errors import ConfigError

#: The ``--config`` files of the command being parsed, in order (set by :func:`config_files_of`).
_CONFIG_FILES: list[Path] = []
#: The keys given on the command line (``--a.b=v`` or ``--a.b v``), without dashes.
_CLI_KEYS: set[str] = set()


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--config`` naming a shipped config resolved (:func:`mammopath.resources.resolve_config`).

    So ``--config experiments/synth.yaml`` works from any folder once mammopath is installed.
    """
    from mammopath.resources import resolve_config

    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            args[i + 1] = str(resolve_config(args[i + 1]))
        elif arg.startswith("--config="):
            args[i] = f"--config={resolve_config(arg.split('=', 1)[1])}"
    return args


def config_files_of(argv: Sequence[str]) -> list[Path]:
    """The files given with ``--config``/``-c`` in ``argv``, remembered for naming them in errors."""
    files: list[Path] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    _CONFIG_FILES[:] = files
    _CLI_KEYS.clear()
    _CLI_KEYS.update(
        a.split("=", 1)[0].lstrip("-") for a in args if a.startswith("--") and not a.startswith("--config")
    )
    return files


def check_yaml_files(files: Sequence[Path]) -> None:
    """Each config file exists and is YAML; else a one-line error naming the file (and the line)."""
    for path in files:
        if not path.is_file():
            raise ConfigError(f"--config {path}: file not found")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}{where}: YAML syntax error ({problem}); fix the file") from exc


def _flat_keys(data: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}{str(key).rstrip('+')}"
            yield name
            yield from _flat_keys(value, name + ".")


def _source(key: str) -> str:
    """Where ``key`` was set: ``--key`` on the command line, else the last ``--config`` file setting it."""
    plain = key.replace(".init_args.", ".")
    if any(k.replace(".init_args.", ".") == plain for k in _CLI_KEYS):
        return f"--{key}"
    source = _file_setting(key)
    return f"{source}: {key}" if source is not None else key


def _file_setting(key: str) -> Path | None:
    """The last ``--config`` file that sets ``key`` (dotted; ``init_args`` levels optional), or None."""
    plain = key.replace(".init_args.", ".")
    for path in reversed(_CONFIG_FILES):
        try:
            keys = {k.replace(".init_args.", ".") for k in _flat_keys(yaml.safe_load(path.read_text()))}
        except (OSError, yaml.YAMLError):
            continue
        if plain in keys:
            return path
    return None


def _known_keys(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of ``parser`` and of its subcommand parsers, without the leading dashes."""
    keys: set[str] = set()
    for action in parser._actions:
        keys.update(s.lstrip("-") for s in action.option_strings if s.startswith("--"))
        choices = action.choices if isinstance(action.choices, dict) else {}
        for sub in choices.values():
            if isinstance(sub, argparse.ArgumentParser):
                keys |= _known_keys(sub)
    return keys


def did_you_mean(key: str, known: Sequence[str] | set[str]) -> str:
    """``"; did you mean X?"`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def one_line(message: str, known: set[str]) -> str:
    """jsonargparse's error message as one line naming the key, the file that sets it and the nearest valid key."""
    text = " ".join(message.split())
    found = re.match(r"unrecognized arguments: (.+)", text)
    if found:
        parts = []
        for arg in found.group(1).split():
            key = arg.split("=", 1)[0].lstrip("-")
            if arg.startswith("-"):
                hint = did_you_mean(key, known)
                parts.append(f"--{key}: unknown option{hint.replace('did you mean ', 'did you mean --')}")
        if parts:
            return "; ".join(parts) + " (mammopath <command> --help lists the options)"
    found = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text) or re.search(
        r"Key '?\"?([\w.]+)\"?'? is not expected", text
    )
    if found:
        key = f"{found.group(1)}.{found.group(2)}" if found.lastindex == 2 else found.group(1)
        return f"{_source(key)}: unknown key{did_you_mean(key, known)}"
    found = re.search(r'Parser key "([\w.]+)": (.*)', text)
    if found:
        key, problem = found.group(1), found.group(2)
        option = re.search(r"Problem with given class_path '([\w.]+)': Option '(\w+)' is not accepted", problem)
        if option:
            class_path, name = option.groups()
            params = _init_params(class_path)
            hint = did_you_mean(name, params) if params else ""
            short = class_path.rsplit(".", 1)[-1]
            return f"{_source(f'{key}.init_args.{name}')}: {short} has no option '{name}'{hint}"
        return f"{_source(key)}: {_condense(problem)}"
    return text


def _init_params(class_path: str) -> list[str]:
    """The ``__init__`` parameter names of ``class_path`` (and its bases), or [] when it cannot be imported."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    params: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is not None:
            params += [p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")]
    return sorted(set(params))


def _condense(problem: str) -> str:
    """jsonargparse's Union explanation as ``expected int or None, got 'abc'``."""
    if "Union subtypes" not in problem:
        return problem
    expected = re.findall(r"Expected a <class '([\w.]+)'>", problem)
    given = re.search(r"Given value: (.*)$", problem)
    kinds = " or ".join(dict.fromkeys("None" if e == "NoneType" else e for e in expected)) or "another type"
    return f"expected {kinds}, got {given.group(1).strip()!r}" if given else f"expected {kinds}"


class OneLineParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are one-line :class:`ConfigError` s instead of usage + exit."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[no-untyped-def,override]
        if not self.exit_on_error:  # jsonargparse trying alternatives internally: keep its own path
            return super().error(message, ex)
        parsers: list[argparse.ArgumentParser] = [self]
        sub = getattr(ex, "subcommand_parser", None)
        if isinstance(sub, argparse.ArgumentParser):
            parsers.append(sub)
        known: set[str] = set()
        for parser in parsers:
            known |= _known_keys(parser)
        raise ConfigError(one_line(message, known)) from ex
