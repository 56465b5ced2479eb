"""Each benchmark's official protocol, beside the per-sample metrics.

- **Mammography** (CBIS-DDSM, INbreast): per image (the per-domain table), and per breast and per patient
  with the image scores aggregated by their maximum (:func:`aggregate_auroc`).
- **Slides** (CAMELYON16): slide-level AUROC from patch scores aggregated by ``parent_id``
  (:func:`slide_scores`: ``max``, ``topk`` mean, or ``mean``) against the slide's own label; lesion-level
  FROC (:func:`camelyon16_froc`) from per-slide detections (every patch centre with its score) against
  evaluation masks built from the lesion polygons with the challenge's rules (75 µm dilation; ITC = a
  lesion whose longest extent is below 275 µm, neither hit nor false positive).
- **CAMELYON17**: each slide's stage from its patch predictions (:func:`slide_stage`: the largest
  connected group of positive patches, > 2 mm macro, > 0.2 mm micro, else ITC; none negative), the
  patient's pN stage by the challenge rule (:func:`~mammopath.datasets.camelyon17.pn_stage`), and the
  quadratic weighted kappa over patients (:func:`pn_kappa`).

Thresholds (the patch positivity of the stage rule) come from the caller: fix them on source validation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from mammopath.datasets.camelyon17 import SLIDE_LABELS, pn_stage
from mammopath.errors import ConfigError
from mammopath.metrics.classification import auroc, quadratic_weighted_kappa
from mammopath.metrics.froc import froc

PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
AGGREGATIONS = ("max", "topk", "mean")


def aggregate_auroc(frame: pd.DataFrame, by: list[str], score: str = "score", label: str = "label") -> float:
    """AUROC of the maximum score and maximum label per group (a breast, a patient)."""
    grouped = frame.groupby(by)[[score, label]].max()
    y = grouped[label].to_numpy()
    return auroc(grouped[score].to_numpy(), y) if 0 < y.sum() < len(y) else float("nan")


def slide_scores(patches: pd.DataFrame, how: str = "max", k: int = 5) -> pd.DataFrame:
    """One score per slide (``parent_id``) from its patches, with the slide's label (``slide_label``)."""
    if how not in AGGREGATIONS:
        raise ConfigError(f"slide aggregation must be one of {list(AGGREGATIONS)}; got {how!r}")
    rows = []
    for slide, group in patches.groupby("parent_id", sort=True):
        s = np.sort(group["score"].to_numpy())[::-1]
        value = s[0] if how == "max" else s[:k].mean() if how == "topk" else s.mean()
        rows.append({"parent_id": slide, "score": float(value), "slide_label": int(group["slide_label"].iloc[0])})
    return pd.DataFrame(rows)


def lesion_masks(
    polygons: list, dims: tuple[int, int], mpp: float, downsample: float = 16.0, itc_um: float = 275.0
) -> tuple[np.ndarray, set[int]]:
    """A labelled evaluation mask (lesion i = i) at ``downsample`` and the labels of ITC lesions.

    Each positive polygon is rasterized, dilated by 75 µm (the challenge's rule, which merges lesions
    closer than that) and the connected components are the lesions; a lesion whose longest extent is below
    ``itc_um`` is an isolated-tumour-cell cluster.
    """
    from mammopath.io.masks import rasterize

    shape = (int(np.ceil(dims[1] / downsample)), int(np.ceil(dims[0] / downsample)))
    mask = rasterize([p for p in polygons if p.positive], shape, downsample=downsample)
    radius = max(1, int(round(75.0 / (mpp * downsample))))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    dilated = ndimage.binary_dilation(mask, structure=(xx**2 + yy**2) <= radius**2)
    labels, _ = ndimage.label(dilated)
    itc = set()
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start) * downsample * mpp
        if extent < itc_um:
            itc.add(i)
    return labels, itc


def camelyon16_froc(
    patches: pd.DataFrame, masks: Mapping[str, tuple[np.ndarray, set[int]]], downsample: float = 16.0
) -> float:
    """FROC score: every patch centre a detection with its score, against the slides' evaluation masks.

    ``patches`` needs ``parent_id``, ``x``, ``y`` (level-0 corner), ``extent`` (level-0 side), ``score`` and
    ``slide_label``; ``masks`` maps tumour slides to :func:`lesion_masks`.
    """
    detections, lesion, tumour, itc = {}, {}, {}, {}
    for slide, group in patches.groupby("parent_id"):
        cx = group["x"].to_numpy(float) + group["extent"].to_numpy(float) / 2
        cy = group["y"].to_numpy(float) + group["extent"].to_numpy(float) / 2
        detections[slide] = np.column_stack([group["score"].to_numpy(float), cx, cy])
        tumour[slide] = bool(int(group["slide_label"].iloc[0])) and slide in masks
        if tumour[slide]:
            mask, small = masks[slide]
            h, w = mask.shape
            inside = (cx // downsample < w) & (cy // downsample < h)
            detections[slide] = detections[slide][inside]
            lesion[slide], itc[slide] = mask, small
    return froc(detections, lesion, is_tumor_slide=tumour, exclude_itc=itc, downsample=downsample)["score"]


def slide_stage(patches: pd.DataFrame, threshold: float = 0.5) -> str:
    """A slide's stage from its patches: the largest 8-connected group of patches scoring ≥ ``threshold``.

    Its extent in mm is (cells along the longest side) × patch side × µm/px / 1000: > 2 mm macro,
    > 0.2 mm micro, any positive patch ITC, none negative. ``patches`` needs ``x``, ``y``, ``extent``
    (level-0 pixels) and ``slide_mpp``.
    """
    positive = patches[patches["score"] >= threshold]
    if positive.empty:
        return "negative"
    extent = float(patches["extent"].iloc[0])
    xs = (positive["x"].to_numpy(float) / extent).round().astype(int)
    ys = (positive["y"].to_numpy(float) / extent).round().astype(int)
    grid = np.zeros((ys.max() + 1, xs.max() + 1), dtype=bool)
    grid[ys, xs] = True
    labels, _ = ndimage.label(grid, structure=np.ones((3, 3)))
    longest = max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(labels))
    size_mm = longest * extent * float(patches["slide_mpp"].iloc[0]) / 1000.0
    return "macro" if size_mm > 2.0 else "micro" if size_mm > 0.2 else "itc"


def pn_kappa(patches: pd.DataFrame, threshold: float = 0.5) -> tuple[float, pd.DataFrame]:
    """Quadratic weighted kappa of the predicted vs true pN stage over patients, and the per-patient table.

    True stages come from each slide's ``slide_grade`` (``c17_node``: negative, itc, micro, macro).
    """
    rows = []
    for patient, group in patches.groupby("patient_id"):
        predicted, truth = [], []
        for _, slide in group.groupby("parent_id"):
            predicted.append(slide_stage(slide, threshold))
            truth.append(SLIDE_LABELS[int(slide["slide_grade"].iloc[0])])
        rows.append({"patient_id": patient, "true": pn_stage(truth), "predicted": pn_stage(predicted)})
    table = pd.DataFrame(rows)
    t = table["true"].map(PN_STAGES.index).to_numpy()
    p = table["predicted"].map(PN_STAGES.index).to_numpy()
    return quadratic_weighted_kappa(t, p, len(PN_STAGES)), table


def protocol_table(predictions: pd.DataFrame, manifest: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """The official protocols of every (modality, domain) that has them, from a run's predictions.

    ``manifest`` is the datamodule's composed manifest (``_root``, ``laterality``, patch columns and the
    slides' ``slide_label`` / ``slide_grade``). Rows: ``modality, domain, protocol, value, n``.
    """
    extra = [c for c in ("laterality", "x", "y", "size", "mpp", "slide_mpp", "slide_label", "slide_grade", "roi_path",
                         "path", "_root") if c in manifest.columns]  # fmt: skip
    frame = predictions.merge(manifest[["sample_id", *extra]], on="sample_id", how="left")
    frame = frame[frame["label"] >= 0] if "label" in frame else frame
    rows = [
        {"modality": modality, "domain": domain, "protocol": protocol, "value": value, "n": n}
        for (modality, domain), group in frame.groupby(["modality", "domain"], sort=True)
        for protocol, value, n in _group_protocols(str(modality), str(domain), group, threshold)
    ]
    return pd.DataFrame(rows, columns=["modality", "domain", "protocol", "value", "n"])


def _group_protocols(modality: str, domain: str, group: pd.DataFrame, threshold: float) -> list[tuple[str, float, int]]:
    """(protocol, value, n) of one (modality, domain)."""
    out: list[tuple[str, float, int]] = []
    if modality == "mammo" and "laterality" in group:
        breasts = group.groupby(["patient_id", "laterality"]).ngroups
        out.append(("auroc_per_breast", aggregate_auroc(group, ["patient_id", "laterality"]), breasts))
        out.append(("auroc_per_patient", aggregate_auroc(group, ["patient_id"]), group["patient_id"].nunique()))
    patches = group[group["parent_id"].fillna("").astype(str) != ""]
    if modality != "patho" or patches.empty or "slide_label" not in patches:
        return out
    patches = patches[pd.to_numeric(patches["slide_label"], errors="coerce").notna()].copy()
    if patches.empty:
        return out
    patches["slide_label"] = patches["slide_label"].astype(float).astype(int)
    for how in ("max", "topk"):
        slides = slide_scores(patches, how)
        y = slides["slide_label"].to_numpy()
        value = auroc(slides["score"].to_numpy(), y) if 0 < y.sum() < len(y) else float("nan")
        out.append((f"slide_auroc_{how}", value, len(slides)))
    size, mpp, slide_mpp = (patches[c].astype(float) for c in ("size", "mpp", "slide_mpp"))
    patches["extent"] = size * mpp / slide_mpp
    graded = pd.to_numeric(patches["slide_grade"], errors="coerce") if "slide_grade" in patches else None
    if graded is not None and graded.notna().all() and patches["patient_id"].nunique() > 1:
        patches["slide_grade"] = graded.astype(int)
        out.append(("pn_stage_qwk_patients", pn_kappa(patches, threshold)[0], patches["patient_id"].nunique()))
    if domain == "camelyon16" or str(patches["dataset"].iloc[0]).startswith("camelyon16"):
        out.append(("froc", _froc_from_rows(patches), patches["parent_id"].nunique()))
    return out


def _froc_from_rows(patches: pd.DataFrame) -> float:
    from pathlib import Path

    from mammopath.io.annotations import read_asap_xml
    from mammopath.io.slide import open_slide

    masks = {}
    for slide, group in patches.groupby("parent_id"):
        row = group.iloc[0]
        if not int(row["slide_label"]) or not str(row.get("roi_path") or ""):
            continue
        root = Path(str(row["_root"]))
        handle = open_slide(root / str(row["path"]))
        masks[slide] = lesion_masks(
            read_asap_xml(root / str(row["roi_path"])), handle.dimensions, float(row["slide_mpp"])
        )
    return camelyon16_froc(patches, masks) if masks else float("nan")
