"""`BACHDataModule`: the BACH microscopy photos (and WSI patches) as a pathology-only datamodule."""

from __future__ import annotations

from mammopath.datamodules.crossmodal import CrossModalDataModule


class BACHDataModule(CrossModalDataModule):
    """BACH from a manifest built by ``mammopath prepare bach`` (single domain ``bach``).

    Pathology only, so batches hold one modality; BACH has no centre information, hence no LODO
    hold-out. Photos are read whole (``read_microscopy``) and resized to ``image_size``.

    Args:
        manifest: the BACH manifest (CSV/Parquet).
        root: the release folder its paths are relative to (default: the manifest's folder).
        image_size: model input size.
        batch_size: samples per step.
        eval_batch_size: samples per evaluation step (default ``batch_size``).
        num_workers: DataLoader workers.
        augment: train-time flips/rotations.
        check_files: verify at setup that every file exists.
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
    ):
        super().__init__(
            manifest, root, holdout_domains=[], modalities=["patho"], image_size=image_size, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, canonical_side=None, augment=augment,
            check_files=check_files,
        )  # fmt: skip
