"""Synthetic BACH, CAMELYON16 and CAMELYON17 releases in their true on-disk layouts.

Each writer lays out files exactly as the public release does (dataset_formats.md §3-§5), so that
``mammopath prepare`` and the readers run on them as on real data, and returns the counts
(``slides``, ``patients``, ``positives``) that ``prepare`` must reproduce. Pixels carry the designed
causal signal (:func:`mammopath.synth.patho.render_slide`: nuclear density/size/darkness rise with
the grade) and a per-centre stain style. Sizes are tiny so a whole release takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mammopath.datasets.camelyon17 import pn_stage
from mammopath.io.annotations import Polygon, write_asap_xml
from mammopath.synth.patho import blob_polygon, render_slide, write_pyramid_tiff
from mammopath.synth.styles import PathoStyle

BACH_PREFIX: dict[str, str] = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
C17_STYLES: tuple[PathoStyle, ...] = (
    PathoStyle("center_0", mpp=0.243),
    PathoStyle("center_1", h_vector=(0.55, 0.75, 0.36), h_scale=1.2, e_scale=0.8, blur=0.5, mpp=0.243),
    PathoStyle("center_2", h_vector=(0.72, 0.62, 0.32), e_scale=1.2, mpp=0.226),
    PathoStyle("center_3", e_vector=(0.15, 0.95, 0.25), h_scale=0.9, mpp=0.243),
    PathoStyle("center_4", h_vector=(0.6, 0.72, 0.34), blur=0.8, jpeg_quality=75, mpp=0.25),
)
#: Slide-label probabilities of a CAMELYON17 node (negative, itc, micro, macro), near the real 65/7/11/17%.
C17_LABEL_P: tuple[float, ...] = (0.6, 0.1, 0.12, 0.18)


def write_bach_release(out: str | Path, seed: int = 0, n_per_class: int = 3) -> dict[str, Any]:
    """Write ``out/ICIAR2018_BACH_Challenge/Photos/<Class>/<prefix><NNN>.tif`` and the ground-truth CSV.

    Photos are 96×128 (H×W) RGB strip TIFFs; the grade drives the nuclei (Normal → none above the
    background, Benign → grade 1 region, InSitu → 2, Invasive → 3). ``microscopy_ground_truth.csv`` is
    headerless with CRLF line ends, inside ``Photos/``.

    Returns:
        ``root`` (the release folder), ``slides`` (photos), ``patients`` (= photos), ``positives``.
    """
    rng = np.random.default_rng(seed)
    root = Path(out) / "ICIAR2018_BACH_Challenge"
    style = PathoStyle("bach", mpp=0.42)
    lines: list[str] = []
    for grade, (klass, prefix) in enumerate(BACH_PREFIX.items()):
        folder = root / "Photos" / klass
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, n_per_class + 1):
            case = render_slide(rng, 128, [grade] if grade else [], style, None)
            name = f"{prefix}{i:03d}.tif"
            tifffile.imwrite(folder / name, case.rgb[16:112], photometric="rgb", metadata=None)
            lines.append(f"{name},{klass}")
    (root / "Photos" / "microscopy_ground_truth.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    n = 4 * n_per_class
    return {"root": root, "slides": n, "patients": n, "positives": 2 * n_per_class}


def _slide(rng: np.random.Generator, size: int, tumour: bool, style: PathoStyle) -> tuple[np.ndarray, list[Polygon]]:
    case = render_slide(rng, size, [3] if tumour else [], style, None)
    polygons = [Polygon(poly, f"Annotation {i}", True, "_0") for i, (poly, g) in enumerate(case.regions) if g >= 2]
    return case.rgb, polygons


def write_camelyon16_release(
    out: str | Path, seed: int = 0, n_normal: int = 2, n_tumor: int = 2, n_test: int = 2, size: int = 768
) -> dict[str, Any]:
    """Write ``out/CAMELYON16`` in the official layout.

    Slides are pyramidal TIFFs with 512-px tiles, JPEG (the first tumour slide JPEG 2000, as test_019/
    test_034 in the real release) and resolution tags in pixels per centimetre (0.243 µm/px). Lesion
    XMLs are ASAP files with group ``_0`` in ``training/lesion_annotations/`` and
    ``testing/lesion_annotations/``; ``testing/reference.csv`` is headerless, four columns, CRLF, with
    capitalised ids (``Test_001,Tumor,IDC,Macro``). Test slides alternate Tumor/Normal.

    Returns:
        ``root``, ``slides``, ``patients`` (= slides), ``positives`` (tumour slides).
    """
    rng = np.random.default_rng(seed)
    root = Path(out) / "CAMELYON16"
    style = PathoStyle("camelyon16", mpp=0.243)
    plan: list[tuple[str, str, bool]] = [(f"normal_{i:03d}", "training/normal", False) for i in range(1, n_normal + 1)]
    plan += [(f"tumor_{i:03d}", "training/tumor", True) for i in range(1, n_tumor + 1)]
    plan += [(f"test_{i:03d}", "testing/images", i % 2 == 1) for i in range(1, n_test + 1)]
    reference: list[str] = []
    for name, folder, tumour in plan:
        rgb, polygons = _slide(rng, size, tumour, style)
        codec = "jpeg2000" if name == "tumor_001" else "jpeg"
        write_pyramid_tiff(root / folder / f"{name}.tif", rgb, mpp=style.mpp, tile=512, compression=codec, quality=90)
        if tumour:
            ann = "training" if folder.startswith("training") else "testing"
            write_asap_xml(root / ann / "lesion_annotations" / f"{name}.xml", polygons)
        if name.startswith("test_"):
            kind = ("Tumor", "IDC", "Macro") if tumour else ("Normal", "IDC", "None")
            reference.append(",".join((name.capitalize(), *kind)))
    (root / "testing").mkdir(parents=True, exist_ok=True)
    (root / "testing" / "reference.csv").write_bytes(("\r\n".join(reference) + "\r\n").encode())
    positives = sum(t for _, _, t in plan)
    return {"root": root, "slides": len(plan), "patients": len(plan), "positives": positives}


def write_camelyon17_release(
    out: str | Path,
    seed: int = 0,
    n_patients_per_center: int = 2,
    centers: Sequence[int] = (0, 1, 2, 3, 4),
    size: int = 256,
) -> dict[str, Any]:
    """Write ``out/CAMELYON17`` in the official layout.

    ``training/center_N/patient_XXX_node_Y.tif`` (5 nodes per patient, patient ids ``20 * N + k`` so
    centre = patient // 20), ``training/stage_labels.csv`` (header ``patient,stage``, LF, a ``.zip``
    row with the pN stage from :func:`~mammopath.datasets.camelyon17.pn_stage` then five ``.tif`` rows)
    and ``training/lesion_annotations/patient_XXX_node_Y.xml`` for micro/macro slides (group
    ``metastases`` plus a ``normal`` exclusion). Each centre has its own stain style and MPP.

    Returns:
        ``root``, ``slides``, ``patients``, ``positives`` (micro/macro slides), ``centers``.
    """
    rng = np.random.default_rng(seed)
    root = Path(out) / "CAMELYON17"
    lines = ["patient,stage"]
    slides = positives = 0
    for center in centers:
        style = C17_STYLES[center % len(C17_STYLES)]
        for k in range(n_patients_per_center):
            patient = f"patient_{20 * center + k:03d}"
            labels = [str(v) for v in rng.choice(["negative", "itc", "micro", "macro"], size=5, p=C17_LABEL_P)]
            if k == 0:
                labels[0] = "macro"  # every centre has a node-positive patient
            lines.append(f"{patient}.zip,{pn_stage(labels)}")
            for node, label in enumerate(labels):
                name = f"{patient}_node_{node}"
                case = render_slide(rng, size, [3] if label in ("micro", "macro") else [], style, None)
                write_pyramid_tiff(
                    root / "training" / f"center_{center}" / f"{name}.tif",
                    case.rgb,
                    mpp=style.mpp,
                    tile=128,
                    compression=style.compression,
                    quality=style.jpeg_quality,
                    min_size=64,
                )
                if label in ("micro", "macro"):
                    polygons = [Polygon(poly, "Annotation 0", True, "metastases") for poly, _ in case.regions]
                    cx, cy = polygons[0].points.mean(axis=0)
                    polygons.append(Polygon(blob_polygon(rng, (cx, cy), size * 0.03), "Annotation 1", False, "normal"))
                    write_asap_xml(root / "training" / "lesion_annotations" / f"{name}.xml", polygons)
                    positives += 1
                lines.append(f"{name}.tif,{label}")
                slides += 1
    (root / "training").mkdir(parents=True, exist_ok=True)
    (root / "training" / "stage_labels.csv").write_text("\n".join(lines) + "\n")
    return {
        "root": root, "slides": slides, "patients": len(centers) * n_patients_per_center, "positives": positives,
        "centers": len(centers),
    }  # fmt: skip
