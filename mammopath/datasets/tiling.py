"""Slide rows → patch rows: Otsu tissue detection, a patch grid at a target resolution, tumour fraction.

For every pathology slide row (``x`` empty and the file a tiled TIFF), the slide is read at one low
resolution level, tissue is found by Otsu's threshold on the HSV saturation (H&E tissue is coloured,
glass and background are grey/white), a grid of non-overlapping patches of ``size`` output pixels at
``mpp`` µm/px is laid over level 0 (extent ``size * mpp / slide_mpp`` level-0 pixels), and patches
with a tissue fraction ≥ ``min_tissue`` are kept. The tumour fraction of each patch comes from the
slide's annotation polygons rasterised at the same level. Slides with no tissue, no patch or an
unreadable file are reported in ``dropped`` (pitfalls §1.10), never silently skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from mammopath.datasets import PrepareResult
from mammopath.errors import ConfigError, MammopathError

log = logging.getLogger(__name__)

#: Saturation below this is never tissue, whatever Otsu says (a blank or noise-only slide has no tissue).
MIN_SATURATION = 0.05
#: Patch label threshold on the annotated tumour fraction.
TUMOUR_FRACTION = 0.5
#: Longest side of the tissue-detection level we accept reading whole.
MAX_MASK_SIDE = 8192
INHERITED = ("patient_id", "modality", "dataset", "domain", "split", "grade_scheme", "roi_path", "slide_mpp")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]: the cut maximising the between-class variance."""
    hist, edges = np.histogram(np.asarray(values, dtype=np.float64).ravel(), bins=bins, range=(0.0, 1.0))
    total = hist.sum()
    if total == 0:
        return 1.0
    centers = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    sum0 = np.cumsum(hist * centers)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an (H, W, 3) uint8 image."""
    arr = rgb[..., :3].astype(np.float32)
    high, low = arr.max(axis=2), arr.min(axis=2)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue pixels: saturation above both Otsu's threshold and :data:`MIN_SATURATION`."""
    sat = saturation(rgb)
    if float(sat.max(initial=0.0)) < MIN_SATURATION:
        return np.zeros(sat.shape, dtype=bool)
    return sat > max(otsu_threshold(sat), MIN_SATURATION)


def is_tiled_tiff(path: Path) -> bool:
    """Whether ``path`` is a tiled TIFF (a slide), as opposed to a strip photo or another file."""
    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages) and bool(tif.pages[0].is_tiled)  # type: ignore[union-attr]
    except (tifffile.TiffFileError, OSError, ValueError):
        return False


def _polygons(path: Path) -> list[Any]:
    from mammopath.io.annotations import read_asap_xml, read_imagescope_xml

    head = path.read_text(errors="replace")[:4000]
    return read_asap_xml(path) if "<ASAP_Annotations" in head else read_imagescope_xml(path)


def _blank(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value == ""


def tile_slide(
    row: dict[str, Any], root: Path, *, size: int, mpp: float, min_tissue: float
) -> tuple[list[dict[str, Any]], str | None]:
    """Patch rows of one slide row, or ``([], reason)`` when it yields none."""
    from mammopath.io.masks import rasterize
    from mammopath.io.slide import open_slide

    slide_mpp = None if _blank(row.get("slide_mpp")) else float(row["slide_mpp"])
    try:
        slide = open_slide(root / row["path"], mpp=slide_mpp)
        level0_mpp = slide.require_mpp()
        extent = max(1, round(size * mpp / level0_mpp))
        wanted = max(1.0, extent / 8)  # at least ~8x8 mask pixels per patch
        level = slide.best_level(wanted)
        while max(slide.level_dimensions[level]) > MAX_MASK_SIDE and level + 1 < len(slide.level_dimensions):
            level += 1
        ds = slide.level_downsamples[level]
        thumb = slide.read_level((0, 0), level, slide.level_dimensions[level])
    except MammopathError as exc:
        return [], f"cannot read the slide: {exc}"
    tissue = tissue_mask(thumb)
    if not tissue.any():
        return [], "no tissue found (Otsu)"
    polygons: list[Any] = []
    if not _blank(row.get("roi_path")):
        polygons = [p for p in _polygons(root / row["roi_path"]) if len(p.points) >= 3]
    annotated = any(p.positive for p in polygons)
    tumour = rasterize(polygons, tissue.shape, downsample=ds) if annotated else None
    width, height = slide.dimensions
    if extent > min(width, height):
        return [], (
            f"the slide ({width}x{height} px at {level0_mpp:g} µm/px) is smaller than one patch "
            f"({size} px at {mpp:g} µm/px = {extent} level-0 px)"
        )
    sid = row["sample_id"]
    patches: list[dict[str, Any]] = []
    for y in range(0, height - extent + 1, extent):
        for x in range(0, width - extent + 1, extent):
            r0, r1 = int(y / ds), max(int(y / ds) + 1, math.ceil((y + extent) / ds))
            c0, c1 = int(x / ds), max(int(x / ds) + 1, math.ceil((x + extent) / ds))
            if float(tissue[r0:r1, c0:c1].mean()) < min_tissue:
                continue
            patch = {k: row.get(k, "") for k in INHERITED}
            if tumour is not None:
                fraction = float(tumour[r0:r1, c0:c1].mean())
                patch.update(label=int(fraction >= TUMOUR_FRACTION), grade="", label_source="annotated")
            else:
                patch.update(label=row.get("label", ""), grade=row.get("grade", ""), label_source="weak")
            if _blank(patch["label"]):
                patch["label"] = ""
            if _blank(patch["grade"]):
                patch["grade"] = ""
            patch.update(sample_id=f"{sid}_x{x}_y{y}", path=row["path"], x=x, y=y, size=size, mpp=mpp, parent_id=sid)
            patch["slide_mpp"] = level0_mpp  # resolved from the file when the manifest left it blank (extent, FROC)
            # the slide's own label and grade, for slide- and patient-level protocols (CAMELYON16 AUC, pN stage)
            patch.update(slide_label=row.get("label", ""), slide_grade=row.get("grade", ""))
            patches.append(patch)
    if not patches:
        return [], f"tissue found but no patch reaches min_tissue={min_tissue}"
    return patches, None


def tile_manifest(
    slides_df: pd.DataFrame,
    root: Path,
    *,
    size: int,
    mpp: float,
    min_tissue: float,
    progress: Callable[..., None] | None = None,
) -> PrepareResult:
    """Turn the slide rows of a validated manifest into patch rows.

    Args:
        slides_df: a validated manifest; only pathology rows without ``x`` whose file is a tiled TIFF are
            tiled (photos and mammograms are counted in ``notes``, not copied).
        root: the data root its paths are relative to.
        size: patch side in output pixels.
        mpp: patch resolution in µm/px.
        min_tissue: minimum tissue fraction of a kept patch (0-1).
        progress: ``progress(total=N)`` once, then ``progress()`` per slide.

    Returns:
        Patch rows (``x``/``y`` level-0, ``parent_id`` = the slide's ``sample_id``) and the slides that
        gave none in ``dropped`` with the reason.
    """
    if size <= 0 or mpp <= 0 or not 0 <= min_tissue <= 1:
        raise ValueError(f"need size > 0, mpp > 0 and 0 <= min_tissue <= 1 (got {size}, {mpp}, {min_tissue})")
    root = Path(root)
    candidates = slides_df[(slides_df["modality"] == "patho") & slides_df["x"].isna()]
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in candidates.to_dict("records") if is_tiled_tiff(root / str(r["path"]))
    ]
    notes: list[str] = []
    skipped = len(slides_df) - len(records)
    if skipped:
        notes.append(f"{skipped} row(s) are not slide rows (mammograms, photos, existing patches) and were not tiled")
    if progress:
        progress(total=len(records))
    rows: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    for record in records:
        patches, reason = tile_slide(record, root, size=size, mpp=mpp, min_tissue=min_tissue)
        if reason is not None:
            dropped.append({"item": str(record["sample_id"]), "reason": reason})
            log.warning("%s: %s", record["sample_id"], reason)
        rows += patches
        if progress:
            progress()
    if not records:
        raise ConfigError(
            f"nothing to tile: none of the {len(slides_df)} row(s) is a whole-slide row (a pathology row without x/y "
            "whose file is a tiled TIFF)"
        )
    if not rows:  # every slide dropped: say why, with the parameters that emptied it
        first = dropped[0]
        raise ConfigError(
            f"tiling kept no patch from {len(records)} slide(s) with size={size}, mpp={mpp:g}, "
            f"min_tissue={min_tissue:g} (first, {first['item']}: {first['reason']}); use a smaller size or "
            "min_tissue, or a finer mpp"
        )
    manifest = pd.DataFrame(rows)
    return PrepareResult(manifest=manifest, dropped=pd.DataFrame(dropped, columns=["item", "reason"]), notes=notes)
