"""Reader throughput: slide patches vs raw tiffslide, mammograms vs raw pydicom decode."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.common import Result, interleaved


def slide_patches(n_patches: int = 300, size: int = 224) -> list[Result]:
    """Patches through SlideCache/SlideReader vs tiffslide ``read_region`` on the same coordinates."""
    import tiffslide

    from mammopath.io.slide import SlideCache
    from mammopath.synth.patho import write_pyramid_tiff

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tif"
        rgb = (rng.random((2048, 2048, 3)) * 255).astype(np.uint8)
        write_pyramid_tiff(path, rgb, mpp=0.25, tile=512, quality=90)
        coords = [tuple(int(v) for v in rng.integers(0, 2048 - size, 2)) for _ in range(n_patches)]
        raw = tiffslide.TiffSlide(path)
        cache = SlideCache(4)

        def ours() -> None:
            for x, y in coords:
                cache.get(path).read_region((x, y), size)

        def baseline() -> None:
            for x, y in coords:
                raw.read_region((x, y), 0, (size, size), as_array=True)

        t_ours, t_raw = interleaved(ours, baseline, repeats=3)

        def ours_mpp() -> None:  # level choice + resampling to 0.5 µm/px
            for x, y in coords:
                cache.get(path).read_region((x, y), size, mpp=0.5)

        def baseline_mpp() -> None:  # the same work by hand: level 1 read
            for x, y in coords:
                raw.read_region((x, y), 1, (size, size), as_array=True)

        t_ours_mpp, t_raw_mpp = interleaved(ours_mpp, baseline_mpp, repeats=3)
    results = []
    for name, a, b in (
        ("slide patches, level 0", t_ours, t_raw),
        ("slide patches at 0.5 µm/px", t_ours_mpp, t_raw_mpp),
    ):
        ratio = (n_patches / a) / (n_patches / b)
        results.append(
            Result(
                name,
                n_patches / a,
                n_patches / b,
                "patches/s",
                ratio,
                "throughput ours / raw tiffslide",
                ">= 0.90",
                ratio >= 0.90,
            )
        )
    return results


def mammograms(n_files: int = 40, shape: tuple[int, int] = (1024, 832)) -> list[Result]:
    """read_mammogram (LUT/VOI/polarity/normalisation) vs raw ``pydicom.dcmread(...).pixel_array``."""
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

        def ours() -> None:
            for p in paths:
                read_mammogram(p)

        def baseline() -> None:
            for p in paths:
                pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is the work measured

        t_ours, t_raw = interleaved(ours, baseline, repeats=3)
    ratio = (n_files / t_ours) / (n_files / t_raw)
    return [
        Result(
            "mammograms (14-bit, 1024x832)",
            n_files / t_ours,
            n_files / t_raw,
            "images/s",
            ratio,
            "throughput ours / raw pydicom decode (ours also applies LUTs and normalises)",
            "reported",
            True,
        )
    ]
