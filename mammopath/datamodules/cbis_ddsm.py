"""`CBISDDSMDataModule`: CBIS-DDSM mammograms from a manifest built by ``mammopath prepare cbis-ddsm``."""

from __future__ import annotations

from typing import Any

from mammopath.datamodules.crossmodal import CrossModalDataModule


class CBISDDSMDataModule(CrossModalDataModule):
    """CBIS-DDSM (TCIA) full mammograms, mammography only.

    Splits come from the manifest: the official test sets (plus the 31 patients that also appear
    in an official test CSV of the other lesion type) are ``test``; ``val`` is ~15% of the remaining
    patients by a deterministic hash (see ``docs/datasets.md``). Labels: malignant if any
    abnormality of the image is MALIGNANT; grade: max BI-RADS assessment.

    Args:
        manifest: manifest written by ``mammopath prepare cbis-ddsm``.
        root: the release folder its paths are relative to (default: the manifest's folder).
        **kwargs: any other :class:`CrossModalDataModule` argument (``modalities`` is fixed).
    """

    def __init__(self, manifest: str, root: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("modalities", None)
        super().__init__(manifest, root, modalities=["mammo"], **kwargs)
