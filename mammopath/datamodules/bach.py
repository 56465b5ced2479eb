"""`BACHDataModule`: the BACH microscopy photos (and WSI patches) as a pathology-only datamodule."""

from __future__ import annotations

from mammopath.datamodules.crossmodal import SingleModalityDataModule


class BACHDataModule(SingleModalityDataModule):
    """BACH from a manifest built by ``mammopath prepare bach`` (single domain ``bach``).

    Pathology only; BACH has no centre information, hence no LODO hold-out. Photos are read whole
    (``read_microscopy``) and resized to ``image_size``. Every photo is its own patient (BACH has no
    patient ids). Arguments: those of :class:`~mammopath.datamodules.crossmodal.CrossModalDataModule`.
    """

    modality = "patho"
