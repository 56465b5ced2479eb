"""CAMELYON17 builder: lymph-node slides of 5 centres → slide rows with a per-centre domain.

Layout (dataset_formats.md §5): ``training/center_N/patient_XXX_node_Y.tif`` (or extracted patient
folders ``patient_XXX/patient_XXX_node_Y.tif``; both accepted anywhere under the root),
``lesion_annotations/patient_XXX_node_Y.xml`` (the zip extracted) and ``stage_labels.csv`` with header
``patient,stage`` mixing ``patient_XXX.zip,<pN stage>`` rows and ``patient_XXX_node_Y.tif,<label>``
rows (labels negative/itc/micro/macro).

Centre = patient // 20 (training ids 0-99), domain ``camelyon17/center_N``. Slide label: micro or
macro → 1; negative and itc → 0 (isolated tumour cells make the node pN0(i+), i.e. node-negative in
the TNM sense); ``grade`` keeps the four levels (``c17_node``). The main protocol is
leave-one-centre-out; within each centre patients are split 60/20/20 (12/4/4), committed in
``data_manifests/camelyon17_splits.csv``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.datasets import PrepareResult
from mammopath.datasets.bach import Progress, ranked_split
from mammopath.errors import DataFormatError
from mammopath.manifest import GRADE_SCHEMES

log = logging.getLogger(__name__)

SLIDE_LABELS: tuple[str, ...] = GRADE_SCHEMES["c17_node"]  # negative < itc < micro < macro
STAGES: tuple[str, ...] = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
POSITIVE: frozenset[str] = frozenset({"micro", "macro"})
PATIENTS_PER_CENTER = 20
SPLIT_SALT = "camelyon17-v1"
_SLIDE = re.compile(r"^patient_(\d{3})_node_(\d+)\.tif$", re.IGNORECASE)
_PATIENT = re.compile(r"^patient_(\d{3})\.zip$", re.IGNORECASE)


def pn_stage(slide_labels: Sequence[str]) -> str:
    """The patient's pN stage from its slide labels (rule of dataset_formats.md §5.2).

    Any macro → ``pN2`` if micro + macro slides ≥ 4 else ``pN1``; else any micro → ``pN1mi``; else any
    itc → ``pN0(i+)``; else ``pN0``.
    """
    labels = [s.strip().lower() for s in slide_labels]
    unknown = sorted(set(labels) - set(SLIDE_LABELS))
    if unknown:
        raise ValueError(f"unknown slide label(s) {unknown}; expected {list(SLIDE_LABELS)}")
    positives = sum(label in POSITIVE for label in labels)
    if "macro" in labels:
        return "pN2" if positives >= 4 else "pN1"
    if "micro" in labels:
        return "pN1mi"
    if "itc" in labels:
        return "pN0(i+)"
    return "pN0"


def center_of(patient: int) -> int:
    """Centre index of a training patient id (20-patient blocks, GigaDB folder names)."""
    return patient // PATIENTS_PER_CENTER


def read_stage_labels(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``stage_labels.csv``.

    Returns:
        ``(patients, slides)``: patients with ``patient`` (``patient_XXX``), ``number``, ``stage``;
        slides with ``slide`` (stem), ``patient``, ``node``, ``stage`` (slide label, lowercase).

    Raises:
        DataFormatError: a missing ``patient``/``stage`` column, an unknown name pattern, label or
            stage (naming the 1-based data row).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, f"not a readable CSV ({exc})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    for column in ("patient", "stage"):
        if column not in df.columns:
            raise DataFormatError(path, f"required column '{column}' is missing (header must be 'patient,stage')")
    patients: list[dict[str, Any]] = []
    slides: list[dict[str, Any]] = []
    for i, (name, stage) in enumerate(zip(df["patient"], df["stage"], strict=True), start=1):
        name, stage = name.strip(), stage.strip()
        if match := _PATIENT.match(name):
            canonical = {s.lower(): s for s in STAGES}.get(stage.lower())
            if canonical is None:
                raise DataFormatError(path, f"stage {stage!r} is not one of {list(STAGES)}", row=i, column="stage")
            patients.append({"patient": f"patient_{match.group(1)}", "number": int(match.group(1)), "stage": canonical})
        elif match := _SLIDE.match(name):
            label = stage.lower()
            if label not in SLIDE_LABELS:
                raise DataFormatError(
                    path, f"slide label {stage!r} is not one of {list(SLIDE_LABELS)}", row=i, column="stage"
                )
            slides.append({
                "slide": Path(name).stem.lower(), "patient": f"patient_{match.group(1)}",
                "node": int(match.group(2)), "stage": label,
            })  # fmt: skip
        else:
            raise DataFormatError(
                path, f"{name!r} is neither 'patient_XXX.zip' nor 'patient_XXX_node_Y.tif'", row=i, column="patient"
            )
    return (
        pd.DataFrame(patients, columns=["patient", "number", "stage"]),
        pd.DataFrame(slides, columns=["slide", "patient", "node", "stage"]),
    )


def split_table(patients: pd.DataFrame, slides: pd.DataFrame) -> pd.DataFrame:
    """``patient``/``center``/``split``: patient-level 60/20/20 within each centre (:func:`ranked_split`)."""
    numbers = {p: int(p.split("_")[1]) for p in sorted(set(slides["patient"]) | set(patients["patient"]))}
    strata = {p: center_of(n) for p, n in numbers.items()}
    splits = ranked_split(numbers, strata, salt=SPLIT_SALT)
    return pd.DataFrame(
        [(p, center_of(n), splits[p]) for p, n in numbers.items()], columns=["patient", "center", "split"]
    )


def _find_labels(root: Path, metadata: str | None) -> Path:
    candidates: list[Path] = []
    if metadata is not None:
        meta = Path(metadata)
        candidates += [meta] if meta.is_file() else [meta / "stage_labels.csv"]
    candidates += [root / "training" / "stage_labels.csv", root / "stage_labels.csv"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        found = next(iter(sorted(root.rglob("stage_labels.csv"))), None)
    if found is None:
        raise DataFormatError(root, "stage_labels.csv not found (training/, the root or below); pass --metadata DIR")
    return found


def prepare(root: str | Path, *, metadata: str | None = None, progress: Progress | None = None) -> PrepareResult:
    """Build the CAMELYON17 slide manifest.

    Args:
        root: the ``CAMELYON17`` folder.
        metadata: folder holding ``stage_labels.csv``, or the file itself.
        progress: ``progress(total=N)`` once, then ``progress()`` per labelled slide.

    Returns:
        One row per labelled slide found; labelled slides without a file in ``dropped``; patients whose
        stage contradicts the pN rule, unlabelled slides and unextracted zips in ``notes``.
    """
    root = Path(root)
    labels_path = _find_labels(root, metadata)
    patients, slides = read_stage_labels(labels_path)
    notes: list[str] = []
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if _SLIDE.match(path.name) and path.is_file():
            files.setdefault(path.stem.lower(), path)
    xmls = {p.stem.lower(): p for p in sorted(root.rglob("*.xml")) if _SLIDE.match(p.stem + ".tif")}
    zips = [p for p in root.rglob("patient_*.zip") if p.stem.lower() not in {s[:11] for s in files}]
    if zips:
        notes.append(f"{len(zips)} patient zip(s) are not extracted; extract them next to the zips")
    stages = dict(zip(patients["patient"], patients["stage"], strict=True))
    for patient, group in slides.groupby("patient"):
        rule = pn_stage(list(group["stage"]))
        if patient in stages and stages[patient] != rule:
            notes.append(f"{patient}: stage {stages[patient]} differs from the pN rule on its slides ({rule})")
    table = split_table(patients, slides)
    split_of = dict(zip(table["patient"], table["split"], strict=True))
    if progress:
        progress(total=len(slides))
    rows: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    for slide, patient, _node, label in slides.itertuples(index=False):
        if progress:
            progress()
        center = center_of(int(patient.split("_")[1]))
        if slide not in files:
            item = f"training/center_{center}/{slide}.tif"
            dropped.append({"item": item, "reason": "listed in stage_labels.csv but file not found"})
            continue
        rows.append({
            "sample_id": f"camelyon17_{slide}", "patient_id": patient, "modality": "patho",
            "dataset": "camelyon17", "domain": f"camelyon17/center_{center}", "split": split_of[patient],
            "path": files[slide].relative_to(root).as_posix(), "label": int(label in POSITIVE),
            "grade": SLIDE_LABELS.index(label), "grade_scheme": "c17_node",
            "roi_path": xmls[slide].relative_to(root).as_posix() if slide in xmls else "", "label_source": "weak",
        })  # fmt: skip
    unlabelled = sorted(set(files) - set(slides["slide"]))
    if unlabelled:
        notes.append(f"{len(unlabelled)} slide file(s) have no label in stage_labels.csv (e.g. test patients); ignored")
    notes.append("slide label: micro/macro -> 1, negative/itc -> 0 (itc is pN0(i+), node-negative); grade keeps all 4")
    manifest = pd.DataFrame(rows)
    log.info("camelyon17: %d slides, %d dropped", len(manifest), len(dropped))
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)
