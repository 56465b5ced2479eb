"""`INbreastDataModule`: INbreast mammograms from a manifest built by ``mammopath prepare inbreast``."""

from __future__ import annotations

from mammopath.datamodules.crossmodal import SingleModalityDataModule


class INbreastDataModule(SingleModalityDataModule):
    """INbreast full-field digital mammograms, mammography only.

    ``label`` is a BI-RADS proxy (4a-6 → malignant; INbreast has no pathology column) and the split
    is a deterministic patient-level 60/20/20 on the DICOM-name patient hash (no official split).
    Arguments: those of :class:`~mammopath.datamodules.crossmodal.CrossModalDataModule`.
    """

    modality = "mammo"
