"""CAMELYON16 and CAMELYON17 datamodules: pathology-only views of a tiled slide manifest.

Both expect a *patch* manifest (``mammopath prepare camelyon1x`` then ``mammopath tile``): slide rows
without ``x`` would be read whole. CAMELYON17's domains are its five centres
(``camelyon17/center_N``), so ``holdout_domains`` gives leave-one-centre-out; CAMELYON16 has one
domain (the centre is not in the metadata) and is evaluated on its official test split.
"""

from __future__ import annotations

from mammopath.datamodules.crossmodal import SingleModalityDataModule


class Camelyon16DataModule(SingleModalityDataModule):
    """CAMELYON16 patches; official test slides stay ``test``, ~15% of training slides are ``val``.

    Arguments: those of :class:`~mammopath.datamodules.crossmodal.CrossModalDataModule`.
    """

    modality = "patho"


class Camelyon17DataModule(SingleModalityDataModule):
    """CAMELYON17 patches with leave-one-centre-out, e.g. ``holdout_domains=["camelyon17/center_2"]``.

    Arguments: those of :class:`~mammopath.datamodules.crossmodal.CrossModalDataModule`.
    """

    modality = "patho"
