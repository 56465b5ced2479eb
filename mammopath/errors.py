"""Errors raised by mammopath.

Every error names the file (and row/column where there is one) and says what is wrong and how to
fix it. Messages never echo DICOM header values or other patient-identifying data.
"""

from __future__ import annotations

import re
from pathlib import Path


class MammopathError(Exception):
    """Base class of every error mammopath raises on purpose."""


def _where(path: str | Path | None, row: int | None = None, column: str | None = None) -> str:
    parts = []
    if path is not None:
        parts.append(str(path))
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


class ManifestError(MammopathError):
    """A manifest is missing a column, has a bad value, or breaks a split rule.

    Attributes:
        problems: one ``(row, column, message)`` tuple per problem found; ``row`` is the 1-based
            data row number (the header is row 0) or ``None`` for file-level problems.
    """

    def __init__(self, path: str | Path | None, problems: list[tuple[int | None, str | None, str]] | None = None):
        self.path = path
        self.problems = problems or []
        if problems is None:  # rebuilt from its message alone (a DataLoader worker re-raises it so)
            super().__init__(str(path))
            return
        shown = problems[:20]
        lines = [f"  - {_where(None, r, c)}: {m}" if (r, c) != (None, None) else f"  - {m}" for r, c, m in shown]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        name = str(path) if path is not None else "<manifest>"
        if len(problems) == 1:  # one problem, one line
            (r, c, m) = problems[0]
            where = _where(None, r, c)
            super().__init__(f"invalid manifest {name}: {where + ': ' if where else ''}{m}")
            return
        super().__init__(f"invalid manifest {name} ({len(problems)} problem(s)):\n" + "\n".join(lines) + more)


class DataFormatError(MammopathError):
    """A data or metadata file does not have the expected format (CSV column, XML coordinate...)."""

    def __init__(self, path: str | Path, problem: str | None = None, row: int | None = None, column: str | None = None):
        self.path = path
        self.row = row
        self.column = column
        self.problem = problem
        if problem is None:  # rebuilt from its message alone (a DataLoader worker re-raises it so)
            super().__init__(str(path))
            return
        super().__init__(f"{_where(path, row, column)}: {problem}")


class DicomReadError(DataFormatError):
    """A DICOM file cannot be read or decoded (truncated, no pixel data, unsupported)."""


class MissingDecoderError(DicomReadError):
    """The transfer syntax of a DICOM needs a decoder plugin that is not installed."""


class SlideReadError(DataFormatError):
    """A slide (tiled TIFF) cannot be opened or a region cannot be read."""


class MissingMPPError(SlideReadError):
    """A slide has no usable microns-per-pixel and the manifest gives none."""


class AnnotationError(DataFormatError):
    """An annotation file (ASAP/ImageScope/plist XML, ROI mask) is malformed."""


class ConfigError(MammopathError):
    """A configuration value is inconsistent with the data or with another value."""


class CheckpointError(MammopathError):
    """A checkpoint or pretrained-weights file is missing or does not fit the model."""


class NonFiniteLossError(MammopathError):
    """The training loss became NaN or infinite; the run stops and the checkpoints saved before are kept."""


class OutputDirError(MammopathError):
    """An output folder cannot be written (missing permission, not a folder, disk full)."""


_WORKER = re.compile(r"Caught (\w+) in DataLoader worker process")


def user_message(exc: BaseException) -> str | None:
    """The message to show a user for ``exc``: a :class:`MammopathError`'s own text, or None for any other error.

    A DataLoader worker re-raises an error in the main process with the worker's whole traceback as its message
    (as the same class when it can be rebuilt from a message, else as a ``RuntimeError``); the user's message is
    the traceback's last entry, which is unwrapped here. An error raised while handling or because of one of ours
    (``raise ... from``) is looked through as well.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        found = _WORKER.search(text)
        if found and _is_ours(found.group(1)):
            name = found.group(1)
            tail = text.rsplit("Traceback (most recent call last):", 1)[-1]
            marker = re.search(rf"^(?:[\w.]+\.)?{name}: ", tail, flags=re.MULTILINE)
            return tail[marker.end() :].strip() if marker else text.strip()
        if isinstance(current, MammopathError):
            return text
        current = current.__cause__ or current.__context__
    return None


def _is_ours(name: str) -> bool:
    found = globals().get(name)
    return isinstance(found, type) and issubclass(found, MammopathError)
