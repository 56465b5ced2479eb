"""`mammopath synth`: the embedded synthetic multi-hospital benchmark (DESIGN.md §5).

Writes, under one output folder (all paths relative to it), seeded and deterministic:

- the multi-hospital cohort: mammograms as DICOM (one folder per hospital) and H&E slides as tiled
  pyramidal TIFFs with ASAP lesion XMLs (one folder per centre), listed in ``manifest.csv`` with
  patient-disjoint splits. Its two modalities come from different synthetic patients (as in the
  public benchmarks), so cross-modal alignment on it is label-level, not patient-level;
- the paired cohort (``paired/``, ``paired_manifest.csv``): patients with both modalities, so
  alignment there can use true patient pairs;
- tiny releases of CBIS-DDSM, INbreast, BACH, CAMELYON16 and CAMELYON17 in their official layouts
  (:func:`write_releases`), for ``mammopath prepare``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammopath.io.annotations import Polygon, write_asap_xml
from mammopath.manifest import write_manifest
from mammopath.synth.mammo import MammoCase, apply_style, render_mammogram, write_mammogram_dicom, write_mask_dicom
from mammopath.synth.patho import SlideCase, render_slide, write_pyramid_tiff
from mammopath.synth.styles import MammoStyle, PathoStyle, SynthConfig

log = logging.getLogger(__name__)

#: Lesion grades (bach4) of the slides of one centre, cycled: normal, benign, in situ, invasive.
SLIDE_PLAN: tuple[tuple[int, ...], ...] = ((), (3,), (1,), (2,), (), (3,), (1, 2), (3, 2))

Progress = Callable[[str, int], None]


def _assign_splits(rng: np.random.Generator, patients: list[str], labels: dict[str, int]) -> dict[str, str]:
    """Patient-disjoint 60/20/20 train/val/test, stratified by each patient's label."""
    splits: dict[str, str] = {}
    for value in sorted(set(labels.values())):
        group = [p for p in patients if labels[p] == value]
        rng.shuffle(group)
        n = len(group)
        n_val = max(1, round(0.2 * n)) if n >= 3 else 0
        n_test = max(1, round(0.2 * n)) if n >= 3 else 0
        for i, patient in enumerate(group):
            splits[patient] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return splits


def _write_view(
    out: Path, folder: Path, case: MammoCase, style: MammoStyle, rng: np.random.Generator, *, laterality: str, view: str
) -> dict[str, Any]:
    """Write one mammogram view and its ROI mask DICOM; return the file/label part of its manifest row."""
    patient = folder.name
    rel, roi = folder / f"{laterality}_{view}.dcm", folder / f"{laterality}_{view}_roi.dcm"
    stored = apply_style(case.image, style, rng)
    write_mammogram_dicom(out / rel, stored, style, patient_id=patient, laterality=laterality, view=view)
    write_mask_dicom(out / roi, case.mask, patient_id=patient)
    return {
        "modality": "mammo",
        "path": rel.as_posix(),
        "label": int(case.malignant),
        "grade": case.birads,
        "grade_scheme": "birads",
        "roi_path": roi.as_posix(),
        "laterality": laterality,
        "view": view,
        "label_source": "annotated",
    }


def _write_slide(out: Path, stem: Path, case: SlideCase, style: PathoStyle, tile: int) -> tuple[Path, Path]:
    """Write a slide as a pyramidal TIFF and its tumour polygons as ASAP XML; return both relative paths."""
    rel, xml = stem.with_suffix(".tif"), stem.with_suffix(".xml")
    write_pyramid_tiff(
        out / rel, case.rgb, mpp=style.mpp, tile=tile, compression=style.compression, quality=style.jpeg_quality
    )
    tumour = [Polygon(points=poly, label="Tumor", positive=True, group="_0") for poly, g in case.regions if g >= 2]
    write_asap_xml(out / xml, tumour)
    return rel, xml


def _patch_row(patch: dict[str, Any], rel: Path, xml: Path, cfg: SynthConfig, slide_id: str) -> dict[str, Any]:
    """The file/label part of a patch's manifest row."""
    return {
        "sample_id": patch["sample_id"],
        "modality": "patho",
        "path": rel.as_posix(),
        "label": patch["label"],
        "grade": patch["grade"],
        "grade_scheme": "bach4",
        "roi_path": xml.as_posix(),
        "x": patch["x"],
        "y": patch["y"],
        "size": cfg.patch_size,
        "mpp": cfg.patch_mpp,
        "parent_id": slide_id,
        "label_source": "annotated",
    }


def write_mammo_domain(
    out: Path, style: MammoStyle, cfg: SynthConfig, rng: np.random.Generator, progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Write one hospital's mammograms (two views per patient) and ROI masks; return manifest rows."""
    rows: list[dict[str, Any]] = []
    prefix = "H" + style.name[-1].upper()
    patients = [f"{prefix}{i:04d}" for i in range(cfg.mammo_patients_per_domain)]
    labels = {p: int(i % 2) for i, p in enumerate(patients)}
    splits = _assign_splits(rng, patients, labels)
    for patient in patients:
        malignant = bool(labels[patient])
        laterality = "L" if rng.random() < 0.5 else "R"
        marker = bool(rng.random() < style.marker_rate[int(malignant)])
        for view in ("CC", "MLO"):
            case = render_mammogram(rng, cfg.mammo_shape, malignant, marker)
            if laterality == "R":  # chest wall on the right for right breasts
                case.image, case.mask = case.image[:, ::-1], case.mask[:, ::-1]
            row = _write_view(
                out, Path("mammo") / style.name / patient, case, style, rng, laterality=laterality, view=view
            )
            rows.append(
                {**row, "sample_id": f"{style.name}-{patient}-{laterality}{view}", "patient_id": patient,
                 "dataset": "synth_mammo", "domain": style.name, "split": splits[patient], "marker": int(marker)}
            )  # fmt: skip
            if progress:
                progress("mammo", 1)
    return rows


def patch_rows_for_slide(
    slide_id: str,
    grade_map: np.ndarray,
    tissue: np.ndarray,
    slide_mpp: float,
    patch_size: int,
    patch_mpp: float,
    rng: np.random.Generator,
    max_patches: int = 40,
) -> list[dict[str, Any]]:
    """Patch grid over tissue with its grade: tumour (grade ≥ 2) fraction ≥ 0.5 → label 1; lesion-free → 0.

    Patches that are partly lesion (0.05 < fraction < 0.5) are ambiguous and left out.
    """
    extent = int(round(patch_size * patch_mpp / slide_mpp))  # level-0 pixels per patch side
    h, w = grade_map.shape
    kept: list[dict[str, Any]] = []
    for y in range(0, h - extent + 1, extent):
        for x in range(0, w - extent + 1, extent):
            if tissue[y : y + extent, x : x + extent].mean() < 0.5:
                continue
            window = grade_map[y : y + extent, x : x + extent]
            grade = None
            for g in (3, 2, 1):
                if (window == g).mean() >= 0.5:
                    grade = g
                    break
            if grade is None and (window > 0).mean() <= 0.05:
                grade = 0
            if grade is None:
                continue
            tumour = float((window >= 2).mean())
            kept.append({"x": x, "y": y, "grade": grade, "label": int(grade >= 2), "tumour_fraction": tumour})
    lesion = [r for r in kept if r["grade"] > 0]
    normal = [r for r in kept if r["grade"] == 0]
    rng.shuffle(normal)
    chosen = lesion[: max_patches // 2 + 4] + normal[: max(0, max_patches - min(len(lesion), max_patches // 2 + 4))]
    chosen.sort(key=lambda r: (r["y"], r["x"]))
    for r in chosen:
        r["sample_id"] = f"{slide_id}-x{r['x']}-y{r['y']}"
    return chosen


def write_patho_domain(
    out: Path, style: PathoStyle, cfg: SynthConfig, rng: np.random.Generator, progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Write one centre's slides (pyramidal TIFF + ASAP XML) and return patch manifest rows."""
    rows: list[dict[str, Any]] = []
    prefix = "C" + style.name[-1]
    slides = [f"{prefix}S{i:03d}" for i in range(cfg.slides_per_domain)]
    plans = {s: SLIDE_PLAN[i % len(SLIDE_PLAN)] for i, s in enumerate(slides)}
    labels = {s: int(any(g >= 2 for g in plans[s])) for s in slides}
    splits = _assign_splits(rng, slides, labels)
    size = int(round(cfg.slide_size * 0.5 / style.mpp))  # same physical area whatever the scanner
    for slide in slides:
        plan = list(plans[slide])
        tumour_slide = labels[slide] == 1
        dots: bool | None = None
        if tumour_slide and rng.random() < style.marker_rate[1]:
            dots = True
        elif rng.random() < style.marker_rate[0]:
            dots = False
        case = render_slide(rng, size, plan, style, dots)
        slide_id = f"{style.name}-{slide}"
        rel, xml = _write_slide(out, Path("patho") / style.name / slide, case, style, cfg.tile)
        extent = int(round(cfg.patch_size * cfg.patch_mpp / style.mpp))
        for patch in patch_rows_for_slide(
            slide_id, case.grade_map, case.tissue, style.mpp, cfg.patch_size, cfg.patch_mpp, rng
        ):
            ink = bool(case.marker_mask[patch["y"] : patch["y"] + extent, patch["x"] : patch["x"] + extent].any())
            rows.append(
                {**_patch_row(patch, rel, xml, cfg, slide_id), "patient_id": slide, "dataset": "synth_patho",
                 "domain": style.name, "split": splits[slide], "marker": int(ink)}
            )  # fmt: skip
        if progress:
            progress("patho", 1)
    return rows


def write_paired_cohort(
    out: Path, cfg: SynthConfig, rng: np.random.Generator, progress: Progress | None = None
) -> pd.DataFrame:
    """Patients with BOTH modalities (an institutional-style cohort): true patient-level pairs.

    Each patient has one lesion: a malignant patient has a spiculated mass (two views) and an
    invasive or in situ tumour slide; a benign one a round mass and a benign or normal slide. Beyond
    the label, every patient has latent content rendered in both modalities: a lesion size (the mass
    radius; the tumour region's radius) and a tissue density (the breast's background density; the
    slide's stromal eosin), each uniform in [0, 1] and written to ``paired_latents.csv``, so that
    retrieving the right patient across modalities needs more than the label. Both modalities share
    ``patient_id`` and the domain ``paired_site``, and the split is by patient (60/20/20 per class), so
    cross-modal alignment can use real pairs here (the public benchmarks offer none).
    """
    mstyle = MammoStyle("paired_site", bits_stored=14, gamma=1.1, noise=0.015)
    pstyle = PathoStyle("paired_site", jpeg_quality=90, mpp=0.5)
    patients = [f"PP{i:04d}" for i in range(cfg.paired_patients)]
    labels = {p: int(i % 2) for i, p in enumerate(patients)}
    splits = _assign_splits(rng, patients, labels)
    rows: list[dict[str, Any]] = []
    latents: list[dict[str, Any]] = []
    size = cfg.slide_size
    for patient in patients:
        malignant = bool(labels[patient])
        lesion_size, density = float(rng.uniform()), float(rng.uniform())
        latents.append({"patient_id": patient, "label": int(malignant), "lesion_size": lesion_size, "density": density})
        common = {"patient_id": patient, "dataset": "synth_paired", "domain": "paired_site", "split": splits[patient]}
        for view in ("CC", "MLO"):
            case = render_mammogram(
                rng, cfg.mammo_shape, malignant, marker=False, lesion_size=lesion_size, density=density
            )
            row = _write_view(out, Path("paired") / "mammo" / patient, case, mstyle, rng, laterality="L", view=view)
            rows.append({**row, **common, "sample_id": f"paired-{patient}-L{view}"})
        lesions = [int(rng.choice([2, 3]))] if malignant else ([1] if rng.random() < 0.5 else [])
        slide_id = f"paired-{patient}-slide"
        for _attempt in range(8):  # the patient's label must be visible in at least one patch
            slide = render_slide(rng, size, lesions, pstyle, None, lesion_size=lesion_size, density=density)
            patches = patch_rows_for_slide(
                slide_id, slide.grade_map, slide.tissue, pstyle.mpp, cfg.patch_size, cfg.patch_mpp, rng, max_patches=12
            )
            if patches and (not malignant or any(p["label"] == 1 for p in patches)):
                break
        else:
            raise RuntimeError(f"paired cohort: no usable patches for {patient}; increase slide_size")
        rel, xml = _write_slide(out, Path("paired") / "patho" / patient, slide, pstyle, cfg.tile)
        rows += [{**_patch_row(patch, rel, xml, cfg, slide_id), **common} for patch in patches]
        if progress:
            progress("paired", 1)
    pd.DataFrame(latents).to_csv(out / "paired_latents.csv", index=False)
    return pd.DataFrame(rows)


#: Folder each synthetic release is written to under the ``synth`` output, and the ``prepare`` root.
RELEASES: dict[str, str] = {
    "cbis-ddsm": ".",
    "inbreast": ".",
    "bach": "ICIAR2018_BACH_Challenge",
    "camelyon16": "CAMELYON16",
    "camelyon17": "CAMELYON17",
}


def write_releases(out: str | Path, seed: int = 0, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Write tiny releases of the five public benchmarks in their true layouts and formats.

    Returns:
        benchmark name → the counts its writer reports (what ``mammopath prepare`` must find).
    """
    from mammopath.synth.releases_mammo import write_cbis_ddsm_release, write_inbreast_release
    from mammopath.synth.releases_patho import write_bach_release, write_camelyon16_release, write_camelyon17_release

    out = Path(out)
    writers = {
        "cbis-ddsm": lambda: write_cbis_ddsm_release(out, seed, layout="nbia"),
        "inbreast": lambda: write_inbreast_release(out, seed),
        "bach": lambda: write_bach_release(out, seed),
        "camelyon16": lambda: write_camelyon16_release(out, seed),
        "camelyon17": lambda: write_camelyon17_release(out, seed),
    }
    counts: dict[str, dict[str, Any]] = {}
    for name, write in writers.items():
        counts[name] = {k: v for k, v in write().items() if k != "root"}
        if progress:
            progress("releases", 1)
    return counts


def make_synth_benchmark(
    out: str | Path,
    seed: int = 0,
    cfg: SynthConfig | None = None,
    progress: Progress | None = None,
    paired: bool = True,
) -> pd.DataFrame:
    """Write the multi-hospital benchmark under ``out`` and its ``manifest.csv``; return the manifest.

    With ``paired``, also writes the paired cohort (``paired/``, ``paired_manifest.csv``). Each domain
    draws from its own seeded generator, so adding a domain does not change the others.
    """
    cfg = cfg or SynthConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i, mstyle in enumerate(cfg.mammo_styles):
        rows += write_mammo_domain(out, mstyle, cfg, np.random.default_rng([seed, 1, i]), progress)
    for i, pstyle in enumerate(cfg.patho_styles):
        rows += write_patho_domain(out, pstyle, cfg, np.random.default_rng([seed, 2, i]), progress)
    manifest = pd.DataFrame(rows)
    write_manifest(manifest, out / "manifest.csv")
    if paired:
        write_manifest(
            write_paired_cohort(out, cfg, np.random.default_rng([seed, 3]), progress=progress),
            out / "paired_manifest.csv",
        )
    return manifest
