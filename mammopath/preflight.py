"""Pre-flight decode: open and decode every file of a manifest before training, and report every bad one at once.

``mammopath validate-manifest --decode`` and ``data.preflight: true`` (at the datamodule's setup) run
:func:`decode_check`: each distinct file is read once, in parallel threads, with the same readers training uses:

- mammograms: the full :func:`~mammopath.io.dicom.read_mammogram` decode (and the ROI mask, DICOM or XML);
- slides (rows with patch coordinates, or multi-level TIFFs): opened, MPP resolved when a row asks for a
  resolution, and the coarsest level decoded (a corrupt tile of a finer level shows up only when it is read:
  ``on_bad_sample: skip`` covers those);
- microscopy photos: the full :func:`~mammopath.io.microscopy.read_microscopy` decode;
- annotation XML: parsed.

A run that would fail on file 1,900 of 1,900 then fails in the first minute, listing every bad file with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.errors import MammopathError, ManifestError
from mammopath.io.location import Location, as_location, join

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif")


def _annotation(path: str) -> None:
    import os

    from mammopath.datasets.manifest_dataset import _polygons

    _polygons(path, os.getpid())


def _check_slide(path: Location, mpp: float | None, needs_mpp: bool) -> None:
    from mammopath.io.slide import open_slide

    slide = open_slide(path, mpp=mpp)
    if needs_mpp:
        slide.require_mpp()
    slide.thumbnail(max_size=1024)
    slide.close()


def _is_pyramid(path: Location) -> bool:
    if str(path).lower().endswith(SLIDE_SUFFIXES):
        return True
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0] if tif.series else None
            return series is not None and len(series.levels) > 1
    except Exception:
        return False


def _check_file(kind: str, path: Location, rows: pd.DataFrame) -> None:
    """Decode one file as the dataset would; raises the reader's error."""
    if kind == "mammo":
        from mammopath.io.dicom import read_mammogram

        read_mammogram(Path(path))
    elif kind == "roi":
        if str(path).lower().endswith(".xml"):
            _annotation(str(path))
        else:
            from mammopath.io.dicom import read_roi_mask

            read_roi_mask(Path(path))
    elif kind == "patho":
        has_xy = "x" in rows and rows["x"].notna().any() and (rows["x"].astype(str) != "").any()
        if has_xy or _is_pyramid(path):
            slide_mpp = pd.to_numeric(rows.get("slide_mpp", pd.Series(dtype=float)), errors="coerce").dropna()
            target = pd.to_numeric(rows.get("mpp", pd.Series(dtype=float)), errors="coerce").dropna()
            _check_slide(path, float(slide_mpp.iloc[0]) if len(slide_mpp) else None, needs_mpp=len(target) > 0)
        else:
            from mammopath.io.microscopy import read_microscopy

            read_microscopy(Path(path))


def _jobs(manifest: pd.DataFrame, root: Location | None) -> list[tuple[str, Location, str, pd.DataFrame]]:
    """(kind, full path, manifest path, rows) per distinct file."""
    jobs: list[tuple[str, Location, str, pd.DataFrame]] = []
    roots = manifest["_root"] if "_root" in manifest else pd.Series([str(root)] * len(manifest), index=manifest.index)
    frame = manifest.assign(_file_root=roots.astype(str))
    for (file_root, modality, rel), rows in frame.groupby(["_file_root", "modality", "path"], sort=False):
        jobs.append((str(modality), join(as_location(file_root), str(rel)), str(rel), rows))
    if "roi_path" in frame:
        with_roi = frame[frame["roi_path"].fillna("").astype(str) != ""]
        for (file_root, rel), rows in with_roi.groupby(["_file_root", "roi_path"], sort=False):
            jobs.append(("roi", join(as_location(file_root), str(rel)), str(rel), rows))
    return jobs


def decode_check(
    manifest: pd.DataFrame,
    root: str | Path | None,
    *,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Decode every distinct file of ``manifest``; returns one record per bad file (empty when all decode).

    Args:
        manifest: validated rows (with ``_root`` per row for composed manifests; else ``root`` is used).
        root: the data root of a plain manifest.
        workers: threads decoding in parallel.
        progress: ``progress(done, total)`` after each file (instead of the rich bar).
        show_progress: draw a rich progress bar (when ``progress`` is not given).

    Returns:
        ``{"file", "sample_ids", "rows", "reason"}`` per bad file, in manifest order; ``rows`` are 1-based positions in
        ``manifest`` (the data rows of a manifest file).
    """
    jobs = _jobs(manifest, as_location(root) if root is not None else None)
    positions = {index: pos + 1 for pos, index in enumerate(manifest.index)}

    def run(job: tuple[str, Location, str, pd.DataFrame]) -> dict[str, Any] | None:
        kind, path, rel, rows = job
        try:
            _check_file(kind, path, rows)
        except MammopathError as exc:
            reason = f"{type(exc).__name__}: {getattr(exc, 'problem', str(exc))}"
        except Exception as exc:  # a reader let something through: still a bad file, reported with the rest
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return None
        return {
            "file": rel if kind != "roi" else f"{rel} (roi_path)",
            "sample_ids": [str(s) for s in rows["sample_id"]],
            "rows": [positions[i] for i in rows.index],
            "reason": reason,
        }

    results: list[dict[str, Any] | None] = []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        if progress is not None or not show_progress:
            for done, result in enumerate(pool.map(run, jobs), start=1):
                results.append(result)
                if progress is not None:
                    progress(done, len(jobs))
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            ) as bar:
                task = bar.add_task("decode every file", total=len(jobs))
                for result in pool.map(run, jobs):
                    results.append(result)
                    bar.advance(task)
    bad = [r for r in results if r is not None]
    log.info("pre-flight decode: %d file(s), %d bad", len(jobs), len(bad))
    return bad


def raise_for_bad(bad: list[dict[str, Any]], source: str | Path | None, total_rows: int) -> None:
    """Raise one :class:`~mammopath.errors.ManifestError` listing every bad file (row, file, reason)."""
    if not bad:
        return
    problems: list[tuple[int | None, str | None, str]] = []
    for record in bad:
        ids = ", ".join(record["sample_ids"][:3]) + (" ..." if len(record["sample_ids"]) > 3 else "")
        problems.append(
            (record["rows"][0], "path", f"{record['file']} (sample {ids}) cannot be decoded: {record['reason']}")
        )
    raise ManifestError(source, problems)
