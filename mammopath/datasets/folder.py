"""`mammopath prepare folder --root DIR --domain SITE`: a manifest from your own folder of DICOMs and slides.

Every file under ``root`` is looked at once:

- a DICOM (``DICM`` magic, any extension) whose ``Modality`` is ``MG`` (or absent) is a mammogram row:
  laterality from ``ImageLaterality``/``Laterality``, view from ``ViewPosition``; other DICOM modalities and ROI
  masks / crops (``SeriesDescription`` with roi, mask or crop, or a file name ending ``_roi``/``_mask``) are
  listed in ``dropped``;
- a tiled (pyramidal) TIFF, ``.svs`` or ``.ndpi`` is a whole-slide row (``x`` empty: run ``mammopath tile``
  to make its patch rows);
- anything else is listed in ``dropped`` with the reason (a PNG/JPEG mammogram is not read: export DICOM).

Identifiers never appear in clear: ``patient_id`` is ``SITE-`` + the first 16 hex digits of
``sha256(salt + PatientID)`` (a slide, which carries no patient header, uses the folder it lies in, or its
file name when it lies in ``root`` itself); ``sample_id`` hashes the ``SOPInstanceUID`` (or the relative path).
With a secret ``salt`` (``--salt`` or ``MAMMOPATH_ID_SALT``) the hashes cannot be re-derived by hashing guessed
ids; the same salt gives the same ids in every run, so rows of one patient from two folders still pair.
No header value is ever printed or logged. ``split`` and ``label`` are left empty: the rows are a predict
set until you add them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.datasets import PrepareResult
from mammopath.errors import ConfigError

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SALT_ENV = "MAMMOPATH_ID_SALT"
_VIEWS = {"ML": "MLO", "MLO": "MLO", "CC": "CC", "XCCL": "XCCL", "LM": "LM", "FB": "FB"}


def pseudonym(value: str, salt: str, n: int = 16) -> str:
    """The first ``n`` hex digits of ``sha256(salt + value)``: stable, not reversible without the salt."""
    return hashlib.sha256(f"{salt}{value}".encode()).hexdigest()[:n]


def is_dicom(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _mammogram(path: Path, relative: str, domain: str, salt: str) -> tuple[dict[str, Any] | None, str | None]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds; the reason names the kind only, never a value
        return None, f"unreadable DICOM header ({type(exc).__name__})"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in ("", "MG"):
        return None, f"DICOM modality {modality!r} is not a mammogram (MG)"
    series = str(ds.get("SeriesDescription", "") or "").lower()
    stem = path.stem.lower()
    if any(w in series for w in ("roi", "mask", "crop")) or stem.endswith(("_roi", "_mask", "-roi", "-mask")):
        return None, "an ROI mask or crop, not a full mammogram (give it as the image's roi_path)"
    patient = str(ds.get("PatientID", "") or "").strip()
    source = patient or str(Path(relative).parent)
    laterality = next(
        (v for v in (str(ds.get(t, "") or "").strip().upper() for t in ("ImageLaterality", "Laterality")) if v),
        "",
    )
    view = _VIEWS.get(str(ds.get("ViewPosition", "") or "").strip().upper(), "")
    uid = str(ds.get("SOPInstanceUID", "") or "") or relative
    row = {
        "sample_id": f"{domain}-{pseudonym(uid, salt, 12)}",
        "patient_id": f"{domain}-{pseudonym(source, salt)}",
        "modality": "mammo",
        "laterality": laterality if laterality in ("L", "R") else "",
        "view": view,
    }
    return row, None


def prepare(
    root: str | Path,
    *,
    metadata: str | None = None,
    progress: Callable[..., None] | None = None,
    domain: str | None = None,
    salt: str | None = None,
) -> PrepareResult:
    """Build a manifest from every DICOM mammogram and whole-slide file under ``root`` (see the module docstring).

    Args:
        root: the folder (searched recursively; paths in the manifest are relative to it).
        metadata: unused (no metadata file: the headers are the metadata).
        progress: ``progress(total=N)`` once, then ``progress()`` per file.
        domain: the site / scanner of every row (``domain`` and ``dataset`` columns, and the id prefix).
        salt: secret prefix of the hashed ids (default: ``$MAMMOPATH_ID_SALT``, else none).

    Raises:
        ConfigError: without ``domain``, or when ``root`` is not a folder.
    """
    from mammopath.datasets.tiling import is_tiled_tiff

    root = Path(root)
    if not domain:
        raise ConfigError("prepare folder needs --domain SITE: the hospital / scanner every file of --root comes from")
    if not root.is_dir():
        raise ConfigError(f"prepare folder: --root {root} is not a folder")
    salt = salt if salt is not None else os.environ.get(SALT_ENV, "")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if progress:
        progress(total=len(files))
    rows: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        row: dict[str, Any] | None = None
        reason: str | None = None
        if is_dicom(path):
            row, reason = _mammogram(path, relative, domain, salt)
        elif suffix in SLIDE_SUFFIXES and is_tiled_tiff(path):
            owner = str(Path(relative).parent) if "/" in relative else path.stem
            row = {
                "sample_id": f"{domain}-{pseudonym(relative, salt, 12)}",
                "patient_id": f"{domain}-{pseudonym(owner, salt)}",
                "modality": "patho",
            }
        elif suffix in PHOTO_SUFFIXES:
            reason = (
                "not DICOM: a PNG/JPEG mammogram loses its intensity curve; export DICOM (or list a photo yourself)"
            )
        else:
            reason = "neither a DICOM nor a whole-slide TIFF"
        if row is not None:
            rows.append({**row, "dataset": domain, "domain": domain, "split": "", "path": relative})
        else:
            dropped.append({"item": relative, "reason": str(reason)})
        if progress:
            progress()
    notes = [
        f"{sum(r['modality'] == 'mammo' for r in rows)} mammogram(s), {sum(r['modality'] == 'patho' for r in rows)} "
        f"slide(s); split and label empty (a predict set): add them by patient to train"
    ]
    if not salt:
        notes.append(f"ids hashed without a secret salt: set --salt or {SALT_ENV} to make them unguessable")
    if any(r["modality"] == "patho" for r in rows):
        notes.append("slides are whole-slide rows: run `mammopath tile` to make their patch rows")
    columns = ["sample_id", "patient_id", "modality", "dataset", "domain", "split", "path", "laterality", "view"]
    manifest = pd.DataFrame(rows, columns=columns).fillna("")
    duplicated = manifest["sample_id"].duplicated(keep="first")
    if duplicated.any():  # the same SOPInstanceUID twice (a copy of a file): keep the first
        for item in manifest.loc[duplicated, "path"]:
            dropped.append({"item": item, "reason": "duplicate SOPInstanceUID (a copy of another file)"})
        manifest = manifest[~duplicated].reset_index(drop=True)
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)
