from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammopath.datasets.manifest_dataset import ManifestDataset
from mammopath.errors import ConfigError
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


def _two_passes(ds: ManifestDataset, before_second=None) -> list[dict]:
    torch.manual_seed(0)  # the augmentations' generator is seeded from torch's seed at its first draw
    [ds[i] for i in range(len(ds))]
    if before_second is not None:
        before_second()
    return [ds[i] for i in range(len(ds))]


def test_decoded_cache_gives_the_uncached_samples_without_reading_files_again(manifest, synth_root, tmp_path) -> None:
    import shutil

    rows = pd.concat([manifest[manifest["modality"] == m].head(4) for m in ("mammo", "patho")]).reset_index(drop=True)
    files = {p for col in ("path", "roi_path") for p in rows[col] if isinstance(p, str) and p}
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_root / name, tmp_path / name)
    kwargs = {"image_size": 32, "augment": True}
    cached = ManifestDataset(rows, tmp_path, decoded_cache_mb=64, **kwargs)

    # the second pass must come from memory: the files are gone
    def delete_files() -> None:
        for modality in ("mammo", "patho"):
            shutil.rmtree(tmp_path / modality)

    second = _two_passes(cached, before_second=delete_files)
    reference = _two_passes(ManifestDataset(rows, synth_root, **kwargs))
    for got, want in zip(second, reference, strict=True):
        torch.testing.assert_close(got["image"], want["image"], atol=0, rtol=0)
        torch.testing.assert_close(got["mask"], want["mask"], atol=0, rtol=0)
        assert (got["sample_id"], got["has_mask"], got["meta"]) == (want["sample_id"], want["has_mask"], want["meta"])
    info = cached.decoded_cache_info()
    assert info["rows"] == len(rows) and info["bytes"] == sum(s["image"].nbytes + s["mask"].nbytes for s in second)
    # a worker (pickled dataset) starts with an empty cache of its own
    assert pickle.loads(pickle.dumps(cached)).decoded_cache_info()["rows"] == 0


def test_decoded_cache_stops_at_its_budget_and_is_off_by_default(manifest, synth_root) -> None:
    rows = manifest[manifest["modality"] == "mammo"].head(3)
    one = (1 * 32 * 32 + 32 * 32) * 4  # a mammogram and its mask, float32, at 32 px
    ds = ManifestDataset(rows, synth_root, image_size=32, decoded_cache_mb=1.5 * one / 2**20)
    [ds[i] for i in range(3)]
    assert ds.decoded_cache_info() == {"rows": 1, "bytes": one, "budget": int(1.5 * one)}
    # what a caller does to a sample in place never reaches the cache
    first = ds[0]["image"].clone()
    ds[0]["image"].add_(1.0)
    torch.testing.assert_close(ds[0]["image"], first, atol=0, rtol=0)
    off = ManifestDataset(rows, synth_root, image_size=32)
    [off[i] for i in range(3)]
    assert off.decoded_cache_info()["rows"] == 0
    with pytest.raises(ConfigError, match="decoded_cache_mb must be >= 0"):
        ManifestDataset(rows, synth_root, decoded_cache_mb=-1)
