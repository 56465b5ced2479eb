from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mammopath.errors import MissingMPPError, SlideReadError
from mammopath.io.slide import SlideCache, open_slide
from mammopath.synth.patho import write_pyramid_tiff


def structured(size: int = 512) -> np.ndarray:
    """Smooth structure (so downsampling paths can be compared) plus a few sharp features."""
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack(
        [128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 31.0), 128 + 60 * np.sin((xx + yy) / 41.0)], axis=-1
    )
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.tif"
    return write_pyramid_tiff(path, structured(), mpp=0.25, tile=128, quality=95)


def test_pyramid_and_mpp_from_resolution_tags(slide_path: Path) -> None:
    slide = open_slide(slide_path)
    assert slide.level_dimensions == ((512, 512), (256, 256), (128, 128))
    assert slide.level_downsamples == (1.0, 2.0, 4.0)
    assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "tiff_resolution"


def test_level_k_agrees_with_level0_downsampled(slide_path: Path) -> None:
    slide = open_slide(slide_path)
    loc, size = (200, 136), (64, 48)
    direct = slide.read_level(loc, 1, size).astype(float)
    via0 = slide.read_level(loc, 0, (128, 96)).astype(float)
    down = via0.reshape(48, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(direct - down).mean() < 3.0  # JPEG noise only
    # the MPP path picks level 1 for 0.5 µm/px and must match the direct read exactly
    np.testing.assert_array_equal(slide.read_region(loc, size, mpp=0.5), direct.astype(np.uint8))
    # a target between levels resamples from the finer level to exactly the requested size
    between = slide.read_region(loc, (40, 30), mpp=0.8)
    assert between.shape == (30, 40, 3)


def test_edge_padding(slide_path: Path) -> None:
    slide = open_slide(slide_path, pad_value=255)
    patch = slide.read_level((480, 500), 0, (64, 64))
    assert patch.shape == (64, 64, 3)
    assert (patch[12:, :] == 255).all() and (patch[:, 32:] == 255).all()
    np.testing.assert_array_equal(patch[:12, :32], slide.read_level((480, 500), 0, (32, 12)))
    outside = slide.read_level((-100, -100), 0, (50, 50))
    assert (outside == 255).all()


def test_missing_and_absurd_mpp(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "nompp.tif", structured(256), mpp=None, tile=128)
    slide = open_slide(path)
    assert slide.mpp is None
    with pytest.raises(MissingMPPError, match="nompp.tif.*manifest 'mpp'"):
        slide.read_region((0, 0), 32, mpp=0.5)
    assert open_slide(path, mpp=0.5).mpp_source == "manifest"
    absurd = write_pyramid_tiff(tmp_path / "absurd.tif", structured(256), mpp=352.8, tile=128)  # a 72-dpi default
    assert open_slide(absurd).mpp is None
    assert open_slide(absurd, mpp=0.3).mpp == 0.3


def test_jpeg2000_tiles(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "j2k.tif", structured(256), mpp=0.5, tile=128, compression="jpeg2000")
    a = open_slide(path).read_level((10, 20), 0, (32, 32)).astype(int)
    assert np.abs(a - structured(256)[20:52, 10:42].astype(int)).mean() < 4


def test_pickle_has_no_handle(slide_path: Path) -> None:
    slide = open_slide(slide_path)
    first = slide.read_level((5, 5), 0, (16, 16))
    state = slide.__getstate__()
    assert state["_slide"] is None
    clone = pickle.loads(pickle.dumps(slide))
    np.testing.assert_array_equal(clone.read_level((5, 5), 0, (16, 16)), first)


def test_truncated_tiff_error_then_other_slide_works(slide_path: Path, tmp_path: Path) -> None:
    data = slide_path.read_bytes()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError, match="broken.tif"):
        open_slide(broken).read_level((0, 0), 0, (512, 512))
    assert open_slide(slide_path).read_level((0, 0), 0, (8, 8)).shape == (8, 8, 3)
    with pytest.raises(SlideReadError, match="not found"):
        open_slide(tmp_path / "nope.tif")


def test_cache_is_bounded(slide_path: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"s{i}.tif"
        p.write_bytes(slide_path.read_bytes())
        paths.append(p)
    cache = SlideCache(max_open=2)
    for p in paths * 2:
        cache.get(p).read_level((0, 0), 0, (4, 4))
        assert cache.open_count <= 2
    assert pickle.loads(pickle.dumps(cache)).open_count == 0


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_byte_identical(synth_root: Path, context: str) -> None:
    from mammopath.datasets.manifest_dataset import ManifestDataset
    from mammopath.manifest import load_manifest

    df = load_manifest(synth_root / "manifest.csv", synth_root)
    rows = df[df["modality"] == "patho"].head(12)
    dataset = ManifestDataset(rows, synth_root, image_size=32)
    single = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context=context)
    multi = torch.cat([b["image"] for b in loader])
    assert torch.equal(single, multi)
