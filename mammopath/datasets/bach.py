"""BACH / ICIAR 2018 builder: microscopy photos (and WSIs when present) → manifest rows.

Layout (dataset_formats.md §3): ``ICIAR2018_BACH_Challenge/Photos/<Class>/<file>.tif`` with a
headerless, CRLF ``microscopy_ground_truth.csv`` (``<file>,<class>``, 400 rows, 100 per class) whose
location is not fixed (inside ``Photos/``, at the release root, or given with ``--metadata``), and
optionally ``WSI/*.svs`` with same-stem Aperio ImageScope XMLs.

BACH has no patient ids, so every photo is its own patient (``patient_id`` = file stem). Photo rows
carry an image-level (``weak``) label; there is no labelled official test set, so the split is a
deterministic per-image 60/20/20 split stratified by class (:func:`ranked_split`), committed in
``data_manifests/bach_splits.csv``.

The split helpers :func:`ranked_split` and :func:`hash_unit` are shared by the CAMELYON builders.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.datasets import PrepareResult
from mammopath.errors import DataFormatError
from mammopath.manifest import GRADE_SCHEMES

log = logging.getLogger(__name__)

Progress = Callable[..., None]

#: The four BACH classes, in ``bach4`` grade order; also the folder names under ``Photos/``.
CLASSES: tuple[str, ...] = GRADE_SCHEMES["bach4"]
#: Classes counted as malignant (label 1).
MALIGNANT: frozenset[str] = frozenset({"InSitu", "Invasive"})
GROUND_TRUTH = "microscopy_ground_truth.csv"
SPLIT_SALT = "bach-v1"
FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
_PHOTO_SUFFIXES = {".tif", ".tiff"}


# ------------------------------------------------------------------------------------------- splits


def hash_unit(key: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (SHA-256, independent of Python's hash seed)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def ranked_split(
    keys: Iterable[str],
    strata: Mapping[str, Any] | None = None,
    *,
    salt: str,
    fractions: tuple[float, float, float] = FRACTIONS,
) -> dict[str, str]:
    """Deterministic train/val/test assignment, exactly stratified.

    Within each stratum the keys are ordered by :func:`hash_unit`; the first ``round(f_val * n)`` go
    to ``val``, the next ``round(f_test * n)`` to ``test`` and the rest to ``train``. A stratum of two
    or more keys always gets a ``val`` key and one of three or more a ``test`` key, so tiny releases
    still have the splits model selection needs. The same keys always give the same assignment.
    """
    groups: dict[Any, list[str]] = {}
    for key in keys:
        groups.setdefault(strata[key] if strata is not None else None, []).append(key)
    out: dict[str, str] = {}
    for members in groups.values():
        ordered = sorted(members, key=lambda k: (hash_unit(k, salt), k))
        n = len(ordered)
        n_val = max(1, round(fractions[1] * n)) if n >= 2 else 0
        n_test = max(1, round(fractions[2] * n)) if n >= 3 else round(fractions[2] * n)
        for i, key in enumerate(ordered):
            out[key] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


# --------------------------------------------------------------------------------------- metadata


def find_ground_truth(root: Path, metadata: str | Path | None = None) -> Path:
    """Locate ``microscopy_ground_truth.csv`` (``--metadata`` dir or file, ``Photos/``, the root, below)."""
    candidates: list[Path] = []
    if metadata is not None:
        meta = Path(metadata)
        candidates += [meta] if meta.is_file() else [meta / GROUND_TRUTH]
    candidates += [root / "Photos" / GROUND_TRUTH, root / GROUND_TRUTH]
    for path in candidates:
        if path.is_file():
            return path
    found = sorted(root.rglob(GROUND_TRUTH))
    if found:
        return found[0]
    raise DataFormatError(root, f"{GROUND_TRUTH} not found in Photos/, the root or below; pass --metadata DIR")


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """Read the headerless two-column ``<file>,<class>`` CSV (CRLF or LF).

    Returns:
        Columns ``file`` and ``class`` (stripped).

    Raises:
        DataFormatError: a row without two fields, an empty file name, a class outside
            :data:`CLASSES` (naming the 1-based row) or a repeated file name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, f"cannot read the file ({exc})") from None
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            raise DataFormatError(path, f"expected 2 fields '<file>,<class>', found {len(fields)}", row=number)
        name, klass = fields
        if number == 1 and klass not in CLASSES and name.lower() in ("file", "name", "image", "filename"):
            continue  # tolerate a header added by a redistributor
        if not name:
            raise DataFormatError(path, "empty file name", row=number, column="file")
        if klass not in CLASSES:
            raise DataFormatError(path, f"class {klass!r} is not one of {list(CLASSES)}", row=number, column="class")
        if name in seen:
            raise DataFormatError(path, f"file {name!r} is listed twice (first in row {seen[name]})", row=number)
        seen[name] = number
        rows.append((name, klass))
    if not rows:
        raise DataFormatError(path, "no rows")
    return pd.DataFrame(rows, columns=["file", "class"])


def split_table(ground_truth: pd.DataFrame) -> pd.DataFrame:
    """The photo split table (``file``, ``class``, ``split``) built from the ground-truth rows."""
    stems = {Path(f).stem: f for f in ground_truth["file"]}
    classes = dict(zip((Path(f).stem for f in ground_truth["file"]), ground_truth["class"], strict=True))
    splits = ranked_split(stems, classes, salt=SPLIT_SALT)
    return pd.DataFrame(
        {"file": list(ground_truth["file"]), "class": list(ground_truth["class"]),
         "split": [splits[Path(f).stem] for f in ground_truth["file"]]}
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- builder


def _wsi_rows(root: Path, notes: list[str], dropped: list[dict[str, str]]) -> list[dict[str, Any]]:
    from mammopath.io.annotations import read_imagescope_xml

    wsi_dir = root / "WSI"
    slides = sorted(p for p in wsi_dir.glob("*") if p.suffix.lower() == ".svs") if wsi_dir.is_dir() else []
    if not slides:
        return []
    splits = ranked_split([p.stem for p in slides], salt=SPLIT_SALT + "-wsi")
    rows: list[dict[str, Any]] = []
    for slide in slides:
        xml = slide.with_suffix(".xml")
        if not xml.is_file():
            dropped.append({"item": slide.relative_to(root).as_posix(), "reason": "WSI without its ImageScope XML"})
            continue
        polygons = read_imagescope_xml(xml)
        grade = max((CLASSES.index(p.label) for p in polygons), default=0)
        rows.append({
            "sample_id": f"bach_wsi_{slide.stem}", "patient_id": f"bach_wsi_{slide.stem}", "modality": "patho",
            "dataset": "bach", "domain": "bach", "split": splits[slide.stem],
            "path": slide.relative_to(root).as_posix(), "label": int(CLASSES[grade] in MALIGNANT), "grade": grade,
            "grade_scheme": "bach4", "roi_path": xml.relative_to(root).as_posix(), "label_source": "annotated",
        })  # fmt: skip
    notes.append(f"{len(rows)} WSI slide rows (label from the ImageScope regions); tile them with `mammopath tile`")
    return rows


def prepare(root: str | Path, *, metadata: str | None = None, progress: Progress | None = None) -> PrepareResult:
    """Build the BACH manifest from a release folder.

    Args:
        root: ``ICIAR2018_BACH_Challenge`` (or a folder holding it).
        metadata: folder (or file) holding ``microscopy_ground_truth.csv`` when it is not in the release.
        progress: ``progress(total=N)`` once, then ``progress()`` per photo.

    Returns:
        Photo rows (``x`` empty: read whole with ``read_microscopy``), WSI slide rows when ``WSI/`` is
        present; photos listed but missing are dropped with their reason; extra photo files are
        reported in ``notes``.
    """
    root = Path(root)
    if not (root / "Photos").is_dir() and (root / "ICIAR2018_BACH_Challenge" / "Photos").is_dir():
        raise DataFormatError(root, "the release is in ICIAR2018_BACH_Challenge/; pass that folder as --root")
    gt_path = find_ground_truth(root, metadata)
    gt = read_ground_truth(gt_path)
    table = split_table(gt)
    if progress:
        progress(total=len(table))
    rows: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    notes: list[str] = []
    listed: set[Path] = set()
    for file, klass, split in table.itertuples(index=False):
        rel = Path("Photos") / klass / file
        listed.add(rel)
        if progress:
            progress()
        if not (root / rel).is_file():
            dropped.append({"item": rel.as_posix(), "reason": f"listed in {GROUND_TRUTH} but file not found"})
            continue
        grade = CLASSES.index(klass)
        stem = Path(file).stem
        rows.append({
            "sample_id": f"bach_{stem}", "patient_id": f"bach_{stem}", "modality": "patho", "dataset": "bach",
            "domain": "bach", "split": split, "path": rel.as_posix(), "label": int(klass in MALIGNANT),
            "grade": grade, "grade_scheme": "bach4", "label_source": "weak",
        })  # fmt: skip
    photos = root / "Photos"
    extra = sorted(
        p.relative_to(root).as_posix()
        for p in photos.rglob("*")
        if p.is_file() and p.suffix.lower() in _PHOTO_SUFFIXES and p.relative_to(root) not in listed
    ) if photos.is_dir() else []  # fmt: skip
    if extra:
        notes.append(
            f"{len(extra)} photo file(s) not listed in {GROUND_TRUTH} were ignored (e.g. {', '.join(extra[:3])})"
        )
    notes.append("BACH has no patient ids: every photo is its own patient (per-image split, stratified by class)")
    rows += _wsi_rows(root, notes, dropped)
    manifest = pd.DataFrame(rows)
    log.info("bach: %d rows, %d dropped", len(manifest), len(dropped))
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)
