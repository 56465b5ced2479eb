"""`INbreastDataModule`: INbreast mammograms from the release folder as distributed."""

from __future__ import annotations

from mammopath.datamodules.benchmark import BenchmarkDataModule


class INbreastDataModule(BenchmarkDataModule):
    """INbreast full-field digital mammograms, mammography only.

    ``root`` holds ``INbreast Release 1.0/`` (DICOMs, XML ROIs and the metadata sheet). Domain: one,
    ``inbreast`` (a single Siemens system). ``label`` is a BI-RADS proxy (4a-6 → malignant; INbreast has
    no pathology column) and the split is a deterministic patient-level 60/20/20 on the DICOM-name
    patient hash (no official split). Arguments: those of
    :class:`~mammopath.datamodules.benchmark.BenchmarkDataModule`.
    """

    benchmark = "inbreast"
    modality = "mammo"
    release_folder = "."
    release_entries = ("INbreast*",)
    benchmark_grade_schemes = ("birads",)
