"""Generator v2: each scenario's ground truth read back from the written pixels and files, not from its columns.

Independent computations throughout: DICOM pixels decoded with pydicom and scaled by hand, slides read with
tifffile, tumour polygons with the ASAP reader; the cue is found as the pixels where an image and its cue-free
copy differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile

from mammopath.errors import ConfigError
from mammopath.io.annotations import read_asap_xml
from mammopath.synth.lesions import cue_region
from mammopath.synth.scenarios import GENERATOR_VERSION, SCENARIOS, Sizes, scenario
from mammopath.synth.suite import balanced, write_scenario
from mammopath.synth.tissue import CELL

SOURCES_P = ("centre_1", "centre_2", "centre_4")
TINY = Sizes(mammo_patients=8, mammo_test_patients=8, slides=4, test_slides=4, grid=4)


@pytest.fixture(scope="module")
def p_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenario_p")
    write_scenario(root, "P", seed=20261207, sizes=TINY, workers=1)  # a seed nobody calibrated on
    return root


@pytest.fixture(scope="module")
def p_manifest(p_root: Path) -> pd.DataFrame:
    return pd.read_csv(p_root / "manifest.csv", keep_default_na=False)


def display(path: Path) -> np.ndarray:
    """A mammogram's display values in [0, 1] (MONOCHROME1 inverted), decoded independently of mammopath."""
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(float) / (2 ** int(ds.BitsStored) - 1)
    return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def ints(column: pd.Series) -> list[int]:
    """A numeric manifest column read as text (empty for the other modality's rows) as ints."""
    return [int(float(v)) for v in column]


def oracle_path(root: Path, rel: str) -> Path:
    first, *rest = Path(rel).parts
    return root.joinpath(first + "_oracle", *rest)


def expected_agreement(agreement: float, labels: np.ndarray) -> float:
    """The share of cue = label when each class has exactly round(agreement · n_class) agreeing items."""
    agree = sum(round(agreement * int((labels == v).sum())) for v in (0, 1))
    return agree / len(labels)


def test_every_scenario_is_defined_with_a_target_or_a_pairing_and_unknown_names_fail() -> None:
    for name, spec in SCENARIOS.items():
        assert spec.name == name
        assert spec.targets() or spec.paired
    with pytest.raises(ConfigError, match="unknown scenario 'P2'.*M1"):
        scenario("P2")


def test_balanced_draw_agrees_exactly_per_class() -> None:
    labels = np.asarray([0] * 10 + [1] * 7)
    cue = balanced(np.random.default_rng(0), labels, 0.6)
    assert ((cue == labels) & (labels == 0)).sum() == 6 and ((cue == labels) & (labels == 1)).sum() == 4
    assert not balanced(np.random.default_rng(0), labels, None).any()


def test_mammo_cue_agreement_per_domain_is_read_from_the_pixels(p_root: Path, p_manifest: pd.DataFrame) -> None:
    spec = scenario("P", TINY)
    region = cue_region(128)
    rows = p_manifest[p_manifest["modality"] == "mammo"]
    for domain, group in rows.groupby("domain"):
        seen = []
        for rel in group["path"]:
            image, clean = display(p_root / rel), display(oracle_path(p_root, rel))
            differs = np.abs(image - clean) > 1e-9
            assert not differs[~region].any(), f"{rel}: the cue-free copy differs outside the cue"
            seen.append(bool(differs[region].mean() > 0.9))
        seen_cue, labels = np.asarray(seen), group["label"].astype(int).to_numpy()
        cue = spec.domain(domain).cue
        if cue is None:
            assert not seen_cue.any(), domain
            continue
        assert (seen_cue == labels).mean() == pytest.approx(expected_agreement(cue, labels[::2]), abs=1e-9), domain
        assert list(seen_cue) == list(group["cue"].astype(bool))  # the ground-truth column says what is drawn


def test_patho_cue_agreement_per_domain_is_read_from_the_pixels(p_root: Path, p_manifest: pd.DataFrame) -> None:
    spec = scenario("P", TINY)
    rows = p_manifest[p_manifest["modality"] == "patho"]
    for domain, group in rows.groupby("domain"):
        seen = []
        for rel, slide_rows in group.groupby("path", sort=False):
            inked, clean = tifffile.imread(p_root / rel), tifffile.imread(oracle_path(p_root, rel))
            diff = np.abs(inked.astype(int) - clean.astype(int)).max(axis=-1) > 0
            for x, y in zip(ints(slide_rows["x"]), ints(slide_rows["y"]), strict=True):
                seen.append(bool(diff[y : y + CELL, x : x + CELL].mean() > 0.005))
            # ink darkens red and blue much more than green (the pen is green)
            drop = clean[diff].astype(float) - inked[diff].astype(float)
            if len(drop):
                assert drop[:, 1].mean() < 0.5 * min(drop[:, 0].mean(), drop[:, 2].mean())
        seen_cue, labels = np.asarray(seen), group["label"].astype(int).to_numpy()
        cue = spec.domain(domain).cue
        if cue is None:
            assert not seen_cue.any(), domain
            continue
        assert (seen_cue == labels).mean() == pytest.approx(expected_agreement(cue, labels), abs=1e-9), domain


def test_mammo_style_noise_per_domain_is_measured_in_the_air_of_the_images(
    p_root: Path, p_manifest: pd.DataFrame
) -> None:
    spec = scenario("P", TINY)
    measured = {}
    for domain, group in p_manifest[p_manifest["modality"] == "mammo"].groupby("domain"):
        air = np.concatenate([display(oracle_path(p_root, rel))[-12:, -12:].ravel() for rel in group["path"]])
        # air = clip(offset^gamma + N(0, noise)): its median and upper quartile lie above 0, so not clipped
        measured[domain] = (np.quantile(air, 0.75) - np.quantile(air, 0.5)) / 0.6745
        assert measured[domain] == pytest.approx(spec.domain(domain).style.noise, rel=0.25), domain
    sources = [d.name for d in spec.domains if d.role == "source" and d.modality == "mammo"]
    assert measured["hospital_c"] > 1.25 * max(measured[s] for s in sources)  # the far style is outside the range


def test_patho_haematoxylin_direction_per_domain_is_measured_in_the_slides(
    p_root: Path, p_manifest: pd.DataFrame
) -> None:
    spec = scenario("P", TINY)
    h = {d.name: np.asarray(d.style.h_vector) / np.linalg.norm(d.style.h_vector) for d in spec.domains
         if d.modality == "patho"}  # fmt: skip
    for domain, group in p_manifest[p_manifest["modality"] == "patho"].groupby("domain"):
        slides = [tifffile.imread(oracle_path(p_root, rel)) for rel in group["path"].unique()]
        rgb = np.concatenate([slide.reshape(-1, 3) for slide in slides])
        od = -np.log((rgb.astype(float) + 1) / 256)
        total = od.sum(axis=1)
        nuclei, stroma = od[total > np.quantile(total, 0.97)], od[total < np.quantile(total, 0.5)]
        direction = nuclei.mean(axis=0) - stroma.mean(axis=0)
        direction /= np.linalg.norm(direction)
        cosines = {name: float(direction @ vector) for name, vector in h.items()}
        assert cosines[domain] > 0.99, (domain, cosines)
        far = "centre_3"  # outside the source range: told apart from every source by its stain direction
        if domain == far:
            assert all(cosines[far] > cosines[s] for s in SOURCES_P), cosines
        else:
            assert cosines[domain] > cosines[far], (domain, cosines)


def test_auxiliary_targets_carry_the_labels_noise_and_nothing_more(p_root: Path, p_manifest: pd.DataFrame) -> None:
    mammo = p_manifest[p_manifest["modality"] == "mammo"]
    label, birads = mammo["label"].astype(int), mammo["grade"].astype(int)
    assert ((birads >= 4) == (label == 1)).all()  # BI-RADS follows the label, not the appearance
    patho = p_manifest[p_manifest["modality"] == "patho"]
    assert ((patho["grade"].astype(int) >= 2) == (patho["label"].astype(int) == 1)).all()
    for xml, rows in patho.groupby("roi_path"):
        boxes = {(int(p.points[:, 0].min()), int(p.points[:, 1].min())) for p in read_asap_xml(p_root / xml)}
        cells = zip(ints(rows["x"]), ints(rows["y"]), ints(rows["label"]), strict=True)
        assert boxes == {(x, y) for x, y, lab in cells if lab}
    # the appearance differs from the label at the label-noise rate only (0.03; 2,000 rows: well under 0.08)
    for frame in (mammo, patho):
        flips = (frame["causal"].astype(int) != frame["label"].astype(int)).mean()
        assert flips < 0.08


def test_the_oracle_manifest_differs_only_by_the_image_files(p_root: Path, p_manifest: pd.DataFrame) -> None:
    oracle = pd.read_csv(p_root / "manifest_oracle.csv", keep_default_na=False)
    assert list(oracle.columns) == list(p_manifest.columns)
    same = [c for c in p_manifest.columns if c != "path"]
    pd.testing.assert_frame_equal(oracle[same], p_manifest[same])
    assert all(o.startswith(("mammo_oracle/", "patho_oracle/")) for o in oracle["path"])
    truth = json.loads((p_root / "truth.json").read_text())
    assert truth["generator_version"] == GENERATOR_VERSION and truth["seed"] == 20261207


def test_m3_style_tilt_is_confounded_with_the_label_in_the_sources_only(tmp_path: Path) -> None:
    sizes = Sizes(mammo_patients=20, mammo_test_patients=20, slides=2, test_slides=2, grid=4)
    manifest = write_scenario(tmp_path, "M3", seed=5, sizes=sizes, oracle=False, workers=1)
    for domain, group in manifest.groupby("domain"):
        tilt, label = group["style_tilt"].to_numpy(), group["label"].astype(int).to_numpy()
        if domain in ("hospital_n", "centre_n"):
            assert (tilt == 0).all()
            continue
        assert ((tilt > 0) == (label == 1)).mean() == pytest.approx(0.9, abs=0.03), domain
    # the tilt is in the pixels: a mammogram's gamma moves, so the mean breast brightness of +tilt images is lower
    mammo = manifest[(manifest["domain"] == "hospital_a")]
    bright = {t: np.mean([display(tmp_path / p)[32:96, 16:64].mean() for p in g["path"]])
              for t, g in mammo.groupby("style_tilt")}  # fmt: skip
    assert bright[1.0] < bright[-1.0]


@pytest.mark.parametrize("name", ["M4", "M4N"])
def test_paired_scenarios_share_patients_and_shuffle_without_fixed_points(name: str, tmp_path: Path) -> None:
    sizes = Sizes(mammo_patients=24, mammo_test_patients=8, grid=2)
    manifest = write_scenario(tmp_path, name, seed=3, sizes=sizes, oracle=False, workers=2)
    mammo, patho = manifest[manifest["modality"] == "mammo"], manifest[manifest["modality"] == "patho"]
    assert set(mammo["patient_id"]) == set(patho["patient_id"])
    split = dict(zip(mammo["patient_id"], mammo["split"], strict=False))
    assert all(split[p] == s for p, s in zip(patho["patient_id"], patho["split"], strict=True))
    # 20% of the training patients keep their mammography label, per class; val and test keep theirs
    train = mammo[mammo["split"] == "train"].drop_duplicates("patient_id")
    kept = train["label"].notna()
    assert kept.sum() == sum(round(0.2 * (train["latent"] == v).sum()) for v in (0, 1))
    assert train.loc[~kept, "grade"].isna().all()  # BI-RADS hidden with the label
    assert mammo.loc[mammo["split"] != "train", "label"].notna().all()
    # the pathology label is the mammography one (M4) or drawn apart (M4N)
    m_label = mammo.groupby("patient_id")["latent"].first()
    p_label = patho.groupby("patient_id")["label"].max()
    agreement = float((m_label == p_label.reindex(m_label.index)).mean())
    assert agreement == 1.0 if name == "M4" else agreement < 0.8
    shuffled = pd.read_csv(tmp_path / "manifest_shuffled.csv", keep_default_na=False)
    moved = (shuffled["patient_id"] != manifest["patient_id"]).to_numpy()
    rows = ((manifest["modality"] == "patho") & (manifest["split"] == "train")).to_numpy()
    assert moved[rows].all() and not moved[~rows].any()
    train_patients = patho.loc[patho["split"] == "train", "patient_id"]
    assert sorted(shuffled.loc[rows, "patient_id"].unique()) == sorted(train_patients.unique())


def test_files_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    sizes = Sizes(mammo_patients=4, mammo_test_patients=4, slides=2, test_slides=2, grid=2)
    one = write_scenario(tmp_path / "one", "M1", seed=9, sizes=sizes, oracle=False, workers=1)
    two = write_scenario(tmp_path / "two", "M1", seed=9, sizes=sizes, oracle=False, workers=2)
    pd.testing.assert_frame_equal(one, two)
    for rel in one["path"].unique():
        a, b = (tmp_path / "one" / rel), (tmp_path / "two" / rel)
        if rel.endswith(".dcm"):
            assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)
        else:
            assert np.array_equal(tifffile.imread(a), tifffile.imread(b))


def test_both_pathology_classes_cover_the_same_nuclear_area() -> None:
    """The class is in the nuclei's shape and arrangement, not in how much haematoxylin a cell holds."""
    from mammopath.synth.tissue import NUCLEAR_AREA, render_cell

    rng = np.random.default_rng(11)
    for tumour in (False, True):
        areas = np.asarray([render_cell(rng, tumour).mean() for _ in range(40)])
        assert areas.min() >= NUCLEAR_AREA and areas.mean() < NUCLEAR_AREA + 0.02, (tumour, areas.mean())
