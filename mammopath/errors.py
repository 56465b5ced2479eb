"""Errors raised by mammopath.

Every error names the file (and row/column where there is one) and says what is wrong and how to
fix it. Messages never echo DICOM header values or other patient-identifying data.
"""

from __future__ import annotations

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

    def __init__(self, path: str | Path | None, problems: list[tuple[int | None, str | None, str]]):
        self.path = path
        self.problems = problems
        shown = problems[:20]
        lines = [f"  - {_where(None, r, c)}: {m}" if (r, c) != (None, None) else f"  - {m}" for r, c, m in shown]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        name = str(path) if path is not None else "<manifest>"
        super().__init__(f"invalid manifest {name} ({len(problems)} problem(s)):\n" + "\n".join(lines) + more)


class DataFormatError(MammopathError):
    """A data or metadata file does not have the expected format (CSV column, XML coordinate...)."""

    def __init__(self, path: str | Path, problem: str, row: int | None = None, column: str | None = None):
        self.path = path
        self.row = row
        self.column = column
        self.problem = problem
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
