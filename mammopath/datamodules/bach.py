"""`BACHDataModule`: the BACH (ICIAR 2018) microscopy photos, and optionally its WSIs, as patches."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mammopath.datamodules.benchmark import SlideBenchmarkDataModule


class BACHDataModule(SlideBenchmarkDataModule):
    """BACH, pathology only.

    ``root`` is ``ICIAR2018_BACH_Challenge`` (``Photos/<Class>/*.tif`` and the ground-truth CSV). Domain:
    one, ``bach`` (BACH has no centre information, hence no LODO hold-out within it). Every photo is its
    own patient (BACH has no patient ids); the split is a deterministic per-photo 60/20/20 stratified by
    class. Photos are read whole and resized to ``image_size``; grade scheme ``bach4`` (Normal, Benign,
    InSitu, Invasive). The WSIs (``WSI/``) are tiled into patches only with ``include_wsi: true``.

    Args:
        include_wsi: also tile the BACH whole-slide images (``patch_size``, ``mpp``, ``min_tissue``).
        **kwargs: the :class:`~mammopath.datamodules.benchmark.SlideBenchmarkDataModule` arguments.
    """

    benchmark = "bach"
    modality = "patho"
    release_folder = "ICIAR2018_BACH_Challenge"
    benchmark_grade_schemes = ("bach4",)

    def __init__(self, root: str | None = None, include_wsi: bool = False, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.include_wsi = include_wsi

    def build_params(self) -> dict[str, Any]:
        return {**super().build_params(), "include_wsi": self.include_wsi}

    def slide_rows(self, manifest: pd.DataFrame) -> pd.Series:
        return manifest["x"].isna() & manifest["path"].str.startswith("WSI/")

    def postprocess(self, manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        if self.include_wsi:
            return super().postprocess(manifest)
        slides = self.slide_rows(manifest)
        notes = [f"{int(slides.sum())} WSI row(s) left out (include_wsi: false)"] if slides.any() else []
        return manifest[~slides].reset_index(drop=True), notes
