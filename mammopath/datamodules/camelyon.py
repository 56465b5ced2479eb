"""CAMELYON16 and CAMELYON17 datamodules: pathology-only views of a tiled slide manifest.

Both expect a *patch* manifest (``mammopath prepare camelyon1x`` then ``mammopath tile``): slide rows
without ``x`` would be read whole. CAMELYON17's domains are its five centres
(``camelyon17/center_N``), so ``holdout_domains`` gives leave-one-centre-out; CAMELYON16 has one
domain (the centre is not in the metadata) and is evaluated on its official test split.
"""

from __future__ import annotations

from mammopath.datamodules.crossmodal import CrossModalDataModule


class Camelyon16DataModule(CrossModalDataModule):
    """CAMELYON16 patches; official test slides stay ``test``, ~15% of training slides are ``val``.

    Args:
        manifest: the CAMELYON16 patch manifest.
        root: the release folder its paths are relative to (default: the manifest's folder).
        image_size: model input size.
        batch_size: patches per step.
        eval_batch_size: patches per evaluation step (default ``batch_size``).
        num_workers: DataLoader workers.
        augment: train-time flips/rotations.
        check_files: verify at setup that every file exists.
        slide_cache_size: open slide handles kept per worker.
    """

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        image_size: int | list[int] = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = True,
        check_files: bool = True,
        slide_cache_size: int = 16,
    ):
        super().__init__(
            manifest, root, holdout_domains=[], modalities=["patho"], image_size=image_size, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, canonical_side=None, augment=augment,
            check_files=check_files, slide_cache_size=slide_cache_size,
        )  # fmt: skip


class Camelyon17DataModule(CrossModalDataModule):
    """CAMELYON17 patches with leave-one-centre-out: ``holdout_domains=["camelyon17/center_2"]``.

    Args:
        manifest: the CAMELYON17 patch manifest.
        root: the release folder its paths are relative to (default: the manifest's folder).
        holdout_domains: centres left out of training/validation and evaluated at test time.
        image_size: model input size.
        batch_size: patches per step.
        eval_batch_size: patches per evaluation step (default ``batch_size``).
        num_workers: DataLoader workers.
        augment: train-time flips/rotations.
        check_files: verify at setup that every file exists.
        slide_cache_size: open slide handles kept per worker.
    """

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        holdout_domains: list[str] | None = None,
        image_size: int | list[int] = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = True,
        check_files: bool = True,
        slide_cache_size: int = 16,
    ):
        super().__init__(
            manifest, root, holdout_domains=holdout_domains, modalities=["patho"], image_size=image_size,
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, canonical_side=None,
            augment=augment, check_files=check_files, slide_cache_size=slide_cache_size,
        )  # fmt: skip
