"""Slide tiling: Otsu tissue detection, patch grid at a target MPP, annotated vs weak patch labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammopath.datasets.tiling import otsu_threshold, tile_manifest, tissue_mask
from mammopath.io.annotations import Polygon, write_asap_xml
from mammopath.manifest import validate_manifest
from mammopath.synth.patho import write_pyramid_tiff

TISSUE = (64, 448)  # level-0 square of tissue, x and y
TUMOUR = np.array([[128.0, 128.0], [256.0, 128.0], [256.0, 256.0], [128.0, 256.0]])


def _slide(path: Path, tissue: bool) -> None:
    rng = np.random.default_rng(0)
    rgb = np.full((512, 512, 3), 242, dtype=np.uint8)
    if tissue:
        a, b = TISSUE
        rgb[a:b, a:b] = (225, 140, 200)
    noisy = np.clip(rgb.astype(np.int16) + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
    write_pyramid_tiff(path, noisy, mpp=0.5, tile=128, min_size=64)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("tiling")
    _slide(root / "blank.tif", tissue=False)
    _slide(root / "tumour.tif", tissue=True)
    _slide(root / "weak.tif", tissue=True)
    write_asap_xml(root / "tumour.xml", [Polygon(TUMOUR, "t", True, "_0")])
    photo = root / "photo.tif"
    import tifffile

    tifffile.imwrite(photo, np.full((16, 16, 3), 200, np.uint8), photometric="rgb")
    base = {"modality": "patho", "dataset": "t", "domain": "c1", "split": "train", "grade_scheme": "c17_node"}
    rows = [
        {**base, "sample_id": "blank", "patient_id": "p0", "path": "blank.tif", "label": 0, "grade": 0},
        {**base, "sample_id": "tum", "patient_id": "p1", "path": "tumour.tif", "label": 1, "grade": 3,
         "roi_path": "tumour.xml"},
        {**base, "sample_id": "weak", "patient_id": "p2", "path": "weak.tif", "label": 1, "grade": 2, "split": "val"},
        {**base, "sample_id": "photo", "patient_id": "p3", "path": "photo.tif", "label": 0, "grade": 0},
    ]  # fmt: skip
    return root, validate_manifest(pd.DataFrame(rows), root)


def test_otsu_separates_two_modes() -> None:
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.6)])
    assert 0.1 < otsu_threshold(values) <= 0.6
    assert not tissue_mask(np.full((32, 32, 3), 240, np.uint8)).any()


def test_tile_manifest_labels_drops_and_validates(slides: tuple[Path, pd.DataFrame]) -> None:
    root, df = slides
    calls: list[int | None] = []
    result = tile_manifest(df, root, size=32, mpp=1.0, min_tissue=0.5, progress=lambda total=None: calls.append(total))
    assert calls[0] == 3 and len(calls) == 4  # three slides (the strip photo is not a slide)
    assert result.dropped.values.tolist() == [["blank", "no tissue found (Otsu)"]]
    patches = validate_manifest(result.manifest, root, check_files=True)
    tum = patches[patches["parent_id"] == "tum"]
    # the extent is 32 px * 1.0 µm/px / 0.5 µm/px = 64 level-0 px; tissue spans 6x6 grid cells
    assert len(tum) == 36 and set(tum["size"]) == {32.0} and set(tum["mpp"]) == {1.0}
    grid = {(int(x), int(y)) for x, y in zip(tum["x"], tum["y"], strict=True)}
    assert grid == {(x, y) for x in range(64, 448, 64) for y in range(64, 448, 64)}
    labelled = {(int(r.x), int(r.y)) for r in tum.itertuples() if r.label == 1}
    assert labelled == {(128, 128), (192, 128), (128, 192), (192, 192)}
    assert set(tum["label_source"]) == {"annotated"} and tum["grade"].isna().all()
    assert tum.iloc[0]["sample_id"] == f"tum_x{int(tum.iloc[0]['x'])}_y{int(tum.iloc[0]['y'])}"
    weak = patches[patches["parent_id"] == "weak"]
    assert len(weak) == 36 and set(weak["label"]) == {1} and set(weak["grade"]) == {2}
    assert set(weak["label_source"]) == {"weak"} and set(weak["split"]) == {"val"} and set(weak["patient_id"]) == {"p2"}
    assert any("not slide rows" in note for note in result.notes)


def test_min_tissue_and_resolution_change_the_grid(slides: tuple[Path, pd.DataFrame]) -> None:
    root, df = slides
    coarse = tile_manifest(df, root, size=64, mpp=1.0, min_tissue=0.5).manifest
    # 128-px cells: the 4 centre cells are full tissue, the 8 edge cells half, the 4 corners a quarter
    assert (coarse["parent_id"] == "weak").sum() == 12
    strict = tile_manifest(df, root, size=48, mpp=1.0, min_tissue=1.0).manifest
    cells = strict[strict["parent_id"] == "weak"]  # 96-px cells lying wholly inside [64, 448)
    assert {(int(x), int(y)) for x, y in zip(cells["x"], cells["y"], strict=True)} == {
        (x, y) for x in (96, 192, 288) for y in (96, 192, 288)
    }


def test_camelyon17_release_prepare_tile_datamodule(tmp_path: Path) -> None:
    """The whole chain on a synthetic CAMELYON17 release: prepare → tile → leave-one-centre-out batches."""
    from mammopath.datamodules.camelyon import Camelyon17DataModule
    from mammopath.datasets import camelyon17
    from mammopath.manifest import write_manifest
    from mammopath.synth.releases_patho import write_camelyon17_release

    counts = write_camelyon17_release(tmp_path, seed=0, n_patients_per_center=3, centers=(0, 1))
    root = counts["root"]
    slides = validate_manifest(camelyon17.prepare(root).manifest, root, check_files=True)
    result = tile_manifest(slides, root, size=32, mpp=0.5, min_tissue=0.5)  # 256-px slides, 66-px patches
    assert result.dropped.empty
    patches = validate_manifest(result.manifest, root, check_files=True)
    assert set(patches["parent_id"]) == set(slides["sample_id"])
    annotated = patches[patches["label_source"] == "annotated"]
    assert set(annotated["parent_id"]) == set(slides.loc[slides["roi_path"] != "", "sample_id"])
    assert (annotated["label"] == 1).any() and (annotated["label"] == 0).any()
    manifest = write_manifest(patches, root / "patches.csv")
    dm = Camelyon17DataModule(
        root=str(root), manifest=str(manifest), holdout_domains=["camelyon17/center_1"], image_size=32, batch_size=4
    )
    dm.setup("test")
    roles = dm.roles("test", "patho")
    assert set(roles.values()) == {"source", "heldout"}
    sample = dm.datasets["test"]["patho"][0]
    assert tuple(sample["image"].shape) == (3, 32, 32)
