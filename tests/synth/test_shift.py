"""The designed shift, measured in the pixels of the written files (not from metadata columns)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
from scipy import ndimage

from mammopath.io.dicom import read_mammogram
from mammopath.synth.benchmark import make_synth_benchmark
from mammopath.synth.mammo import marker_region
from mammopath.synth.styles import SynthConfig

SOURCES = {"mammo": ("hospital_a", "hospital_b"), "patho": ("centre_1", "centre_2")}
HELDOUT = {"mammo": "hospital_c", "patho": "centre_3"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shift")
    cfg = replace(
        SynthConfig(), mammo_patients_per_domain=40, mammo_test_patients=40, slides_per_domain=8,
        test_slides_per_domain=4, slide_size=512, tile=128,
    )  # fmt: skip
    make_synth_benchmark(root, seed=0, cfg=cfg, paired=False)
    return root


def mammo_marker_in_pixels(path: Path) -> bool:
    """A bright square in a top corner, outside the breast."""
    image, _ = read_mammogram(path)
    region = marker_region(image.shape)
    corners = [image[region], image[region[:, ::-1]]]  # away from a left or a right chest wall
    return max(float(c.mean()) for c in corners) > 0.5


def ink_in_pixels(rgb: np.ndarray) -> bool:
    """Green ink: red absorbed more than green, and blue absorbed, which neither stain gives."""
    od = -np.log((rgb.astype(float) + 1.0) / 256.0)
    return int(((od[..., 0] > od[..., 1] + 0.2) & (od[..., 2] > 0.5)).sum()) >= 3


def _agreement(cohort: Path) -> dict[str, float]:
    manifest = pd.read_csv(cohort / "manifest.csv")
    agreement = {}
    for domain in (*SOURCES["mammo"], HELDOUT["mammo"]):
        rows = manifest[manifest["domain"] == domain]
        found = [mammo_marker_in_pixels(cohort / p) for p in rows["path"]]
        agreement[domain] = float(np.mean(np.asarray(found) == (rows["label"].to_numpy() == 1)))
    for domain in (*SOURCES["patho"], HELDOUT["patho"]):
        rows = manifest[manifest["domain"] == domain]
        slide_mpp = 0.46 if domain == "centre_2" else 0.5
        matches = []
        for path, group in rows.groupby("path"):
            slide = tifffile.imread(cohort / path, level=0)
            for x, y, size, mpp, label in group[["x", "y", "size", "mpp", "label"]].itertuples(index=False):
                x, y, extent = int(x), int(y), int(round(size * mpp / slide_mpp))
                matches.append(ink_in_pixels(slide[y : y + extent, x : x + extent]) == (label == 1))
        agreement[domain] = float(np.mean(matches))
    return agreement


def test_marker_agreement_differs_between_sources_and_reverses_in_the_heldout_domain(cohort: Path) -> None:
    agreement = _agreement(cohort)
    for modality, (first, second) in SOURCES.items():
        assert agreement[first] > agreement[second] > 0.65, (modality, agreement)  # designed 0.9 > 0.75 / 0.8
        assert agreement[HELDOUT[modality]] < 0.35, (modality, agreement)  # designed 0.2: reversed
    probe = pd.read_csv(cohort / "shortcut_probe.csv").set_index("domain")
    for domain in (*SOURCES["mammo"], *SOURCES["patho"]):  # in the sources the shortcut beats the causal signal
        assert probe.at[domain, "marker_only_auroc"] > probe.at[domain, "causal_only_auroc"], domain
    for domain, measured in agreement.items():  # the metadata says what the pixels show
        assert probe.at[domain, "marker_agreement"] == pytest.approx(measured, abs=0.02), domain


def test_oracle_images_differ_only_by_the_marker(cohort: Path) -> None:
    manifest = pd.read_csv(cohort / "manifest.csv")
    oracle = pd.read_csv(cohort / "manifest_oracle.csv").set_index("sample_id")
    rows = oracle.loc[manifest["sample_id"]]  # the same samples, labels and splits, every one marker-free
    assert (rows[["label", "split", "domain"]].to_numpy() == manifest[["label", "split", "domain"]].to_numpy()).all()
    assert rows["path"].str.contains("_oracle/").all()
    mammo = manifest[(manifest["modality"] == "mammo") & manifest["split"].eq("train")].head(30)
    for path, marker in mammo[["path", "marker"]].itertuples(index=False):
        plain = pydicom.dcmread(cohort / path).pixel_array.astype(int)
        clean = pydicom.dcmread(cohort / path.replace("mammo/", "mammo_oracle/", 1)).pixel_array.astype(int)
        changed = plain != clean
        assert changed.any() == bool(marker)
        if marker:
            region = marker_region(plain.shape)
            assert not (changed & ~(region | region[:, ::-1])).any()
    slides = manifest[(manifest["modality"] == "patho") & manifest["domain"].eq("centre_1")]
    for path, group in list(slides.groupby("path"))[:3]:
        plain = tifffile.imread(cohort / path, level=0).astype(int)
        clean = tifffile.imread(cohort / path.replace("patho/", "patho_oracle/", 1), level=0).astype(int)
        inked = np.zeros(plain.shape[:2], dtype=bool)
        for x, y, size in group.loc[group["marker"] == 1, ["x", "y", "size"]].astype(int).itertuples(index=False):
            inked[y : y + 2 * size, x : x + 2 * size] = True  # 0.5 µm/px slides, patches at 1 µm/px
        changed = np.abs(plain - clean).max(axis=2) > 12
        assert changed.any() == inked.any()
        assert not (changed & ~ndimage.binary_dilation(inked, iterations=16)).any()  # JPEG blocks next to the ink
