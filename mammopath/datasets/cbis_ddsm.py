"""CBIS-DDSM builder: the four TCIA description CSVs + the DICOM release → manifest rows.

One manifest row per full mammogram (``image file path`` is unique per image: 3103 images of 1566
patients); the 3568 abnormality rows are aggregated per image. Quirks handled (dataset_formats.md §1):
``breast_density``/``breast density`` spellings, a trailing ``\\n`` inside one quoted path column per
file, ``NA``/``N/A``/empty as missing, ``\\`` separators, crop vs ROI mask file names that cannot be
trusted (told apart by pixel content), and two on-disk layouts (legacy CSV paths and the NBIA
retriever's ``<date>-DDSM-[NA-]<uid5>/<n>-<desc>-<uid5>/1-k.dcm``).

Splits: the official test CSVs stay test, but a patient with rows in both an official train and an
official test CSV (31 patients: mass/calc cross-type overlaps) is put entirely in test, so splits are
patient-disjoint. Validation is carved from the remaining training patients by a deterministic hash
of ``patient_id`` (~15%). The committed table ``data_manifests/cbis_ddsm_splits.csv`` holds the result
for the genuine CSVs (rebuild: ``python -m mammopath.datasets.cbis_ddsm --build-splits META_DIR OUT``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pydicom

from mammopath.datasets import PrepareResult
from mammopath.errors import DataFormatError, DicomReadError
from mammopath.io.masks import classify_roi_dicom
from mammopath.manifest import COLUMNS

log = logging.getLogger(__name__)

#: Official CSV file name → (abnormality type, official split).
CSV_FILES: dict[str, tuple[str, str]] = {
    "mass_case_description_train_set.csv": ("mass", "train"),
    "mass_case_description_test_set.csv": ("mass", "test"),
    "calc_case_description_train_set.csv": ("calc", "train"),
    "calc_case_description_test_set.csv": ("calc", "test"),
}
DENSITY_COLUMNS: tuple[str, str] = ("breast_density", "breast density")
REQUIRED: tuple[str, ...] = (
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "assessment",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)
PATH_COLUMNS: tuple[str, ...] = ("image file path", "cropped image file path", "ROI mask file path")
MISSING: frozenset[str] = frozenset({"", "NA", "N/A"})
PATHOLOGY_LABEL: dict[str, int] = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
DOMAIN = "cbis_ddsm"
VAL_FRACTION = 0.15
SPLITS_FILE = Path(__file__).resolve().parents[2] / "data_manifests" / "cbis_ddsm_splits.csv"
SPLIT_COLUMNS: tuple[str, ...] = ("image_key", "patient_id", "split", "domain")

Progress = Callable[..., None]


def _clean(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text in MISSING else text


def _read_csv(path: Path) -> pd.DataFrame:
    """One description CSV, every cell stripped text ('' = missing), columns checked."""
    if not path.is_file():
        raise DataFormatError(path, "CBIS-DDSM description CSV not found; pass the folder holding all four CSVs")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, f"not a readable CSV ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    for column in REQUIRED:
        if column not in df.columns:
            raise DataFormatError(path, "required column is missing", column=column)
    if not any(c in df.columns for c in DENSITY_COLUMNS):
        raise DataFormatError(path, "required column is missing (or 'breast density')", column=DENSITY_COLUMNS[0])
    df = df.rename(columns={DENSITY_COLUMNS[1]: DENSITY_COLUMNS[0]})
    for column in df.columns:
        df[column] = [_clean(v) for v in df[column].tolist()]
    for column in PATH_COLUMNS:
        df[column] = df[column].str.replace("\\", "/", regex=False).str.strip("/")
    checks = {
        "left or right breast": ("LEFT", "RIGHT"),
        "image view": ("CC", "MLO"),
        "pathology": tuple(PATHOLOGY_LABEL),
    }
    for column, allowed in checks.items():
        bad = df.index[~df[column].isin(allowed)]
        if len(bad):
            raise DataFormatError(path, f"value is not one of {list(allowed)}", row=int(bad[0]) + 1, column=column)
    for column in ("patient_id", "image file path"):
        bad = df.index[df[column] == ""]
        if len(bad):
            raise DataFormatError(path, "empty value in a required column", row=int(bad[0]) + 1, column=column)
    return df


def read_abnormalities(folder: str | Path) -> pd.DataFrame:
    """All four CSVs stacked, one row per abnormality, with ``source_file``/``type``/``official_split``."""
    folder = Path(folder)
    frames = []
    for name, (kind, split) in CSV_FILES.items():
        df = _read_csv(folder / name)
        frames.append(df.assign(source_file=name, type=kind, official_split=split))
    return pd.concat(frames, ignore_index=True)


def _birads(value: str) -> int | None:
    try:
        number = int(float(value))
    except ValueError:
        return None
    return number if 1 <= number <= 6 else None  # BI-RADS 0 ("incomplete") is left empty


def read_metadata(folder: str | Path) -> pd.DataFrame:
    """One row per full mammogram, abnormalities aggregated.

    Columns: ``image_key`` (the ImageFolder, unique per image), ``patient_id``, ``type``,
    ``official_split``, ``image_path`` (CSV relative path), ``study_uid``, ``series_uid``,
    ``laterality`` (L/R), ``view`` (CC/MLO), ``label`` (1 if any abnormality is MALIGNANT),
    ``grade`` (max BI-RADS assessment, ``None`` when all are 0), ``abnormality_ids`` (sorted ids) and
    ``roi_folders`` (``<ImageFolder>_<id>``, in id order).

    Raises:
        DataFormatError: a CSV or a required column is missing, or a value is out of vocabulary.
    """
    abn = read_abnormalities(folder)
    rows: list[dict[str, Any]] = []
    for image_path, group in abn.groupby("image file path", sort=True):
        parts = str(image_path).split("/")
        if len(parts) != 4:
            first = group.iloc[0]
            raise DataFormatError(
                Path(folder) / str(first["source_file"]),
                "expected <ImageFolder>/<StudyUID>/<SeriesUID>/<file>.dcm",
                column="image file path",
            )
        first = group.iloc[0]
        ids = sorted({int(float(v)) for v in group["abnormality id"] if v}, key=int)
        grades = [g for g in (_birads(v) for v in group["assessment"]) if g is not None]
        rows.append({
            "image_key": parts[0], "patient_id": first["patient_id"], "type": first["type"],
            "official_split": first["official_split"], "image_path": image_path, "study_uid": parts[1],
            "series_uid": parts[2], "laterality": first["left or right breast"][0], "view": first["image view"],
            "label": int(any(PATHOLOGY_LABEL[p] for p in group["pathology"])),
            "grade": max(grades) if grades else None, "abnormality_ids": ids,
            "roi_folders": [f"{parts[0]}_{i}" for i in ids],
        })  # fmt: skip
    df = pd.DataFrame(rows)
    if df["image_key"].duplicated().any():  # never seen in the genuine CSVs; guard the key choice
        dup = df.loc[df["image_key"].duplicated(), "image_key"].iloc[0]
        raise DataFormatError(Path(folder), f"ImageFolder {dup} names two different images", column="image file path")
    return df


def _hash_fraction(text: str) -> float:
    """A deterministic number in [0, 1) from a string (stable across Python runs and machines)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def split_table(meta: pd.DataFrame) -> pd.DataFrame:
    """Split table (``image_key, patient_id, split, domain``) of per-image metadata (see module doc)."""
    test_patients = set(meta.loc[meta["official_split"] == "test", "patient_id"])
    splits = []
    for patient in meta["patient_id"]:
        if patient in test_patients:
            splits.append("test")
        else:
            splits.append("val" if _hash_fraction(f"cbis_ddsm:{patient}") < VAL_FRACTION else "train")
    table = pd.DataFrame({"image_key": meta["image_key"], "patient_id": meta["patient_id"], "split": splits})
    table["domain"] = DOMAIN
    return table.sort_values("image_key").reset_index(drop=True)


def build_split_table(metadata_folder: str | Path) -> pd.DataFrame:
    """Split table from the four description CSVs (what ``data_manifests/cbis_ddsm_splits.csv`` holds)."""
    return split_table(read_metadata(metadata_folder))


def _find_metadata(root: Path) -> Path:
    first = next(iter(CSV_FILES))
    for candidate in (root, root / "CBIS-DDSM", root.parent):
        if (candidate / first).is_file():
            return candidate
    raise DataFormatError(root, f"{first} (and the other three description CSVs) not found; pass --metadata DIR")


def _find_images(root: Path) -> Path:
    """The folder holding the ``<ImageFolder>`` directories: root, root/CBIS-DDSM or <manifest-N>/CBIS-DDSM."""
    if (root / "CBIS-DDSM").is_dir():
        return root / "CBIS-DDSM"
    nested = sorted(root.glob("*/CBIS-DDSM"))
    if nested:
        return nested[0]
    return root


def _dicoms(folder: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, _, files in os.walk(folder):
        out.extend(Path(dirpath) / f for f in files if f.lower().endswith(".dcm"))
    return sorted(out)


def locate_image(base: Path, image_path: str) -> Path | None:
    """The full mammogram of a CSV path, in the legacy or the NBIA layout (``None`` if not on disk).

    NBIA folders are matched by ImageFolder + last 5 characters of the study and series UIDs.
    """
    legacy = base / image_path
    if legacy.is_file():
        return legacy
    folder, study, series, _ = image_path.split("/")
    image_dir = base / folder
    if not image_dir.is_dir():
        return None
    for study_dir in sorted(p for p in image_dir.iterdir() if p.is_dir() and p.name.endswith(f"-{study[-5:]}")):
        for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir() and p.name.endswith(f"-{series[-5:]}")):
            files = _dicoms(series_dir)
            if files:
                return files[0]
    return None


def _header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for broken files
        raise DicomReadError(path, f"cannot read DICOM header ({type(exc).__name__})") from exc


def find_roi_mask(base: Path, roi_folders: Sequence[str], full_shape: tuple[int, int] | None) -> Path | None:
    """The first ROI mask DICOM (abnormality id order), told from crops by pixel content.

    File names are swapped between mass and calc and inconsistent in the NBIA layout, so every
    candidate is classified with :func:`classify_roi_dicom`; 8-bit candidates are read first only
    to read fewer pixels.
    """
    for folder in roi_folders:
        files = _dicoms(base / folder)
        headers = [(int(getattr(_header(f), "BitsAllocated", 16)), f) for f in files]
        for _, path in sorted(headers, key=lambda item: (item[0], str(item[1]))):
            try:
                pixels = np.asarray(pydicom.dcmread(path).pixel_array)
            except Exception as exc:  # decode failures of any kind
                raise DicomReadError(path, f"cannot decode ROI pixels ({type(exc).__name__})") from exc
            if pixels.ndim == 2 and classify_roi_dicom(pixels, full_shape) == "mask":
                return path
    return None


def _load_splits(meta: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The committed split table when it covers these images with the same patients, else a fresh one."""
    fresh = split_table(meta)
    if SPLITS_FILE.is_file():
        committed = pd.read_csv(SPLITS_FILE, dtype=str, keep_default_na=False)
        merged = fresh[["image_key", "patient_id"]].merge(committed, on="image_key", how="left", suffixes=("", "_c"))
        if merged["split"].notna().all() and (merged["patient_id"] == merged["patient_id_c"]).all():
            notes.append(f"splits from the committed table {SPLITS_FILE.name}")
            return merged[list(SPLIT_COLUMNS)]
        notes.append(f"{SPLITS_FILE.name} does not cover these CSVs; splits computed from the metadata")
    return fresh


def prepare(root: Path, *, metadata: str | None = None, progress: Progress | None = None) -> PrepareResult:
    """Build the CBIS-DDSM manifest (paths relative to ``root``).

    Args:
        root: the download folder: its ``CBIS-DDSM/`` folder, its parent, or an NBIA ``manifest-N``
            parent. Legacy and NBIA layouts are both found.
        metadata: folder with the four description CSVs (default: searched in and next to ``root``).
        progress: ``progress(total=N)`` once, then ``progress()`` per image.

    Returns:
        The manifest, images not on disk in ``dropped`` (reason ``image file not on disk``), notes.
    """
    root = Path(root)
    meta_dir = Path(metadata) if metadata else _find_metadata(root)
    meta = read_metadata(meta_dir)
    notes: list[str] = []
    splits = _load_splits(meta, notes).set_index("image_key")
    base = _find_images(root)
    if progress:
        progress(total=len(meta))
    rows, dropped = [], []
    no_mask = 0
    for rec in cast(list[dict[str, Any]], meta.to_dict("records")):
        image = locate_image(base, rec["image_path"])
        if progress:
            progress()
        if image is None:
            dropped.append({"item": rec["image_key"], "reason": "image file not on disk"})
            continue
        roi = None
        if any((base / f).is_dir() for f in rec["roi_folders"]):
            header = _header(image)
            shape = (int(header.Rows), int(header.Columns)) if "Rows" in header else None
            roi = find_roi_mask(base, rec["roi_folders"], shape)
            no_mask += roi is None
        rows.append({
            "sample_id": f"cbis_ddsm-{rec['image_key']}", "patient_id": rec["patient_id"], "modality": "mammo",
            "dataset": "cbis_ddsm", "domain": splits.at[rec["image_key"], "domain"],
            "split": splits.at[rec["image_key"], "split"], "path": image.relative_to(root).as_posix(),
            "label": rec["label"], "grade": "" if rec["grade"] is None or pd.isna(rec["grade"]) else int(rec["grade"]),
            "grade_scheme": "birads", "roi_path": roi.relative_to(root).as_posix() if roi else "",
            "laterality": rec["laterality"], "view": rec["view"], "label_source": "annotated" if roi else "weak",
        })  # fmt: skip
    manifest = pd.DataFrame(rows, columns=list(COLUMNS)).astype(object).fillna("")
    if no_mask:
        notes.append(f"{no_mask} image(s) have ROI folders but no ROI mask was found by content (roi_path empty)")
    notes.append("roi_path holds the first abnormality's mask when an image has several")
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mammopath.datasets.cbis_ddsm --build-splits META_DIR OUT``: write the split table."""
    parser = argparse.ArgumentParser(prog="python -m mammopath.datasets.cbis_ddsm")
    parser.add_argument("--build-splits", nargs=2, metavar=("META_DIR", "OUT"), required=True)
    args = parser.parse_args(argv)
    meta_dir, out = args.build_splits
    table = build_split_table(meta_dir)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, lineterminator="\n")
    log.info("wrote %d rows to %s", len(table), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
