"""`CBISDDSMDataModule`: CBIS-DDSM mammograms from a manifest built by ``mammopath prepare cbis-ddsm``."""

from __future__ import annotations

from mammopath.datamodules.crossmodal import SingleModalityDataModule


class CBISDDSMDataModule(SingleModalityDataModule):
    """CBIS-DDSM (TCIA) full mammograms, mammography only.

    Splits come from the manifest: the official test sets (plus the 31 patients that also appear
    in an official test CSV of the other lesion type) are ``test``; ``val`` is ~15% of the remaining
    patients by a deterministic hash (see ``docs/datasets.md``). Labels: malignant if any
    abnormality of the image is MALIGNANT; grade: max BI-RADS assessment. Arguments: those of
    :class:`~mammopath.datamodules.crossmodal.CrossModalDataModule` (``modalities`` is fixed).
    """

    modality = "mammo"
