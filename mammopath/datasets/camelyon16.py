"""CAMELYON16 builder: whole-slide TIFFs → slide rows (tile them with ``mammopath tile``).

Layouts accepted (dataset_formats.md §4.1): the official ``training/normal``, ``training/tumor``,
``training/lesion_annotations/`` (the zip extracted), ``testing/images``, ``testing/reference.csv``; or
the flat AWS copy ``images/*.tif``. Slide names are matched case-insensitively (``Tumor_001`` and
``tumor_001`` are the same slide). ``reference.csv`` is headerless with four columns
(``Test_001,Tumor,IDC,Macro``); a header is detected by row 0, column 1 not being Tumor/Normal.

Quirks handled: ``test_049`` is a duplicate and is dropped; ``test_114`` has non-exhaustive
annotations and is kept but listed in :data:`FROC_EXCLUDED` (excluded from lesion-level FROC);
``normal_086`` was renamed ``tumor_111`` and is dropped if a copy still has it.

The centre (Radboudumc or UMC Utrecht) is not in the released metadata, so every row has domain
``camelyon16``. One slide per patient (``patient_id`` = slide id). The official test set stays
``test``; about 15% of training slides (by :func:`~mammopath.datasets.bach.hash_unit`) form ``val``.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.datasets import PrepareResult
from mammopath.datasets.bach import Progress, hash_unit
from mammopath.errors import DataFormatError

log = logging.getLogger(__name__)

#: Slides removed by the organisers: slide id → reason.
REMOVED: dict[str, str] = {
    "test_049": "test_049 is a duplicate slide, removed by the organisers from all tasks",
    "normal_086": "normal_086 was misclassified and renamed tumor_111 by the organisers",
}
#: Test slides kept for slide-level tasks but excluded from lesion-level FROC (non-exhaustive annotation).
FROC_EXCLUDED: frozenset[str] = frozenset({"test_114"})
#: Training slide names of the official release (normal_001-160 minus normal_086, tumor_001-111).
TRAINING_SLIDES: tuple[str, ...] = tuple(
    [f"normal_{i:03d}" for i in range(1, 161) if i != 86] + [f"tumor_{i:03d}" for i in range(1, 112)]
)
VAL_FRACTION = 0.15
SPLIT_SALT = "camelyon16-v1"
GRADE_FROM_METASTASIS = {"macro": 3, "micro": 2, "none": 0}  # c17_node indices
_NAME = re.compile(r"^(normal|tumor|test)_0*(\d+)$", re.IGNORECASE)


def slide_id(name: str) -> str | None:
    """Canonical lowercase id (``tumor_001``) of a slide name or file stem, or ``None`` if not a slide."""
    match = _NAME.match(Path(name).stem if name.lower().endswith((".tif", ".tiff")) else name)
    if match is None:
        return None
    return f"{match.group(1).lower()}_{int(match.group(2)):03d}"


def read_reference(path: str | Path) -> pd.DataFrame:
    """Read ``testing/reference.csv`` / ``GT.csv``: headerless 4 columns, or the same with a header.

    Returns:
        Columns ``slide`` (canonical lowercase id), ``name`` (as written), ``label`` (``Tumor``/
        ``Normal``), ``histotype``, ``metastasis`` (``Macro``/``Micro``/``None``/empty).

    Raises:
        DataFormatError: fewer than 2 columns, a bad slide name or label (naming the row).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = [[field.strip() for field in line] for line in csv.reader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(path, f"not a readable CSV ({exc})") from None
    table = [line for line in table if any(line)]
    width = max((len(line) for line in table), default=0)
    if width < 2:
        raise DataFormatError(path, f"expected at least 2 columns '<slide>,<Tumor|Normal>', found {width}")
    start = 0 if len(table[0]) > 1 and table[0][1] in ("Tumor", "Normal") else 1  # header detection (§4.3)
    rows: list[dict[str, str]] = []
    for i in range(start, len(table)):
        line = table[i] + [""] * (4 - len(table[i]))
        name, label = line[0], line[1]
        number = i + 1
        sid = slide_id(name)
        if sid is None or not sid.startswith("test_"):
            raise DataFormatError(path, f"{name!r} is not a test slide name (Test_001...)", row=number, column="slide")
        if label.capitalize() not in ("Tumor", "Normal"):
            raise DataFormatError(path, f"label {label!r} is not Tumor or Normal", row=number, column="label")
        rows.append(
            {"slide": sid, "name": name, "label": label.capitalize(), "histotype": line[2], "metastasis": line[3]}
        )
    return pd.DataFrame(rows, columns=["slide", "name", "label", "histotype", "metastasis"])


def training_split(slide: str, group: list[str]) -> str:
    """``val`` for ~15% of training slides (stable hash), else ``train``.

    When no slide of ``group`` (the training slides of one class present) falls under the threshold
    and the group has two or more slides, its lowest-hash slide goes to ``val`` so tiny releases still
    have a validation set. On the official 270 training slides this fallback never triggers.
    """
    if hash_unit(slide, SPLIT_SALT) < VAL_FRACTION:
        return "val"
    fallback = len(group) >= 2 and not any(hash_unit(s, SPLIT_SALT) < VAL_FRACTION for s in group)
    return "val" if fallback and slide == min(group, key=lambda s: hash_unit(s, SPLIT_SALT)) else "train"


def split_table(reference: pd.DataFrame, training: tuple[str, ...] = TRAINING_SLIDES) -> pd.DataFrame:
    """``slide``/``split`` table: training slides by :func:`training_split`, reference test slides ``test``."""
    rows = []
    for kind in ("normal", "tumor"):
        group = [s for s in training if s.startswith(kind)]
        rows += [(s, training_split(s, group)) for s in group]
    rows += [(s, "test") for s in reference["slide"] if s not in REMOVED]
    return pd.DataFrame(rows, columns=["slide", "split"])


def _find_reference(root: Path, metadata: str | None) -> Path | None:
    candidates: list[Path] = []
    if metadata is not None:
        meta = Path(metadata)
        candidates += [meta] if meta.is_file() else [meta / "reference.csv", meta / "GT.csv"]
    candidates += [root / "testing" / "reference.csv", root / "reference.csv"]
    return next((p for p in candidates if p.is_file()), None)


def prepare(root: str | Path, *, metadata: str | None = None, progress: Progress | None = None) -> PrepareResult:
    """Build the CAMELYON16 slide manifest.

    Args:
        root: the ``CAMELYON16`` folder (official or flat AWS layout).
        metadata: folder holding ``reference.csv`` (or ``GT.csv``), or the file itself.
        progress: ``progress(total=N)`` once, then ``progress()`` per slide.

    Returns:
        One row per slide; removed slides, unlabelled test slides and labelled-but-missing files in
        ``dropped``; FROC exclusions and layout remarks in ``notes``.
    """
    root = Path(root)
    files: dict[str, Path] = {}
    notes: list[str] = []
    dropped: list[dict[str, str]] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
            continue
        sid = slide_id(path.stem)
        if sid is None:
            continue  # masks (Tumor_001_Mask.tif), evaluation files
        if sid in files:
            dropped.append({"item": path.relative_to(root).as_posix(), "reason": f"second copy of {sid}"})
            continue
        files[sid] = path
    if not files:
        raise DataFormatError(root, "no CAMELYON16 slides (normal_*/tumor_*/test_*.tif) found under the root")
    xmls = {sid: p for p in sorted(root.rglob("*.xml")) if (sid := slide_id(p.stem)) is not None}
    if not xmls and any(root.rglob("lesion_annotations.zip")):
        notes.append("lesion_annotations.zip is not extracted: slides have no roi_path (extract it next to the zip)")
    ref_path = _find_reference(root, metadata)
    reference = read_reference(ref_path) if ref_path is not None else pd.DataFrame(columns=["slide", "label"])
    ref: dict[str, dict[str, str]] = {
        str(r["slide"]): {str(k): str(v) for k, v in r.items()} for r in reference.to_dict("records")
    }
    if progress:
        progress(total=len(files))
    groups = {kind: sorted(s for s in files if s.startswith(kind)) for kind in ("normal", "tumor")}
    rows: list[dict[str, Any]] = []
    for sid, path in sorted(files.items()):
        if progress:
            progress()
        rel = path.relative_to(root).as_posix()
        if sid in REMOVED:
            dropped.append({"item": rel, "reason": REMOVED[sid]})
            continue
        kind = sid.split("_")[0]
        grade: int | None = None
        if kind == "test":
            if sid not in ref:
                dropped.append({"item": rel, "reason": "test slide without a label in reference.csv"})
                continue
            entry = ref[sid]
            label, split = int(entry["label"] == "Tumor"), "test"
            grade = GRADE_FROM_METASTASIS.get(str(entry["metastasis"]).lower())
        else:
            label, split = int(kind == "tumor"), training_split(sid, groups[kind])
        rows.append({
            "sample_id": f"camelyon16_{sid}", "patient_id": f"camelyon16_{sid}", "modality": "patho",
            "dataset": "camelyon16", "domain": "camelyon16", "split": split, "path": rel, "label": label,
            "grade": grade if grade is not None else "", "grade_scheme": "c17_node" if grade is not None else "",
            "roi_path": xmls[sid].relative_to(root).as_posix() if sid in xmls else "", "label_source": "weak",
        })  # fmt: skip
    for sid in sorted(set(ref) - set(files)):
        item = f"testing/images/{sid}.tif"
        dropped.append({"item": item, "reason": REMOVED.get(sid, "listed in reference.csv but file not found")})
    kept = {str(r["sample_id"]).removeprefix("camelyon16_") for r in rows}
    for sid in sorted(FROC_EXCLUDED & kept):
        notes.append(f"{sid} is kept but excluded from lesion-level FROC (non-exhaustive annotation; FROC_EXCLUDED)")
    if any(s.startswith("test_") for s in files) and ref_path is None:
        notes.append("no reference.csv found: test slides were dropped; pass --metadata DIR holding it")
    notes.append("centre (Radboudumc / UMC Utrecht) is not in the metadata: domain is 'camelyon16' for all slides")
    manifest = pd.DataFrame(rows)
    log.info("camelyon16: %d slides, %d dropped", len(manifest), len(dropped))
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)
