"""Readers: the slide patch dataset vs raw tiffslide (2), the mammogram reader vs raw pydicom decode (3)."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import Result, chunked_interleaved, torch_threads


def _patch_rows(path: Path, coords: list[tuple[int, int]], size: int, mpp: float | None) -> pd.DataFrame:
    """Manifest rows of slide patches, as the tiling writes them."""
    return pd.DataFrame(
        {
            "sample_id": [f"p{i}" for i in range(len(coords))],
            "patient_id": "bench",
            "modality": "patho",
            "dataset": "bench",
            "domain": "bench",
            "split": "train",
            "path": path.name,
            "label": 0,
            "x": [x for x, _ in coords],
            "y": [y for _, y in coords],
            "level": 0,
            "size": size,
            "mpp": np.nan if mpp is None else mpp,
            "parent_id": "slide",
        }
    )


def _loader_throughput(dataset: object, workers: int, batch_size: int = 16) -> float:
    """Patches/s of a DataLoader with ``workers`` processes, after a first pass that starts them."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=True)  # type: ignore[arg-type]
    for _ in loader:  # start the workers and open the slide in each
        pass
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        n = sum(len(batch["image"]) for batch in loader)
        best = min(best, time.perf_counter() - start)
    return n / best


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _worker_cpu(dataset: object, workers: int, batch_size: int = 16) -> float:
    """CPU seconds the worker processes of one pass spend (their start, slide opening and collation included)."""
    from torch.utils.data import DataLoader

    before = _cpu_seconds(resource.RUSAGE_CHILDREN)
    for _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers):  # type: ignore[arg-type]
        pass  # the workers exit (and are reaped) at the end of the pass, so their CPU time is counted
    return _cpu_seconds(resource.RUSAGE_CHILDREN) - before


def slide_patches(n_patches: int = 240, size: int = 224) -> list[Result]:
    """ManifestDataset patches vs tiffslide ``read_region`` on the same coordinates, in one process and with 2 workers.

    The dataset does everything training needs (handle cache, level choice, uint8 → float [0, 1] tensor, the
    sample dict); ``size`` equals the model input, so nothing is resized. The one-process lines run with one torch
    thread, as a DataLoader worker does. Level 0 and 0.5 µm/px (level 1 of a
    0.25 µm/px slide) are measured; the 2-worker line compares the DataLoader with 2 workers to raw reads in one
    process (target: the 2 workers scale, ≥ 1.8×).
    """
    import tiffslide

    from mammopath.datasets.manifest_dataset import ManifestDataset
    from mammopath.synth.patho import write_pyramid_tiff

    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tif"
        rgb = (rng.random((2048, 2048, 3)) * 255).astype(np.uint8)
        write_pyramid_tiff(path, rgb, mpp=0.25, tile=512, quality=90)
        coords = [(int(x), int(y)) for x, y in rng.integers(0, 2048 - 2 * size, (n_patches, 2))]
        raw = tiffslide.TiffSlide(path)
        for label, mpp, level in (("level 0", None, 0), ("0.5 µm/px", 0.5, 1)):
            dataset = ManifestDataset(_patch_rows(path, coords, size, mpp), tmp, image_size=size, canonical_side=None)

            def ours(indices: list[int], dataset: ManifestDataset = dataset) -> None:
                for i in indices:
                    dataset[i]

            def baseline(indices: list[int], level: int = level) -> None:
                for i in indices:
                    raw.read_region(coords[i], level, (size, size), as_array=True)

            with torch_threads(1):  # what a DataLoader worker runs with
                t_ours, t_raw = chunked_interleaved(ours, baseline, list(range(n_patches)), repeats=3)
            ratio = t_raw / t_ours
            results.append(
                Result(
                    "2",
                    f"slide patch dataset, {label}, 1 process",
                    n_patches / t_ours,
                    n_patches / t_raw,
                    "patches/s",
                    ratio,
                    "throughput dataset / raw tiffslide read_region",
                    ">= 0.90",
                )
            )
            if mpp is None:
                two = _loader_throughput(dataset, workers=2)
                raw_rate = n_patches / t_raw
                with torch_threads(1):
                    start = _cpu_seconds(resource.RUSAGE_SELF)
                    baseline(list(range(n_patches)))
                    raw_cpu = _cpu_seconds(resource.RUSAGE_SELF) - start
                ideal = 2 * raw_cpu / _worker_cpu(dataset, workers=2)
                results.append(
                    Result(
                        "2",
                        f"slide patch dataset, {label}, 2 workers",
                        two,
                        raw_rate,
                        "patches/s",
                        two / raw_rate,
                        "DataLoader (2 workers, batch 16) / raw read_region in 1 process",
                        ">= 1.80",
                    ),
                )
                results.append(
                    Result(
                        "2",
                        f"slide patch dataset, {label}, 2 workers on 2 idle cores (CPU-time bound)",
                        raw_cpu * 1000 / n_patches * 2 / ideal,
                        raw_cpu * 1000 / n_patches,
                        "CPU ms/patch",
                        ideal,
                        "2 x raw CPU per patch / workers' CPU per patch: 2 workers' speed-up without other load",
                        "reported",
                    )
                )
        raw.close()
    return results


def mammograms(n_files: int = 40, shape: tuple[int, int] = (1024, 832)) -> list[Result]:
    """read_mammogram (LUTs, polarity, [0, 1] float32) vs raw ``pydicom.dcmread(...).pixel_array`` on the same files.

    The target: the reader's own work (everything after the decode) is at most 25% of the decode, ratio ≥ 0.80.
    """
    import pydicom

    from mammopath.io.dicom import read_mammogram
    from mammopath.synth.mammo import apply_style, render_mammogram, write_mammogram_dicom
    from mammopath.synth.styles import MammoStyle

    rng = np.random.default_rng(0)
    style = MammoStyle("bench", bits_stored=14)
    with tempfile.TemporaryDirectory() as tmp:
        case = render_mammogram(rng, shape, True, False)
        stored = apply_style(case.image, style, rng)
        paths = [
            write_mammogram_dicom(Path(tmp) / f"{i}.dcm", stored, style, patient_id="bench", laterality="L", view="CC")
            for i in range(n_files)
        ]

        def ours(files: list[Path]) -> None:
            for p in files:
                read_mammogram(p)

        def baseline(files: list[Path]) -> None:
            for p in files:
                pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is the work measured

        t_ours, t_raw = chunked_interleaved(ours, baseline, paths, chunk=5, repeats=5)
    ratio = t_raw / t_ours
    return [
        Result(
            "3",
            f"mammogram reader (14-bit, {shape[0]}x{shape[1]})",
            n_files / t_ours,
            n_files / t_raw,
            "images/s",
            ratio,
            "throughput read_mammogram / raw pydicom decode",
            ">= 0.80",
        )
    ]
