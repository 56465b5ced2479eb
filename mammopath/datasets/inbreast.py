"""INbreast builder: ``INbreast.csv`` (or ``.xls``) + ``AllDICOMs/`` + ``AllXML/`` → manifest rows.

Quirks handled (dataset_formats.md §2): ``;``-separated CSV read as text, ``Bi-Rads`` mixing numbers
and ``4a/4b/4c``, one whitespace-only ``ACR``, view ``ML`` in file names vs ``MLO`` in the CSV, one
``FB`` view kept as-is, and ``Patient ID = removed`` everywhere: the only patient identifier is the
16-hex hash, the 2nd token of the DICOM file name.

Label: INbreast has no pathology column, so ``label`` is a BI-RADS proxy: {4a,4b,4c,5,6} → 1,
{1,2,3} → 0 (the usual binarisation; BI-RADS is a suspicion level, not a diagnosis).

Split: there is no official split. Patients are split 60/20/20 (train/val/test) by a deterministic
hash of the patient hash, computed at prepare time because the hash only exists in the DICOM names.
The committed ``data_manifests/inbreast_splits.csv`` therefore lists ``file_name → domain`` and the
split rule, not a split per image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pandas as pd

from mammopath.datasets import PrepareResult
from mammopath.errors import DataFormatError
from mammopath.manifest import COLUMNS, birads_to_grade

log = logging.getLogger(__name__)

RELEASE = "INbreast Release 1.0"
REQUIRED: tuple[str, ...] = ("Laterality", "View", "File Name", "ACR", "Bi-Rads")
BIRADS: tuple[str, ...] = ("1", "2", "3", "4a", "4b", "4c", "5", "6")
DOMAIN = "inbreast"
SPLIT_RULE = "patient-hash sha256 60/20/20"
SPLITS_FILE = Path(__file__).resolve().parents[2] / "data_manifests" / "inbreast_splits.csv"
VIEW_MAP: dict[str, str] = {"ML": "MLO", "MLO": "MLO", "CC": "CC", "FB": "FB"}

Progress = Callable[..., None]


def _read_xls(path: Path) -> pd.DataFrame:
    if importlib.util.find_spec("xlrd") is None:
        raise DataFormatError(path, "reading .xls needs the 'xlrd' package; install it or use INbreast.csv")
    raw = pd.read_excel(path, sheet_name=0, dtype=object)
    raw.columns = [str(c).strip() for c in raw.columns]
    if "File Name" not in raw.columns:
        raise DataFormatError(path, "required column is missing", column="File Name")
    raw = raw[raw["File Name"].map(lambda v: str(v).strip() not in ("", "nan", "None"))]  # empty + totals rows

    def text(value: Any) -> str:
        if isinstance(value, float):
            return "" if value != value else str(int(value)) if value.is_integer() else str(value)
        return "" if value is None else str(value).strip()

    return raw.map(text)


def read_metadata(path: str | Path) -> pd.DataFrame:
    """The INbreast table as text: ``file_name, laterality, view, acr, birads, acquisition_date``.

    Args:
        path: ``INbreast.csv``, ``INbreast.xls`` (needs ``xlrd``) or a folder holding one of them.

    Raises:
        DataFormatError: file or required column missing, or a value out of vocabulary (row named).
    """
    path = Path(path)
    if path.is_dir():
        csv, xls = path / "INbreast.csv", path / "INbreast.xls"
        path = csv if csv.is_file() or not xls.is_file() else xls
    if not path.is_file():
        raise DataFormatError(path, "INbreast metadata file not found; pass --metadata FILE")
    if path.suffix.lower() == ".xls":
        df = _read_xls(path)
    else:
        try:
            df = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False, na_filter=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataFormatError(path, f"not a readable ';'-separated CSV ({exc})") from exc
        df.columns = [str(c).strip() for c in df.columns]
        df = df.map(lambda v: str(v).strip())  # the whitespace-only ACR becomes ''
    for column in REQUIRED:
        if column not in df.columns:
            raise DataFormatError(path, "required column is missing", column=column)
    df = df.reset_index(drop=True)
    df["Bi-Rads"] = df["Bi-Rads"].str.lower()
    checks = {"Laterality": ("L", "R"), "View": tuple(VIEW_MAP), "Bi-Rads": BIRADS}
    for column, allowed in checks.items():
        bad = df.index[~df[column].isin(allowed)]
        if len(bad):
            raise DataFormatError(path, f"value is not one of {list(allowed)}", row=int(bad[0]) + 1, column=column)
    bad = df.index[~df["File Name"].str.fullmatch(r"\d+") | df["File Name"].duplicated()]
    if len(bad):
        raise DataFormatError(path, "File Name must be a unique number", row=int(bad[0]) + 1, column="File Name")
    return pd.DataFrame({
        "file_name": df["File Name"], "laterality": df["Laterality"], "view": df["View"].map(VIEW_MAP),
        "acr": df["ACR"], "birads": df["Bi-Rads"],
        "acquisition_date": df["Acquisition date"] if "Acquisition date" in df.columns else "",
    })  # fmt: skip


def label_of(birads: str) -> int:
    """BI-RADS proxy label: 4a/4b/4c/5/6 → 1 (suspicious), 1/2/3 → 0."""
    grade = birads_to_grade(birads)
    return int(grade is not None and grade >= 4)


def patient_split(patient: str) -> str:
    """Deterministic patient-level 60/20/20 split from the patient hash."""
    value = int.from_bytes(hashlib.sha256(f"inbreast:{patient}".encode()).digest()[:8], "big") / 2**64
    return "train" if value < 0.6 else "val" if value < 0.8 else "test"


def build_split_table(metadata: str | Path) -> pd.DataFrame:
    """``file_name, domain, split_rule`` for every image of the metadata (the committed table)."""
    meta = read_metadata(metadata)
    return pd.DataFrame({"file_name": meta["file_name"], "domain": DOMAIN, "split_rule": SPLIT_RULE})


def _release(root: Path) -> Path:
    for candidate in (root, root / RELEASE):
        if (candidate / "AllDICOMs").is_dir():
            return candidate
    raise DataFormatError(root, f"no AllDICOMs/ folder here or in '{RELEASE}/'; pass the release folder")


def _domains() -> dict[str, str]:
    if not SPLITS_FILE.is_file():
        return {}
    table = pd.read_csv(SPLITS_FILE, dtype=str, keep_default_na=False)
    return dict(zip(table["file_name"], table["domain"], strict=True))


def prepare(root: Path, *, metadata: str | None = None, progress: Progress | None = None) -> PrepareResult:
    """Build the INbreast manifest (paths relative to ``root``).

    Args:
        root: the ``INbreast Release 1.0`` folder or its parent.
        metadata: ``INbreast.csv``/``.xls`` (default: the release's ``INbreast.csv``, else ``.xls``).
        progress: ``progress(total=N)`` once, then ``progress()`` per image.

    Returns:
        The manifest; CSV rows without a DICOM or with an unparsable DICOM name are in ``dropped``.
    """
    root = Path(root)
    release = _release(root)
    meta = read_metadata(Path(metadata) if metadata else release)
    by_name: dict[str, str] = {}
    for entry in sorted(os.listdir(release / "AllDICOMs")):
        if entry.lower().endswith(".dcm"):
            by_name.setdefault(entry.split("_", 1)[0], entry)
    domains = _domains()
    if progress:
        progress(total=len(meta))
    rows, dropped = [], []
    for rec in cast(list[dict[str, str]], meta.to_dict("records")):
        if progress:
            progress()
        file_name = rec["file_name"]
        name = by_name.get(file_name)  # == the file that startswith(f"{FileName}_")
        if name is None or not name.startswith(f"{file_name}_"):
            dropped.append({"item": file_name, "reason": "image file not on disk"})
            continue
        tokens = name.split("_")
        if len(tokens) < 3 or not tokens[1]:
            dropped.append({"item": file_name, "reason": "DICOM name has no patient hash token"})
            continue
        patient = tokens[1]
        xml = release / "AllXML" / f"{file_name}.xml"
        annotated = xml.is_file()
        grade = birads_to_grade(rec["birads"])
        rows.append({
            "sample_id": f"inbreast-{file_name}", "patient_id": patient, "modality": "mammo",
            "dataset": "inbreast", "domain": domains.get(file_name, DOMAIN), "split": patient_split(patient),
            "path": (release / "AllDICOMs" / name).relative_to(root).as_posix(), "label": label_of(rec["birads"]),
            "grade": "" if grade is None or grade == 0 else grade, "grade_scheme": "birads",
            "roi_path": xml.relative_to(root).as_posix() if annotated else "", "laterality": rec["laterality"],
            "view": rec["view"], "label_source": "annotated" if annotated else "weak",
        })  # fmt: skip
    notes = [
        "label is a BI-RADS proxy (4a-6 → 1); INbreast has no pathology column",
        f"split: {SPLIT_RULE} on the DICOM-name patient hash (no official split)",
    ]
    manifest = pd.DataFrame(rows, columns=list(COLUMNS)).astype(object).fillna("")
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) != 4 or sys.argv[1] != "--build-splits":
        raise SystemExit("usage: python -m mammopath.datasets.inbreast --build-splits INBREAST_CSV OUT")
    build_split_table(sys.argv[2]).to_csv(sys.argv[3], index=False, lineterminator="\n")
