"""`CrossModalDataModule`: mammography ⨯ pathology batches with a leave-one-domain-out split.

Training batches are ``{"mammo": batch, "patho": batch}`` (Lightning ``CombinedLoader``,
``max_size_cycle``), so every step sees both modalities and each goes through its own adapters.
Validation and test use one loader per modality (``dataloader_idx`` 0 = mammo, 1 = patho, in
:attr:`modalities` order).

LODO: rows of ``holdout_domains`` never reach training or validation (model selection uses
source-domain validation only); at test time every row of a held-out domain is evaluated
(role ``heldout``) next to the source domains' test split (role ``source``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from mammopath.datasets.manifest_dataset import ManifestDataset
from mammopath.errors import ConfigError
from mammopath.manifest import COLUMNS, GRADE_SCHEMES, load_manifest, num_grades, validate_manifest

log = logging.getLogger(__name__)


class CrossModalDataModule(L.LightningDataModule):
    """Cross-modal LODO data from one manifest.

    Args:
        manifest: manifest CSV/Parquet (see docs/datasets.md), or a list of manifests to compose
            (e.g. a CBIS-DDSM and a CAMELYON17 manifest); sample ids must be unique across them.
        root: data root the paths are relative to (default: each manifest's folder); with several
            manifests, one root per manifest.
        holdout_domains: domains left out of training/validation and evaluated at test time.
        modalities: modalities to load, in dataloader order.
        image_size: model input size (H, W or one int).
        batch_size: per modality and step.
        num_workers: DataLoader workers per loader.
        multiprocessing_context: ``fork``/``spawn``/``forkserver`` (None = platform default).
        canonical_side: mirror mammograms to this side (None = off).
        crop_breast: crop mammograms to the breast region.
        augment: train-time flips/rotations.
        check_files: verify at setup that every file exists.
    """

    def __init__(
        self,
        manifest: str | list[str],
        root: str | list[str] | None = None,
        holdout_domains: list[str] | None = None,
        modalities: list[str] | None = None,
        image_size: int | list[int] = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        multiprocessing_context: str | None = None,
        canonical_side: str | None = "L",
        crop_breast: bool = False,
        augment: bool = True,
        check_files: bool = True,
        slide_cache_size: int = 16,
    ):
        super().__init__()
        paths = [Path(m) for m in ([manifest] if isinstance(manifest, str) else manifest)]
        if not paths:
            raise ConfigError("data.manifest is empty: give at least one manifest file")
        roots: list[str | None]
        if isinstance(root, str):
            roots = [root]
        elif root:
            roots = list(root)
        else:
            roots = [None] * len(paths)
        if len(roots) != len(paths):
            raise ConfigError(
                f"data.root has {len(roots)} entries for {len(paths)} manifests: give one root per manifest"
            )
        self.manifest_paths = paths
        self.roots = [Path(r) if r else p.parent for r, p in zip(roots, paths, strict=True)]
        self.manifest_path = paths[0]
        self.root = self.roots[0]
        self.holdout_domains = list(holdout_domains or [])
        self.modalities = list(modalities or ["mammo", "patho"])
        for modality in self.modalities:
            if modality not in ("mammo", "patho"):
                raise ConfigError(f"unknown modality {modality!r} in data.modalities (use 'mammo' and/or 'patho')")
        self.image_size = image_size if isinstance(image_size, int) else tuple(image_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.multiprocessing_context = multiprocessing_context if num_workers > 0 else None
        self.dataset_kwargs: dict[str, Any] = {
            "image_size": self.image_size,
            "canonical_side": canonical_side,
            "crop_breast": crop_breast,
            "slide_cache_size": slide_cache_size,
        }
        self.augment = augment
        self.check_files = check_files
        self._manifest: pd.DataFrame | None = None
        self.datasets: dict[str, dict[str, ManifestDataset]] = {}

    # -- manifest --------------------------------------------------------------------------------
    @property
    def manifest(self) -> pd.DataFrame:
        """The validated manifest (read once)."""
        if self._manifest is None:
            if len(self.manifest_paths) == 1:
                self._manifest = load_manifest(
                    self.manifest_path, self.root, check_files=self.check_files, required_domains=self.holdout_domains
                )
            else:  # each part against its own root, then the whole for ids, splits and LODO domains
                parts = [
                    load_manifest(path, root, check_files=self.check_files).assign(_root=str(root))
                    for path, root in zip(self.manifest_paths, self.roots, strict=True)
                ]
                source = " + ".join(str(p) for p in self.manifest_paths)
                combined = pd.concat(parts, ignore_index=True).astype({c: str for c in COLUMNS})
                combined = combined.replace({"nan": "", "<NA>": ""})
                self._manifest = validate_manifest(combined, None, source=source, required_domains=self.holdout_domains)
        return self._manifest

    @property
    def grade_schemes(self) -> dict[str, int]:
        """Grade schemes present in the manifest → number of ordinal levels (given to the model once)."""
        schemes = sorted(s for s in self.manifest["grade_scheme"].unique() if s in GRADE_SCHEMES)
        return {s: num_grades(s) for s in schemes}

    @property
    def source_domains(self) -> list[str]:
        """Domains used for training and model selection."""
        return sorted(set(self.manifest["domain"]) - set(self.holdout_domains))

    def frame(self, stage: str, modality: str) -> pd.DataFrame:
        """Rows of one stage (``train``/``val``/``test``) and modality, with a ``role`` column at test."""
        df = self.manifest[self.manifest["modality"] == modality]
        held = df["domain"].isin(self.holdout_domains)
        if stage in ("train", "val"):
            return df[(df["split"] == stage) & ~held].assign(role="source")
        source = df[(df["split"] == "test") & ~held].assign(role="source")
        return pd.concat([source, df[held].assign(role="heldout")], ignore_index=True)

    def setup(self, stage: str | None = None) -> None:
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in stages.get(stage or "fit", ("train", "val", "test")):
            self.datasets[split] = {}
            for modality in self.modalities:
                rows = self.frame(split, modality)
                if rows.empty:
                    raise ConfigError(
                        f"{self.manifest_path}: no {modality} rows for split '{split}' "
                        f"(holdout_domains={self.holdout_domains}); check the manifest or data.modalities"
                    )
                self.datasets[split][modality] = ManifestDataset(
                    rows, self.root, augment=self.augment and split == "train", **self.dataset_kwargs
                )
            log.info("%s: %s", split, ", ".join(f"{m}={len(d)}" for m, d in self.datasets[split].items()))

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, dataset: ManifestDataset, *, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=self.multiprocessing_context,
        )

    def train_dataloader(self) -> CombinedLoader:
        loaders = {m: self._loader(d, train=True) for m, d in self.datasets["train"].items()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets["val"][m], train=False) for m in self.modalities]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets["test"][m], train=False) for m in self.modalities]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()

    def roles(self, split: str, modality: str) -> dict[str, str]:
        """sample_id → role (``source``/``heldout``) of one evaluation loader."""
        rows = self.datasets[split][modality].rows
        return dict(zip(rows["sample_id"], rows["role"], strict=True))


class SingleModalityDataModule(CrossModalDataModule):
    """A one-modality view of :class:`CrossModalDataModule`, the base of the per-benchmark datamodules.

    Subclasses set :attr:`modality`; every other argument is the cross-modal one (``modalities`` is
    fixed, and pathology gets no laterality mirroring).
    """

    modality: str = "mammo"

    def __init__(self, manifest: str | list[str], root: str | list[str] | None = None, **kwargs: Any) -> None:
        kwargs.pop("modalities", None)
        if self.modality == "patho":
            kwargs.setdefault("canonical_side", None)
        super().__init__(manifest, root, modalities=[self.modality], **kwargs)
