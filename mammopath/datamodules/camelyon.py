"""CAMELYON16 and CAMELYON17 datamodules: lymph-node slides tiled into patches when the manifest is built."""

from __future__ import annotations

from mammopath.datamodules.benchmark import SlideBenchmarkDataModule


class Camelyon16DataModule(SlideBenchmarkDataModule):
    """CAMELYON16 patches; official test slides stay ``test``, ~15% of training slides are ``val``.

    ``root`` is ``CAMELYON16`` (``training/{normal,tumor}``, ``testing/images``, lesion XMLs and
    ``testing/reference.csv``). Domain: one, ``camelyon16`` (the two centres are not in the metadata).
    Patch labels come from the lesion polygons (tumour fraction); test slides carry a ``c17_node``-style
    grade from ``reference.csv``. Arguments: those of
    :class:`~mammopath.datamodules.benchmark.SlideBenchmarkDataModule`.
    """

    benchmark = "camelyon16"
    modality = "patho"
    release_folder = "CAMELYON16"
    benchmark_grade_schemes = ("c17_node",)


class Camelyon17DataModule(SlideBenchmarkDataModule):
    """CAMELYON17 patches with leave-one-centre-out, e.g. ``holdout_domains: [camelyon17/center_2]``.

    ``root`` is ``CAMELYON17`` (``training/center_N/patient_XXX_node_Y.tif``, ``stage_labels.csv``,
    lesion XMLs). Domains: the five centres, ``camelyon17/center_N`` (centre = patient // 20). Splits:
    patient-level 60/20/20 within each centre (``data_manifests/camelyon17_splits.csv``). Grade scheme
    ``c17_node`` (negative < itc < micro < macro). Arguments: those of
    :class:`~mammopath.datamodules.benchmark.SlideBenchmarkDataModule`.
    """

    benchmark = "camelyon17"
    modality = "patho"
    release_folder = "CAMELYON17"
    benchmark_grade_schemes = ("c17_node",)
