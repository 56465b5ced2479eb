"""The manifest: one normalized table of samples, the contract between data and model.

One row per sample (a mammogram view, a microscopy photo, or a slide patch). Columns and their
meaning are documented in ``docs/datasets.md`` and DESIGN.md §3. :func:`validate_manifest` checks
everything the model relies on and raises :class:`~mammopath.errors.ManifestError` naming the row
number (1-based data row) and column of every problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from mammopath.errors import ManifestError
from mammopath.io import location
from mammopath.io.location import Location, as_location, is_url

REQUIRED_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "patient_id",
    "modality",
    "dataset",
    "domain",
    "path",
)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "split",  # empty: a row to predict only (new data without a split or labels)
    "label",
    "grade",
    "grade_scheme",
    "roi_path",
    "laterality",
    "view",
    "x",
    "y",
    "level",
    "size",
    "mpp",
    "parent_id",
    "label_source",
    "slide_mpp",
)
COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
MODALITIES: tuple[str, ...] = ("mammo", "patho")
SPLITS: tuple[str, ...] = ("train", "val", "test")
LABEL_SOURCES: tuple[str, ...] = ("annotated", "weak")
LATERALITIES: tuple[str, ...] = ("L", "R")
VIEWS: tuple[str, ...] = ("CC", "MLO", "ML", "LM", "XCCL", "FB")
INT_COLUMNS: tuple[str, ...] = ("label", "grade", "level")
FLOAT_COLUMNS: tuple[str, ...] = ("x", "y", "size", "mpp", "slide_mpp")

#: Ordinal grade schemes: scheme -> level names in order (grade = index in this tuple).
#: ``birads``: BI-RADS 0-6 with 4a/4b/4c mapped to 4 (see :func:`birads_to_grade`); BI-RADS 0
#: ("incomplete, needs more imaging") is kept as level 0 by the schema but builders leave it
#: empty because it is not a point on the suspicion scale.
GRADE_SCHEMES: dict[str, tuple[str, ...]] = {
    "birads": ("0", "1", "2", "3", "4", "5", "6"),
    "bach4": ("Normal", "Benign", "InSitu", "Invasive"),
    "c17_node": ("negative", "itc", "micro", "macro"),
}


def num_grades(scheme: str) -> int:
    """Number of ordinal levels of a grade scheme."""
    return len(GRADE_SCHEMES[scheme])


def birads_to_grade(value: str | int | float | None) -> int | None:
    """Map a BI-RADS assessment (``"4a"``, ``4``, ``"5"``...) to the ``birads`` grade index.

    Sub-categories 4a/4b/4c map to 4. Empty or unparsable values give ``None``.
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    if text[0] == "4" and text[1:] in ("a", "b", "c"):
        return 4
    try:
        number = int(float(text))
    except ValueError:
        return None
    return number if 0 <= number <= 6 else None


def empty_manifest() -> pd.DataFrame:
    """An empty manifest with every column, in the canonical order."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV or Parquet file as text columns, without validating it.

    Missing optional columns are added empty. Values are kept as strings (``""`` = missing)
    so that validation can report bad values instead of pandas silently coercing them.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [(None, None, "the manifest file does not exist")])
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path).astype("string").fillna("")
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except ImportError as exc:  # parquet engine not installed
        raise ManifestError(path, [(None, None, f"cannot read Parquet ({exc}); install pyarrow")]) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(path, [(None, None, f"not a readable CSV: {exc}")]) from exc
    df.columns = [str(c).strip() for c in df.columns]
    for column in OPTIONAL_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    for column in df.columns:
        df[column] = df[column].astype(str).str.strip()
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest atomically (temp file then rename), columns in canonical order.

    Nothing already at ``path`` is lost if writing fails half-way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    for column in COLUMNS:
        if column not in out.columns:
            out[column] = ""
    extra = [c for c in out.columns if c not in COLUMNS]
    out = out[list(COLUMNS) + extra]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            out.astype("string").to_parquet(tmp, index=False)
        else:
            out.to_csv(tmp, index=False, lineterminator="\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _path_problem(value: str, root: Location | None) -> str | None:
    """Why a manifest path is unsafe, or ``None`` when it stays inside the data root."""
    if "\x00" in value:
        return "contains a NUL character"
    if "%2e" in value.lower() or "%2f" in value.lower():
        return "contains URL-encoded path characters (%2e/%2f); write the plain relative path"
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or (len(value) > 1 and value[1] == ":"):
        return "is absolute; manifest paths must be relative to the data root"
    if ".." in posix.parts:
        return "contains '..' and may escape the data root"
    if root is not None and not is_url(root):  # (object stores have no symbolic links)
        root = Path(root)
        resolved_root = root.resolve()
        target = (root / value).resolve()
        if target != resolved_root and resolved_root not in target.parents:
            return "resolves (through a symbolic link) outside the data root"
    return None


def _as_text(value: Any) -> str:
    """A cell as stripped text; missing markers (None, NaN, pd.NA) become ``""``."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_int(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def validate_manifest(
    df: pd.DataFrame,
    root: str | Path | None = None,
    *,
    source: str | Path | None = None,
    check_files: bool = False,
    required_domains: Iterable[str] = (),
) -> pd.DataFrame:
    """Validate a manifest and return it with typed columns.

    Args:
        df: the manifest as read by :func:`read_manifest` (string columns).
        root: data root the ``path``/``roi_path`` columns are relative to. Paths must stay inside it.
        source: file the manifest came from, used in error messages.
        check_files: also require every ``path`` (and ``roi_path``) to exist under ``root``.
        required_domains: domains that must have rows (e.g. the held-out domains of a LODO fold).

    Returns:
        A copy with ``label``/``grade``/``level`` as nullable ints, ``x``/``y``/``size``/``mpp``
        as floats and the other columns as strings.

    Raises:
        ManifestError: listing every problem with its 1-based row number and column.
    """
    problems: list[tuple[int | None, str | None, str]] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(source, [(None, c, "required column is missing") for c in missing])
    df = df.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    for column in COLUMNS:
        df[column] = [_as_text(v) for v in df[column].tolist()]
    root_path = as_location(root) if root is not None else None
    remote_files: dict[str, bool] = {}

    def file_missing(value: str) -> bool:
        assert root_path is not None
        if not is_url(root_path):
            return not (Path(root_path) / value).exists()
        if value not in remote_files:  # one metadata request per distinct file (patch rows share their slide)
            remote_files[value] = location.exists(location.join(root_path, value))
        return not remote_files[value]

    for column in REQUIRED_COLUMNS:
        for i in df.index[df[column] == ""]:
            problems.append((int(i) + 1, column, "empty value in a required column"))
    vocab: dict[str, Sequence[str]] = {
        "modality": MODALITIES,
        "split": SPLITS,
        "label_source": LABEL_SOURCES,
        "laterality": LATERALITIES,
        "view": VIEWS,
        "grade_scheme": tuple(GRADE_SCHEMES),
    }
    for column, allowed in vocab.items():
        bad = df.index[(df[column] != "") & ~df[column].isin(allowed)]
        for i in bad:
            problems.append((int(i) + 1, column, f"'{df.at[i, column]}' is not one of {list(allowed)}"))

    duplicated = df["sample_id"].duplicated(keep="first") & (df["sample_id"] != "")
    for i in df.index[duplicated]:
        first = int(df.index[df["sample_id"] == df.at[i, "sample_id"]][0]) + 1
        problems.append((int(i) + 1, "sample_id", f"duplicate sample_id (first used in row {first})"))

    if check_files and root_path is not None and not is_url(root_path) and not Path(root_path).is_dir():
        what = "is not a folder" if Path(root_path).exists() else "does not exist"
        raise ManifestError(
            source,
            [(None, None, f"data root {root_path} {what}: give the folder the manifest's paths are relative to")],
        )
    missing_files: list[tuple[int, str]] = []
    for i, value in df["path"].items():
        if value:
            reason = _path_problem(value, root_path)
            if reason:
                problems.append((int(i) + 1, "path", f"path {reason}"))
            elif check_files and root_path is not None and file_missing(value):
                missing_files.append((int(i) + 1, value))
    if missing_files:  # one line for many: a wrong root makes every row miss its file
        first_row, first_path = missing_files[0]
        shown = location.join(root_path, first_path) if root_path is not None else first_path
        more = f" and {len(missing_files) - 1} more of {len(df)} rows" if len(missing_files) > 1 else ""
        hint = "; is the data root right?" if len(missing_files) > 1 else ""
        problems.append((first_row, "path", f"file not found under the data root: {shown}{more}{hint}"))
    for i, value in df["roi_path"].items():
        if value:
            reason = _path_problem(value, root_path)
            if reason:
                problems.append((int(i) + 1, "roi_path", f"path {reason}"))

    typed: dict[str, list[Any]] = {}
    for column in INT_COLUMNS:
        values: list[Any] = []
        for i, value in df[column].items():
            if value == "":
                values.append(pd.NA)
                continue
            number = _as_int(value)
            if number is None:
                problems.append((int(i) + 1, column, f"'{value}' is not an integer"))
                values.append(pd.NA)
            else:
                values.append(number)
        typed[column] = values
    for column in FLOAT_COLUMNS:
        floats: list[float] = []
        for i, value in df[column].items():
            if value == "":
                floats.append(float("nan"))
                continue
            try:
                floats.append(float(value))
            except ValueError:
                problems.append((int(i) + 1, column, f"'{value}' is not a number"))
                floats.append(float("nan"))
        typed[column] = floats

    for i, label in zip(df.index, typed["label"], strict=True):
        if label is not pd.NA and label not in (0, 1):
            problems.append((int(i) + 1, "label", f"label must be 0 or 1 (got {label})"))
    for i, grade in zip(df.index, typed["grade"], strict=True):
        scheme = df.at[i, "grade_scheme"]
        if grade is pd.NA:
            continue
        if scheme == "":
            problems.append((int(i) + 1, "grade_scheme", "a grade is given but grade_scheme is empty"))
        elif scheme in GRADE_SCHEMES and not 0 <= grade < num_grades(scheme):
            problems.append(
                (int(i) + 1, "grade", f"grade {grade} is outside scheme '{scheme}' (0..{num_grades(scheme) - 1})")
            )
    for i, level in zip(df.index, typed["level"], strict=True):
        if level is not pd.NA and level < 0:
            problems.append((int(i) + 1, "level", "level must be >= 0"))
    patch_cols = ("x", "y", "size")
    for i in df.index:
        given = [df.at[i, c] != "" for c in patch_cols]
        if any(given) and not all(given):
            problems.append((int(i) + 1, "x", "patch rows need all of x, y and size"))
        if all(given) and df.at[i, "modality"] == "mammo":
            problems.append((int(i) + 1, "x", "patch coordinates are only for pathology slides"))

    # A patient must stay in one split (patient-disjoint splits).
    splits_per_patient = df[df["patient_id"] != ""].groupby("patient_id")["split"].agg(lambda s: sorted(set(s)))
    for patient, splits in splits_per_patient.items():
        if len(splits) > 1:
            rows = df.index[df["patient_id"] == patient]
            first_split = df.at[rows[0], "split"]
            other = next(int(r) + 1 for r in rows if df.at[r, "split"] != first_split)
            problems.append(
                (other, "split", f"patient '{patient}' is in splits {splits}: splits must be patient-disjoint")
            )
    present = set(df["domain"])
    for domain in required_domains:
        if domain not in present:
            problems.append((None, "domain", f"domain '{domain}' has no rows (needed by the LODO fold)"))

    if problems:
        problems.sort(key=lambda p: p[0] if p[0] is not None else -1)
        raise ManifestError(source, problems)

    out = df.copy()
    for column in INT_COLUMNS:
        out[column] = pd.array(typed[column], dtype="Int64")
    for column in FLOAT_COLUMNS:
        out[column] = pd.array(typed[column], dtype="float64")
    return out.reset_index(drop=True)


def load_manifest(
    path: str | Path,
    root: str | Path | None = None,
    *,
    check_files: bool = False,
    required_domains: Iterable[str] = (),
) -> pd.DataFrame:
    """Read and validate a manifest file (see :func:`validate_manifest`)."""
    return validate_manifest(
        read_manifest(path), root, source=path, check_files=check_files, required_domains=required_domains
    )


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, domain, modality, split): rows, patients, positives, negatives, unlabelled."""
    label = pd.to_numeric(df["label"], errors="coerce")
    frame = df.assign(_pos=(label == 1), _neg=(label == 0), _unl=label.isna())
    grouped = frame.groupby(["dataset", "domain", "modality", "split"], sort=True)
    return grouped.agg(
        rows=("sample_id", "size"),
        patients=("patient_id", "nunique"),
        positive=("_pos", "sum"),
        negative=("_neg", "sum"),
        unlabelled=("_unl", "sum"),
    ).reset_index()


def manifest_warnings(df: pd.DataFrame, root: str | Path | None) -> list[str]:
    """What is valid but probably not meant: non-DICOM mammograms, whole-slide rows read as one photo.

    Each warning is one line with the first row concerned and how many rows share it.
    """
    warnings: list[str] = []
    local = root is not None and not is_url(as_location(root))

    def first(rows: pd.DataFrame) -> str:
        return f"row {int(rows.index[0]) + 1} ({rows['path'].iloc[0]})"

    mammo = df[df["modality"] == "mammo"]
    if len(mammo):
        from mammopath.datasets.folder import is_dicom

        if local:
            not_dicom = mammo[[not is_dicom(Path(str(root)) / p) for p in mammo["path"]]]
        else:
            not_dicom = mammo[~mammo["path"].str.lower().str.endswith((".dcm", ".dicom"))]
        if len(not_dicom):
            warnings.append(
                f"{len(not_dicom)} mammogram row(s) are not DICOM files, first {first(not_dicom)}: mammograms are "
                "read as DICOM only (the intensity curve and laterality live in the header); export DICOM"
            )
    whole = df[(df["modality"] == "patho") & df["x"].isna()] if "x" in df else df.iloc[:0]
    if len(whole) and local:
        from mammopath.datasets.tiling import is_tiled_tiff

        slides = whole[[is_tiled_tiff(Path(str(root)) / p) for p in whole["path"]]]
        if len(slides):
            warnings.append(
                f"{len(slides)} whole-slide row(s) have no x/y, first {first(slides)}: each would be read as one "
                "photo; make patch rows with `mammopath tile MANIFEST --root ROOT --out PATCHES.csv`"
            )
    return warnings
