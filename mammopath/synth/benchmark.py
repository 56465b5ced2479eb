"""`mammopath synth`: the embedded synthetic multi-hospital benchmark (DESIGN.md §5).

Writes, under one output folder (all paths relative to it), seeded and deterministic:

- the multi-hospital cohort (:mod:`mammopath.synth.cohort`): mammograms as DICOM (one folder per
  hospital) and H&E slides as tiled pyramidal TIFFs with ASAP lesion XMLs (one folder per centre),
  listed in ``manifest.csv`` with patient-disjoint splits, a shortcut whose strength varies between
  source domains and reverses in the held-out ones, marker-free copies for the oracle
  (``manifest_oracle.csv``) and the shortcut probe (``shortcut_probe.csv``). Its two modalities come
  from different synthetic patients (as in the public benchmarks), so cross-modal alignment on it is
  label-level, not patient-level;
- the paired cohort (``paired/``, ``paired_manifest.csv``): patients with both modalities, so
  alignment there can use true patient pairs;
- tiny releases of CBIS-DDSM, INbreast, BACH, CAMELYON16 and CAMELYON17 in their official layouts
  (:func:`write_releases`), for ``mammopath prepare``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammopath.errors import ConfigError
from mammopath.manifest import write_manifest
from mammopath.synth.cohort import (
    Progress,
    assign_splits,
    oracle_manifest,
    patch_row,
    patch_rows_for_slide,
    shortcut_probe,
    write_mammo_domain,
    write_patho_domain,
    write_slide,
    write_view,
)
from mammopath.synth.mammo import apply_style, render_mammogram
from mammopath.synth.patho import render_slide
from mammopath.synth.styles import MammoStyle, PathoStyle, SynthConfig

log = logging.getLogger(__name__)


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
    if cfg.paired_patches < 1:
        raise ConfigError(f"SynthConfig.paired_patches must be >= 1 (patches per slide); got {cfg.paired_patches}")
    mstyle = MammoStyle("paired_site", bits_stored=14, gamma=1.1, noise=0.015)
    pstyle = PathoStyle("paired_site", jpeg_quality=90, mpp=0.5)
    patients = [f"PP{i:04d}" for i in range(cfg.paired_patients)]
    labels = {p: int(i % 2) for i, p in enumerate(patients)}
    splits = assign_splits(rng, patients, labels)
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
            stored = apply_style(case.image, mstyle, rng)
            row = write_view(out, Path("paired") / "mammo" / patient, case, stored, mstyle, laterality="L", view=view)
            rows.append({**row, **common, "label": int(malignant), "sample_id": f"paired-{patient}-L{view}"})
        lesions = [int(rng.choice([2, 3]))] if malignant else ([1] if rng.random() < 0.5 else [])
        slide_id = f"paired-{patient}-slide"
        for _attempt in range(8):  # the patient's label must be visible in at least one patch
            slide = render_slide(rng, size, lesions, pstyle, None, lesion_size=lesion_size, density=density)
            patches = patch_rows_for_slide(
                slide_id,
                slide.grade_map,
                slide.tissue,
                pstyle.mpp,
                cfg.patch_size,
                cfg.patch_mpp,
                rng,
                max_patches=cfg.paired_patches,
            )
            if patches and (not malignant or any(p["label"] == 1 for p in patches)):
                break
        else:
            raise RuntimeError(f"paired cohort: no usable patches for {patient}; increase slide_size")
        rel, xml = write_slide(out, Path("paired") / "patho" / patient, slide.rgb, slide, pstyle, cfg.tile)
        rows += [{**patch_row(patch, rel, xml, cfg, slide_id), **common} for patch in patches]
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
    if cfg.oracle:
        write_manifest(oracle_manifest(manifest), out / "manifest_oracle.csv")
    shortcut_probe(manifest).to_csv(out / "shortcut_probe.csv", index=False)
    if paired:
        write_manifest(
            write_paired_cohort(out, cfg, np.random.default_rng([seed, 3]), progress=progress),
            out / "paired_manifest.csv",
        )
    return manifest
