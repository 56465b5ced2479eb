"""The per-worker slide-handle cache stays bounded: open files and memory, over thousands of random patches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mammopath.datasets.manifest_dataset import ManifestDataset
from mammopath.synth.patho import write_pyramid_tiff

N_SLIDES, N_PATCHES, CACHE, SIZE = 50, 2000, 4, 64


def open_slide_files(folder: Path) -> int:
    """Distinct files under ``folder`` this process holds open, read from the kernel (not from the cache)."""
    fd_dir = Path("/proc/self/fd")
    paths = set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            paths.add(target)
    return len(paths)


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Probe(Dataset):
    """A patch dataset that also reports, after each read, what its worker holds."""

    def __init__(self, dataset: ManifestDataset, folder: Path) -> None:
        self.dataset, self.folder = dataset, folder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, object]:
        sample = self.dataset[index]
        info = get_worker_info()
        return {
            "worker": -1 if info is None else info.id,
            "cached": self.dataset.slides.open_count,
            "files": open_slide_files(self.folder),
            "rss": rss_bytes(),
            "checksum": float(sample["image"].sum()),
        }


@pytest.fixture(scope="module")
def many_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many_slides")
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(N_SLIDES):
        rgb = np.stack([xx * (i + 1) % 256, yy, (xx + yy + 7 * i) % 256], axis=-1).astype(np.uint8)
        write_pyramid_tiff(folder / f"s{i:02d}.tif", rgb, mpp=0.5, tile=128, quality=80)
    return folder


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc (Linux)")
def test_2000_random_patches_over_50_slides_keep_4_open_per_worker(many_slides: Path) -> None:
    rng = np.random.default_rng(0)
    slides = rng.integers(0, N_SLIDES, N_PATCHES)
    xy = rng.integers(0, 256 - SIZE, (N_PATCHES, 2))
    rows = pd.DataFrame(
        {
            "sample_id": [f"p{i}" for i in range(N_PATCHES)],
            "patient_id": [f"s{s}" for s in slides],
            "modality": "patho",
            "dataset": "synth",
            "domain": "d",
            "path": [f"s{s:02d}.tif" for s in slides],
            "x": xy[:, 0],
            "y": xy[:, 1],
            "level": 0,
            "size": SIZE,
            "mpp": np.nan,
        }
    )
    dataset = ManifestDataset(rows, many_slides, image_size=SIZE, canonical_side=None, slide_cache_size=CACHE)
    loader = DataLoader(Probe(dataset, many_slides), batch_size=25, num_workers=2)
    batches = list(loader)
    stats = pd.DataFrame({key: torch.cat([b[key] for b in batches]).numpy() for key in batches[0]})
    assert sorted(stats["worker"].unique()) == [0, 1] and len(stats) == N_PATCHES
    assert stats["cached"].max() <= CACHE and stats["files"].max() <= CACHE  # the kernel agrees with the cache
    assert stats["files"].min() >= 1  # the handle of the slide just read is open
    for _, rows_of in stats.groupby("worker"):
        rss = rows_of["rss"].to_numpy()
        warm = rss[len(rss) // 4]  # after 250 reads, ~200 slide opens per worker
        assert rss.max() - warm < 48 * 2**20, f"RSS grew by {(rss.max() - warm) / 2**20:.1f} MiB after warm-up"
    # the patches are the slides' pixels, whatever the cache evicted meanwhile
    direct = [float(torch.as_tensor(dataset[i]["image"]).sum()) for i in (0, 999, 1999)]
    np.testing.assert_allclose(stats["checksum"].to_numpy()[[0, 999, 1999]], direct, rtol=1e-6)
