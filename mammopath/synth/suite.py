"""Writing one scenario of generator v2 for one generator seed (docs/evidence.md).

:func:`write_scenario` plans every domain's cohort (patients, labels, splits, cues, style tilts) and then writes
the domains, each from its own random generator ``(seed, modality, index)``, in parallel worker processes: the
files are the same whatever the number of workers, and a domain does not change when another is added.

Files are the real formats: mammograms as DICOM with CBIS-DDSM-style ROI mask DICOMs, pathology as tiled
pyramidal TIFF slides with ASAP XML tumour polygons and one patch row (x, y, size, mpp) per cell. Written:

- ``manifest.csv``: every row, with the ground truth beside the label: ``causal`` (the appearance is
  malignant), ``cue`` (the spurious cue is drawn), ``style_tilt`` (M3), ``latent`` (the true label, also for
  rows written unlabelled);
- ``manifest_oracle.csv``: the same rows reading the cue-free copies (``*_oracle/``), identical elsewhere;
- ``manifest_shuffled.csv`` (paired scenarios): the pathology training rows' patient ids permuted among the
  training patients (the shuffled-pair control of the alignment);
- ``probe.csv``: per domain, the cue's realized agreement and the cue-only and causal-only AUROCs;
- ``truth.json``: the generator version, the scenario, the seed, every domain's role, cue, confounding, style.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammopath.io.annotations import Polygon, write_asap_xml
from mammopath.manifest import write_manifest
from mammopath.synth.cohort import ORACLE_SUFFIX, assign_splits, write_view
from mammopath.synth.lesions import MAMMO_SIDE, cue_region, render_breast, tilted
from mammopath.synth.mammo import apply_style, marker_value
from mammopath.synth.patho import write_pyramid_tiff
from mammopath.synth.scenarios import GENERATOR_VERSION, Domain, Scenario, Sizes, scenario
from mammopath.synth.styles import MammoStyle, PathoStyle
from mammopath.synth.tissue import CELL, PATCH, PATCH_MPP, SLIDE_MPP, cell_polygon, render_patho_slide

Progress = Callable[[str, int], None]
MODALITY_CODE = {"mammo": 7, "patho": 8}


def balanced(rng: np.random.Generator, labels: np.ndarray, agreement: float | None) -> np.ndarray:
    """A 0/1 draw per item that equals its label for exactly ``round(agreement · n)`` of the ``n`` items of each
    class (which ones at random); all zeros when ``agreement`` is ``None``."""
    labels = np.asarray(labels, dtype=int)
    out = np.zeros(len(labels), dtype=int)
    if agreement is None:
        return out
    for value in (0, 1):
        index = np.flatnonzero(labels == value)
        agree = np.arange(len(index)) < round(agreement * len(index))
        rng.shuffle(agree)
        out[index] = np.where(agree, value, 1 - value)
    return out


@dataclass
class Cohort:
    """What is decided before any pixel: one entry per patient (mammography) or slide (pathology)."""

    ids: list[str]
    labels: np.ndarray
    splits: dict[str, str]
    labelled: np.ndarray  # False: the label (and the grade derived from it) is written empty


def plan(domain: Domain, sizes: Sizes, rng: np.random.Generator, labelled_share: float = 1.0) -> Cohort:
    """Patients (or slides) of a domain, their labels (alternating, so classes are balanced) and their splits."""
    mammo = domain.modality == "mammo"
    n_test = sizes.mammo_test_patients if mammo else sizes.test_slides
    n = n_test if domain.role == "target" else n_test + (sizes.mammo_patients if mammo else sizes.slides)
    ids = [f"{domain.name}-{i:04d}" if mammo else f"{domain.name}-S{i:03d}" for i in range(n)]
    labels = np.arange(n) % 2
    if domain.role == "target":
        splits = {i: "test" for i in ids}
    else:
        splits = assign_splits(rng, ids, dict(zip(ids, labels.tolist(), strict=True)), n_test)
    labelled = np.ones(n, dtype=bool)
    if labelled_share < 1.0:
        train = np.asarray([splits[i] == "train" for i in ids])
        keep = balanced(rng, labels[train], labelled_share) == labels[train]  # exactly the share, per class
        labelled[np.flatnonzero(train)] = keep
    return Cohort(ids, labels, splits, labelled)


def _oracle_dir(path: Path) -> Path:
    return Path(path.parts[0] + ORACLE_SUFFIX, *path.parts[1:])


def _birads(rng: np.random.Generator, label: int) -> int:
    return int(rng.choice([4, 5])) if label else int(rng.choice([2, 3]))


def write_mammo(out: Path, domain: Domain, cohort: Cohort, sizes: Sizes, rng: np.random.Generator,
                oracle: bool) -> list[dict[str, Any]]:  # fmt: skip
    """One hospital: two views per patient as DICOM with ROI masks (and cue-free copies); its manifest rows.

    BI-RADS is drawn from the label, so it carries the label's noise and nothing more; the lesion mask marks
    where the mass is in both classes."""
    style = domain.style
    assert isinstance(style, MammoStyle)
    labels = cohort.labels
    looks = labels ^ (rng.random(len(labels)) < sizes.label_noise)
    cues = balanced(rng, labels, domain.cue)
    tilts = 2.0 * balanced(rng, labels, (1 + domain.confound) / 2) - 1 if domain.confound else np.zeros(len(labels))
    region = cue_region(MAMMO_SIDE)
    rows = []
    for k, patient in enumerate(cohort.ids):
        label, shown = int(labels[k]), tilted(style, float(tilts[k]))
        birads = _birads(rng, label)
        for view in ("CC", "MLO"):
            case = render_breast(rng, bool(looks[k]))
            case.birads = birads
            stored = apply_style(case.image, shown, rng)
            folder = Path("mammo") / domain.name / patient
            if oracle:  # the cue-free copy shares the ROI mask of the main image
                write_view(out, _oracle_dir(folder), case, stored, shown, laterality="L", view=view, roi=False)
            if cues[k]:
                stored = stored.copy()
                stored[region] = marker_value(shown)
            row = write_view(out, folder, case, stored, shown, laterality="L", view=view)
            rows.append({**row, "sample_id": f"{patient}-L{view}", "patient_id": patient,
                         "dataset": "synth_v2_mammo", "domain": domain.name, "split": cohort.splits[patient],
                         "label": label, "causal": int(looks[k]), "cue": int(cues[k]),
                         "style_tilt": float(tilts[k]), "latent": label})  # fmt: skip
            if not cohort.labelled[k]:
                rows[-1].update(label=None, grade=None)
    return rows


def write_patho(out: Path, domain: Domain, cohort: Cohort, sizes: Sizes, rng: np.random.Generator,
                oracle: bool, patients: list[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One centre: slides (pyramidal TIFF + ASAP XML of the labelled tumour cells) and one row per cell.

    A tumour slide has a connected block of g × (g − 1) tumour cells; the grade (bach4) is drawn from the cell's
    label and the tumour polygons are the labelled cells: both carry the label's noise and nothing more.
    ``patients``: the patient id of each slide (paired scenarios); by default a slide is its own patient."""
    assert isinstance(domain.style, PathoStyle)
    style = replace(domain.style, mpp=SLIDE_MPP)
    g = sizes.grid
    grids = []
    for label in cohort.labels:
        cells = np.zeros((g, g), dtype=int)
        if label:
            left = int(rng.integers(0, 2))
            cells[:, left : left + g - 1] = 1
        grids.append(cells)
    flat = np.concatenate([cells.ravel() for cells in grids])
    cues = balanced(rng, flat, domain.cue).reshape(len(grids), g, g)
    tilts = 2.0 * balanced(rng, flat, (1 + domain.confound) / 2) - 1 if domain.confound else 0 * flat
    tilts = tilts.reshape(len(grids), g, g)
    rows = []
    for k, slide in enumerate(cohort.ids):
        labels = grids[k]
        looks = labels ^ (rng.random((g, g)) < sizes.label_noise)
        inked, clean = render_patho_slide(rng, looks, style, tilts[k], cues[k].astype(bool))
        stem = Path("patho") / domain.name / slide
        polygons = [Polygon(points=cell_polygon(i, j), label="Tumor", positive=True, group="_0")
                    for i, j in zip(*np.nonzero(labels), strict=True)]  # fmt: skip
        write_asap_xml(out / stem.with_suffix(".xml"), polygons)
        for rgb, folder in ((inked, stem), *(((clean, _oracle_dir(stem)),) if oracle else ())):
            write_pyramid_tiff(out / folder.with_suffix(".tif"), rgb, mpp=SLIDE_MPP, tile=128,
                               compression=style.compression, quality=style.jpeg_quality, min_size=64)  # fmt: skip
        for i in range(g):
            for j in range(g):
                label = int(labels[i, j])
                grade = int(rng.choice([2, 3])) if label else int(rng.choice([0, 1]))
                rows.append({
                    "sample_id": f"{slide}-x{j * CELL}-y{i * CELL}",
                    "patient_id": patients[k] if patients else slide, "modality": "patho",
                    "dataset": "synth_v2_patho", "domain": domain.name, "path": stem.with_suffix(".tif").as_posix(),
                    "split": cohort.splits[slide], "label": label, "grade": grade, "grade_scheme": "bach4",
                    "roi_path": stem.with_suffix(".xml").as_posix(), "x": j * CELL, "y": i * CELL, "size": PATCH,
                    "mpp": PATCH_MPP, "parent_id": slide, "label_source": "annotated", "causal": int(looks[i, j]),
                    "cue": int(cues[k, i, j]), "style_tilt": float(tilts[k, i, j]), "latent": label,
                })  # fmt: skip
    return rows


# -- the whole scenario -----------------------------------------------------------------------------------
def oracle_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every row reading the cue-free copy of its image (same ids, splits, labels and ROI files)."""
    oracle = manifest.copy()
    oracle["path"] = oracle["path"].map(lambda p: _oracle_dir(Path(p)).as_posix())
    return oracle


def shuffled_pairs(manifest: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The pathology training rows' patient ids permuted among the training patients with no fixed point: every
    slide is paired with another patient's mammograms (the shuffled-pair control); other rows unchanged."""
    out = manifest.copy()
    rows = (out["modality"] == "patho") & (out["split"] == "train")
    patients = np.asarray(sorted(out.loc[rows, "patient_id"].unique()))
    order = rng.permutation(len(patients))
    mapping = dict(zip(patients[order], patients[np.roll(order, 1)], strict=True))  # a cycle: no fixed point
    out.loc[rows, "patient_id"] = out.loc[rows, "patient_id"].map(mapping)
    return out


def _write_domain(job: tuple[str, Domain, Cohort, Sizes, list[int], bool, list[str] | None]) -> list[dict[str, Any]]:
    out, domain, cohort, sizes, seed, oracle, patients = job
    rng = np.random.default_rng(seed)
    if domain.modality == "mammo":
        return write_mammo(Path(out), domain, cohort, sizes, rng, oracle)
    return write_patho(Path(out), domain, cohort, sizes, rng, oracle, patients)


def _jobs(spec: Scenario, out: Path, seed: int, oracle: bool) -> list[tuple]:
    jobs = []
    mammo_cohort: Cohort | None = None
    for index, domain in enumerate(spec.domains):
        code = MODALITY_CODE[domain.modality]
        plan_rng = np.random.default_rng([seed, code, index, 0])
        share = spec.mammo_labelled if domain.modality == "mammo" else 1.0
        cohort, patients = plan(domain, spec.sizes, plan_rng, share), None
        if spec.paired and domain.modality == "mammo":
            mammo_cohort = cohort
        elif spec.paired and mammo_cohort is not None:  # the same patients, one slide each
            patients = mammo_cohort.ids
            labels = mammo_cohort.labels.copy()
            if spec.paired == "independent":
                labels = plan_rng.permutation(labels)
            ids = [f"{p}-S" for p in patients]
            splits = {f"{p}-S": mammo_cohort.splits[p] for p in patients}
            cohort = Cohort(ids, labels, splits, np.ones(len(ids), dtype=bool))
        jobs.append((str(out), domain, cohort, spec.sizes, [seed, code, index], oracle, patients))
    return jobs


def write_scenario(
    out: str | Path, name: str, seed: int, *, sizes: Sizes | None = None, oracle: bool = True,
    workers: int | None = None, progress: Progress | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Write scenario ``name`` for generator seed ``seed`` under ``out`` (see the module doc); return its manifest.

    ``workers``: processes writing domains side by side (default: the CPUs, at most one per domain); the files
    do not depend on it. ``progress(modality, domains_done)`` is called as each domain is written.
    """
    spec = scenario(name, sizes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(spec, out, seed, oracle)
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    results: list[list[dict[str, Any]]] = []
    if workers <= 1:
        for job in jobs:
            results.append(_write_domain(job))
            if progress:
                progress(job[1].modality, 1)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for job, rows in zip(jobs, pool.map(_write_domain, jobs), strict=True):
                results.append(rows)
                if progress:
                    progress(job[1].modality, 1)
    manifest = pd.DataFrame([row for rows in results for row in rows])
    write_manifest(manifest, out / "manifest.csv")
    if oracle:
        write_manifest(oracle_rows(manifest), out / "manifest_oracle.csv")
    if spec.paired:
        write_manifest(shuffled_pairs(manifest, np.random.default_rng([seed, 9])), out / "manifest_shuffled.csv")
    probe(manifest).to_csv(out / "probe.csv", index=False)
    truth = {
        "generator_version": GENERATOR_VERSION, "scenario": spec.name, "seed": seed, "description": spec.description,
        "sizes": asdict(spec.sizes), "paired": spec.paired, "mammo_labelled": spec.mammo_labelled,
        "domains": [{"name": d.name, "modality": d.modality, "role": d.role, "cue": d.cue, "confound": d.confound,
                     "style": asdict(d.style)} for d in spec.domains],
    }  # fmt: skip
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    return manifest


def probe(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per domain: P(cue = label) (NaN where no cue is drawn), and the AUROC of the cue alone and of the causal
    appearance alone (on the true labels, ``latent``, so unlabelled rows count)."""
    from mammopath.metrics import auroc

    out = []
    for (modality, domain), group in manifest.groupby(["modality", "domain"], sort=True):
        y = group["latent"].astype(int).to_numpy()
        cue = group["cue"].astype(int).to_numpy()
        drawn = bool(cue.any())  # a domain without the cue has no agreement to report
        out.append({"modality": modality, "domain": domain, "n": len(group), "cue_rate": float(cue.mean()),
                    "cue_agreement": float((cue == y).mean()) if drawn else float("nan"),
                    "cue_only_auroc": auroc(cue.astype(float), y),
                    "causal_only_auroc": auroc(group["causal"].astype(float).to_numpy(), y)})  # fmt: skip
    return pd.DataFrame(out)
