"""The synthetic benchmark: real formats, designed signal, designed shift, determinism."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
import tiffslide

from mammopath.manifest import load_manifest
from mammopath.synth.benchmark import make_synth_benchmark
from mammopath.synth.mammo import lesion_mask, render_mammogram
from mammopath.synth.patho import NUCLEI, render_slide
from mammopath.synth.styles import PathoStyle, SynthConfig


def test_manifest_valid_and_patient_disjoint(synth_root: Path) -> None:
    df = load_manifest(synth_root / "manifest.csv", synth_root, check_files=True)
    assert set(df["domain"]) == {"hospital_a", "hospital_b", "hospital_c", "centre_1", "centre_2", "centre_3"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    for domain, group in df.groupby("domain"):
        assert set(group["label"].dropna()) == {0, 1}, domain


def test_domain_styles_are_in_the_files(synth_root: Path) -> None:
    df = pd.read_csv(synth_root / "manifest.csv")
    first = {d: synth_root / g["path"].iloc[0] for d, g in df.groupby("domain")}
    a, b, c = (pydicom.dcmread(first[d]) for d in ("hospital_a", "hospital_b", "hospital_c"))
    assert (a.BitsStored, a.PhotometricInterpretation) == (16, "MONOCHROME2") and "ImagerPixelSpacing" in a
    assert (b.BitsStored, b.PhotometricInterpretation) == (12, "MONOCHROME1") and "PixelSpacing" in b
    assert c.BitsStored == 14 and c.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    s1, s2 = tiffslide.TiffSlide(first["centre_1"]), tiffslide.TiffSlide(first["centre_2"])
    assert s1.properties["tiffslide.mpp-x"] == pytest.approx(0.5) and s2.properties["tiffslide.mpp-x"] == pytest.approx(
        0.46
    )
    assert s1.level_count >= 2
    with tifffile.TiffFile(first["centre_1"]) as t1, tifffile.TiffFile(first["centre_3"]) as t3:
        assert t1.pages[0].compression == tifffile.COMPRESSION.JPEG
        assert t3.pages[0].compression == tifffile.COMPRESSION.JPEG2000
        assert t1.pages[0].is_tiled and t1.pages[0].tilewidth == 128


def test_paired_cohort_has_both_modalities(synth_root: Path) -> None:
    df = load_manifest(synth_root / "paired_manifest.csv", synth_root, check_files=True)
    per_patient = df.groupby("patient_id")["modality"].agg(set)
    assert all(m == {"mammo", "patho"} for m in per_patient) and len(per_patient) == 20  # tests/conftest.py
    mammo = df[df["modality"] == "mammo"].groupby("patient_id")["label"].first()
    slide_positive = df[df["modality"] == "patho"].groupby("patient_id")["label"].max()
    assert (mammo == slide_positive.reindex(mammo.index).fillna(0)).all()  # malignant patients have tumour


def test_paired_latents_are_rendered_in_both_modalities(synth_root: Path) -> None:
    """Lesion size and tissue density of each paired patient are visible in its DICOMs and its slide."""
    import tifffile
    from scipy.stats import spearmanr

    from mammopath.io.dicom import read_mammogram, read_roi_mask

    latents = pd.read_csv(synth_root / "paired_latents.csv").set_index("patient_id")
    assert latents["lesion_size"].between(0, 1).all() and latents["density"].between(0, 1).all()
    background, lesion_area, stroma = [], [], []
    for patient in latents.index:
        folder = synth_root / "paired" / "mammo" / patient
        image, _ = read_mammogram(folder / "L_CC.dcm")
        mask = read_roi_mask(folder / "L_CC_roi.dcm") > 0
        breast = (image > 0.05) & ~mask
        background.append(float(np.median(image[breast])))
        lesion_area.append(float(mask.sum()))
        with tifffile.TiffFile(synth_root / "paired" / "patho" / f"{patient}.tif") as tif:
            rgb = tif.pages[0].asarray().astype(float)
        od = -np.log((rgb + 1) / 256)
        tissue = od.sum(axis=2) > 0.3
        stroma.append(float(np.median(od[..., 1][tissue])))  # eosin absorbs green
    assert spearmanr(background, latents["density"]).statistic > 0.8
    assert spearmanr(stroma, latents["density"]).statistic > 0.8
    assert spearmanr(lesion_area, latents["lesion_size"]).statistic > 0.6


def test_causal_signal_shapes() -> None:
    """Malignant masses are less compact (perimeter² / area) than benign ones."""
    from scipy import ndimage

    def compactness(mask: np.ndarray) -> float:
        edge = mask & ~ndimage.binary_erosion(mask)
        return edge.sum() ** 2 / mask.sum()

    rng = np.random.default_rng(0)
    malignant = [compactness(lesion_mask(rng, (128, 128), (64, 64), 14, True)) for _ in range(10)]
    benign = [compactness(lesion_mask(rng, (128, 128), (64, 64), 14, False)) for _ in range(10)]
    assert min(malignant) > max(benign)
    case = render_mammogram(np.random.default_rng(1), (96, 80), True, marker=True)
    assert case.image.max() <= 1.0 and (case.image[2:6, 80 - 2 - 4 : 78] == 1.0).all()


def test_nuclear_density_grows_with_grade() -> None:
    """Hematoxylin (nuclei) content of a lesion rises with its grade; eosin is switched off to isolate it."""
    style = PathoStyle("t", e_scale=0.0)
    darkness = []
    for grade in range(4):
        values = []
        for seed in range(3):
            case = render_slide(np.random.default_rng(seed), 256, [grade] if grade else [], style, None)
            region = case.grade_map == grade if grade else case.tissue
            values.append(float(255 - case.rgb[region].mean()))
        darkness.append(np.mean(values))
    assert darkness == sorted(darkness) and darkness[3] > 1.5 * darkness[0]
    assert [NUCLEI[g][0] for g in range(4)] == sorted(NUCLEI[g][0] for g in range(4))


def test_seeded_and_deterministic(tmp_path: Path) -> None:
    cfg = replace(
        SynthConfig(),
        mammo_patients_per_domain=2,
        slides_per_domain=2,
        slide_size=256,
        tile=128,
        mammo_styles=SynthConfig().mammo_styles[:1],
        patho_styles=SynthConfig().patho_styles[:1],
    )

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
        return h.hexdigest()

    make_synth_benchmark(tmp_path / "a", seed=5, cfg=cfg, paired=False)
    make_synth_benchmark(tmp_path / "b", seed=5, cfg=cfg, paired=False)
    make_synth_benchmark(tmp_path / "c", seed=6, cfg=cfg, paired=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_paired_patches_must_be_positive(tmp_path: Path) -> None:
    from mammopath.errors import ConfigError
    from mammopath.synth.benchmark import write_paired_cohort

    with pytest.raises(ConfigError, match="paired_patches"):
        write_paired_cohort(tmp_path, replace(SynthConfig(), paired_patches=0), np.random.default_rng(0))
    assert not any(tmp_path.iterdir())  # refused before anything was written
