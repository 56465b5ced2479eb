from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mammopath.datasets.manifest_dataset import ManifestDataset
from mammopath.io.annotations import read_asap_xml
from mammopath.io.dicom import read_mammogram
from mammopath.io.masks import rasterize
from mammopath.io.slide import open_slide
from mammopath.manifest import load_manifest


@pytest.fixture(scope="module")
def manifest(synth_root: Path):
    return load_manifest(synth_root / "manifest.csv", synth_root, check_files=True)


def test_mammo_sample_matches_reader(manifest, synth_root: Path) -> None:
    rows = manifest[manifest["modality"] == "mammo"]
    row = rows[rows["laterality"] == "R"].iloc[0]
    ds = ManifestDataset(rows[rows["sample_id"] == row["sample_id"]], synth_root, image_size=(40, 32))
    sample = ds[0]
    assert sample["image"].shape == (1, 40, 32) and sample["mask"].shape == (40, 32)
    assert sample["has_mask"] and sample["mask"].sum() > 0
    assert sample["label"] == row["label"] and sample["grade"] == row["grade"]
    assert sample["modality"] == "mammo" and sample["sample_id"] == row["sample_id"]
    # canonical side: a right breast is mirrored so the chest wall is on the left
    image, _ = read_mammogram(synth_root / row["path"])
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image[:, ::-1].copy())[None, None], size=(40, 32), mode="bilinear", antialias=True
    )[0]
    torch.testing.assert_close(sample["image"], expected.clamp(0, 1), atol=1e-5, rtol=0)
    assert sample["image"][0, :, :4].mean() > sample["image"][0, :, -4:].mean()


def test_patho_patch_matches_slide_and_polygons(manifest, synth_root: Path) -> None:
    looks_tumour = manifest["causal"].astype(str) == "1"  # the appearance (the label carries designed noise)
    rows = manifest[(manifest["modality"] == "patho") & looks_tumour]
    row = rows.iloc[0]
    ds = ManifestDataset(rows.head(1), synth_root, image_size=int(row["size"]))
    sample = ds[0]
    slide = open_slide(synth_root / row["path"])
    region = slide.read_region((int(row["x"]), int(row["y"])), int(row["size"]), float(row["mpp"]))
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), region / 255.0, atol=1e-6)
    polygons = read_asap_xml(synth_root / row["roi_path"])
    mask = rasterize(
        polygons,
        (int(row["size"]),) * 2,
        downsample=float(row["mpp"]) / slide.mpp,
        origin=(int(row["x"]), int(row["y"])),
    )
    assert sample["has_mask"] and sample["mask"].mean().item() == pytest.approx(mask.mean(), abs=1e-6)
    assert sample["mask"].mean() >= 0.5  # appearance 1 = tumour fraction >= 0.5 (synth ground truth)


def test_missing_labels_are_minus_one_and_dataset_pickles(manifest, synth_root: Path) -> None:
    rows = manifest[manifest["modality"] == "mammo"].head(2).copy()
    rows["label"] = rows["label"].astype("Int64")
    rows.loc[rows.index[0], "label"] = None
    rows.loc[rows.index[0], "grade"] = None
    ds = ManifestDataset(rows, synth_root, image_size=16)
    assert ds[0]["label"] == -1 and ds[0]["grade"] == -1
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["image"], ds[1]["image"])


def test_augment_keeps_image_and_mask_aligned(manifest, synth_root: Path) -> None:
    looks_tumour = manifest["causal"].astype(str) == "1"  # the appearance (the label carries designed noise)
    rows = manifest[(manifest["modality"] == "patho") & looks_tumour].head(1)
    plain = ManifestDataset(rows, synth_root, image_size=32)[0]
    torch.manual_seed(3)
    aug = ManifestDataset(rows, synth_root, image_size=32, augment=True)[0]
    # the same rigid transform is applied to both: the transformed pair is one of the 8 dihedral images
    candidates = []
    for k in range(4):
        for flip in (False, True):
            img, msk = torch.rot90(plain["image"], k, (1, 2)), torch.rot90(plain["mask"], k, (0, 1))
            if flip:
                img, msk = img.flip(2), msk.flip(1)
            candidates.append(torch.equal(img, aug["image"]) and torch.equal(msk, aug["mask"]))
    assert any(candidates)
