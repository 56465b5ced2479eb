"""`CBISDDSMDataModule`: CBIS-DDSM mammograms from the TCIA release as downloaded."""

from __future__ import annotations

from mammopath.datamodules.benchmark import BenchmarkDataModule


class CBISDDSMDataModule(BenchmarkDataModule):
    """CBIS-DDSM (TCIA) full mammograms, mammography only.

    ``root`` holds ``CBIS-DDSM/`` (legacy or NBIA layout) and the four description CSVs. Domain: one,
    ``cbis_ddsm`` (the scanners of the digitized films are not in the metadata). Splits: the official
    test sets (plus the patients that also appear in an official test CSV of the other lesion type) are
    ``test``; ``val`` is ~15% of the remaining patients by a deterministic hash (``data_manifests/``).
    Labels: malignant if any abnormality of the image is MALIGNANT; grade: max BI-RADS assessment.
    Arguments: those of :class:`~mammopath.datamodules.benchmark.BenchmarkDataModule`.
    """

    benchmark = "cbis-ddsm"
    modality = "mammo"
    release_folder = "."
    release_entries = ("CBIS-DDSM", "manifest-*", "*case_description*.csv", "metadata.csv")
    benchmark_grade_schemes = ("birads",)
