"""`INbreastDataModule`: INbreast mammograms from a manifest built by ``mammopath prepare inbreast``."""

from __future__ import annotations

from typing import Any

from mammopath.datamodules.crossmodal import CrossModalDataModule


class INbreastDataModule(CrossModalDataModule):
    """INbreast full-field digital mammograms, mammography only.

    ``label`` is a BI-RADS proxy (4a-6 → malignant; INbreast has no pathology column) and the split
    is a deterministic patient-level 60/20/20 on the DICOM-name patient hash (no official split).

    Args:
        manifest: manifest written by ``mammopath prepare inbreast``.
        root: the folder its paths are relative to (default: the manifest's folder).
        **kwargs: any other :class:`CrossModalDataModule` argument (``modalities`` is fixed).
    """

    def __init__(self, manifest: str, root: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("modalities", None)
        super().__init__(manifest, root, modalities=["mammo"], **kwargs)
