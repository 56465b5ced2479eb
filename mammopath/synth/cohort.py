"""The multi-hospital cohort of the synthetic benchmark: a shift in which each DG mechanism is identifiable.

Designed like ColoredMNIST (Arjovsky et al. 2019), in the real file formats:

- **label noise on the causal signal**: a sample's label is its true class; its *appearance* (the
  mass shape of a mammogram, the nuclei of a slide patch) agrees with the label only with probability
  ``1 − noise`` (mammography 0.70, pathology 0.75 by default), the same in every domain: the causal
  signal is stable but imperfect;
- **a shortcut that is strong, varies between source domains and reverses in the held-out one**: a
  burned-in marker (mammography) / green ink dots (pathology) drawn from the label with a per-domain
  agreement (``marker_rate``: hospital_a 0.9, hospital_b 0.75, hospital_c 0.2; centre_1 0.9, centre_2 0.8,
  centre_3 0.2), so in the source domains the shortcut alone predicts the label better than the causal
  signal alone, and only the variation across source domains tells them apart (what IRM needs);
- **the style shift** of each domain (acquisition, stain) as before.

The marker is rendered as a separate layer: every image is also written without it (``*_oracle/``),
identical elsewhere, for the causal-only ceiling (``manifest_oracle.csv``: every row points to the
marker-free copy, so the oracle is trained, selected and tested on the causal signal alone: what a predictor
that ignores the marker perfectly can reach; a marker-free model tested on marked images is not a ceiling,
the unseen marker moves its scores). Evaluation
splits are large (``mammo_test_patients``, ``test_slides_per_domain``) so a source-test AUROC is known
to within about ±0.05; training data stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammopath.io.annotations import Polygon, write_asap_xml
from mammopath.synth.mammo import (
    MammoCase,
    apply_style,
    marker_region,
    marker_value,
    render_mammogram,
    write_mammogram_dicom,
    write_mask_dicom,
)
from mammopath.synth.patho import SlideCase, paint_ink, render_slide, write_pyramid_tiff
from mammopath.synth.styles import MammoStyle, PathoStyle, SynthConfig

Progress = Callable[[str, int], None]

#: Lesion grades (bach4) of the slides of one centre, cycled: normal, benign, in situ, invasive.
SLIDE_PLAN: tuple[tuple[int, ...], ...] = ((), (3,), (1,), (2,), (), (3,), (1, 2), (3, 2))
ORACLE_SUFFIX = "_oracle"


def assign_splits(
    rng: np.random.Generator, patients: list[str], labels: dict[str, int], n_test: int | None = None
) -> dict[str, str]:
    """Patient-disjoint splits stratified by label: 60/20/20, or ``n_test`` test patients and 75/25 train/val."""
    splits: dict[str, str] = {}
    for value in sorted(set(labels.values())):
        group = [p for p in patients if labels[p] == value]
        rng.shuffle(group)
        n = len(group)
        if n_test is None:
            n_test_g = max(1, round(0.2 * n)) if n >= 3 else 0
        else:
            n_test_g = round(n_test * n / len(patients))
        rest = n - n_test_g
        n_val = (max(1, round(0.2 * n)) if n >= 3 else 0) if n_test is None else max(1, round(0.25 * rest))
        for i, patient in enumerate(group):
            splits[patient] = "val" if i < n_val else "test" if i < n_val + n_test_g else "train"
    return splits


def write_view(
    out: Path,
    folder: Path,
    case: MammoCase,
    stored: np.ndarray,
    style: MammoStyle,
    *,
    laterality: str,
    view: str,
    roi: bool = True,
) -> dict[str, Any]:
    """Write one mammogram view (stored values) and its ROI mask DICOM (unless ``roi`` is False, for a copy that
    shares another view's mask); return the file part of its row."""
    patient = folder.name
    rel, roi_rel = folder / f"{laterality}_{view}.dcm", folder / f"{laterality}_{view}_roi.dcm"
    write_mammogram_dicom(out / rel, stored, style, patient_id=patient, laterality=laterality, view=view)
    if roi:
        write_mask_dicom(out / roi_rel, case.mask, patient_id=patient)
    return {
        "modality": "mammo",
        "path": rel.as_posix(),
        "grade": case.birads,
        "grade_scheme": "birads",
        "roi_path": roi_rel.as_posix(),
        "laterality": laterality,
        "view": view,
        "label_source": "annotated",
    }


def write_slide(
    out: Path, stem: Path, rgb: np.ndarray, case: SlideCase, style: PathoStyle, tile: int
) -> tuple[Path, Path]:
    """Write a slide as a pyramidal TIFF and its tumour polygons as ASAP XML; return both relative paths."""
    rel, xml = stem.with_suffix(".tif"), stem.with_suffix(".xml")
    write_pyramid_tiff(
        out / rel, rgb, mpp=style.mpp, tile=tile, compression=style.compression, quality=style.jpeg_quality
    )
    tumour = [Polygon(points=poly, label="Tumor", positive=True, group="_0") for poly, g in case.regions if g >= 2]
    write_asap_xml(out / xml, tumour)
    return rel, xml


def patch_row(patch: dict[str, Any], rel: Path, xml: Path, cfg: SynthConfig, slide_id: str) -> dict[str, Any]:
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


def _oracle(path: str) -> str:
    first, _, rest = path.partition("/")
    return f"{first}{ORACLE_SUFFIX}/{rest}"


def write_mammo_domain(
    out: Path, style: MammoStyle, cfg: SynthConfig, rng: np.random.Generator, progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Write one hospital's mammograms (two views per patient, with and without the marker) and ROI masks.

    Returns manifest rows with ``marker`` (the shortcut is on) and ``causal`` (the appearance is malignant).
    """
    rows: list[dict[str, Any]] = []
    prefix = "H" + style.name[-1].upper()
    n = cfg.mammo_patients_per_domain + cfg.mammo_test_patients
    patients = [f"{prefix}{i:04d}" for i in range(n)]
    labels = {p: int(i % 2) for i, p in enumerate(patients)}
    splits = assign_splits(rng, patients, labels, n_test=cfg.mammo_test_patients)
    for patient in patients:
        label = labels[patient]
        looks_malignant = bool(label) != bool(rng.random() < cfg.mammo_label_noise)
        laterality = "L" if rng.random() < 0.5 else "R"
        marker = bool(rng.random() < style.marker_rate[label])
        for view in ("CC", "MLO"):
            case = render_mammogram(rng, cfg.mammo_shape, looks_malignant, marker=False)
            region = marker_region(cfg.mammo_shape)
            if laterality == "R":  # chest wall on the right for right breasts
                case.image, case.mask, region = case.image[:, ::-1], case.mask[:, ::-1], region[:, ::-1]
            stored = apply_style(case.image, style, rng)
            folder = Path("mammo") / style.name / patient
            if cfg.oracle:
                write_view(out, Path(_oracle(folder.as_posix())), case, stored, style, laterality=laterality, view=view)
            if marker:  # the marker is a layer over the same stored image
                stored = stored.copy()
                stored[region] = marker_value(style)
            row = write_view(out, folder, case, stored, style, laterality=laterality, view=view)
            rows.append(
                {**row, "sample_id": f"{style.name}-{patient}-{laterality}{view}", "patient_id": patient,
                 "dataset": "synth_mammo", "domain": style.name, "split": splits[patient], "label": label,
                 "marker": int(marker), "causal": int(looks_malignant)}
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
    """Write one centre's slides (pyramidal TIFF + ASAP XML, with and without ink) and return patch rows.

    Each patch's label is its true class (tumour fraction ≥ 0.5) flipped with probability
    ``patho_label_noise``; ink dots are painted inside the patch with the centre's ``marker_rate`` given
    that label. Rows carry ``marker`` and ``causal`` (the patch looks like tumour).
    """
    rows: list[dict[str, Any]] = []
    prefix = "C" + style.name[-1]
    n = cfg.slides_per_domain + cfg.test_slides_per_domain
    slides = [f"{prefix}S{i:03d}" for i in range(n)]
    plans = {s: SLIDE_PLAN[i % len(SLIDE_PLAN)] for i, s in enumerate(slides)}
    labels = {s: int(any(g >= 2 for g in plans[s])) for s in slides}
    splits = assign_splits(rng, slides, labels, n_test=cfg.test_slides_per_domain)
    size = int(round(cfg.slide_size * 0.5 / style.mpp))  # same physical area whatever the scanner
    extent = int(round(cfg.patch_size * cfg.patch_mpp / style.mpp))
    for slide in slides:
        case = render_slide(rng, size, list(plans[slide]), style, None)
        slide_id = f"{style.name}-{slide}"
        patches = patch_rows_for_slide(
            slide_id, case.grade_map, case.tissue, style.mpp, cfg.patch_size, cfg.patch_mpp, rng
        )
        stem = Path("patho") / style.name / slide
        if cfg.oracle:
            write_slide(out, Path(_oracle(stem.as_posix())), case.rgb, case, style, cfg.tile)
        rgb = case.rgb.copy()
        for patch in patches:
            looks_tumour = patch["label"]
            patch["label"] = int(bool(looks_tumour) != bool(rng.random() < cfg.patho_label_noise))
            patch["causal"] = looks_tumour
            patch["marker"] = int(rng.random() < style.marker_rate[patch["label"]])
            if patch["marker"]:
                x, y = patch["x"], patch["y"]
                paint_ink(rgb, (x, y, x + extent, y + extent), rng, size)
        rel, xml = write_slide(out, stem, rgb, case, style, cfg.tile)
        for patch in patches:
            rows.append(
                {**patch_row(patch, rel, xml, cfg, slide_id), "patient_id": slide, "dataset": "synth_patho",
                 "domain": style.name, "split": splits[slide], "marker": patch["marker"], "causal": patch["causal"]}
            )  # fmt: skip
        if progress:
            progress("patho", 1)
    return rows


def oracle_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every row reads the marker-free copy (same sample ids, splits and labels as ``manifest``)."""
    oracle = manifest.copy()
    for column in ("path", "roi_path"):
        oracle[column] = oracle[column].map(_oracle)
    return oracle


def shortcut_probe(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per domain: how well the shortcut alone and the causal appearance alone predict the label (AUROC).

    A probe that sees only the marker flag (or only the rendered appearance): with a binary predictor the
    AUROC is (sensitivity + specificity) / 2; ``marker_agreement`` = P(marker = label).
    """
    from mammopath.metrics import auroc

    rows = []
    for (modality, domain), group in manifest.groupby(["modality", "domain"], sort=True):
        y = group["label"].astype(int).to_numpy()
        rows.append(
            {
                "modality": modality,
                "domain": domain,
                "n": len(group),
                "marker_agreement": float((group["marker"].astype(int).to_numpy() == y).mean()),
                "marker_only_auroc": auroc(group["marker"].astype(float), y),
                "causal_only_auroc": auroc(group["causal"].astype(float), y),
            }
        )
    return pd.DataFrame(rows)
