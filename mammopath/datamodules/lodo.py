"""`LodoDataModule`: the leave-one-domain-out split and the loaders every mammopath datamodule shares.

A LODO datamodule reads its data from *sources* (:class:`Source`: a manifest file, the root its paths
are relative to, and the modality of the rows it gives). Subclasses say where the sources come from:
:class:`~mammopath.datamodules.crossmodal.CrossModalDataModule` composes manifests and other
datamodules, :class:`~mammopath.datamodules.benchmark.BenchmarkDataModule` builds one benchmark's
manifest from its release.

Training batches are ``{"mammo": batch, "patho": batch}`` (Lightning ``CombinedLoader``,
``max_size_cycle``), so every step sees both modalities and each goes through its own adapters.
Validation and test use one loader per modality (``dataloader_idx`` 0 = mammo, 1 = patho, in
:attr:`modalities` order).

LODO: rows of ``holdout_domains`` never reach training or validation (model selection uses
source-domain validation only); at test time every row of a held-out domain is evaluated
(role ``heldout``) next to the source domains' test split (role ``source``). The held-out domains
are validated across the whole composition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, SequentialSampler

from mammopath.datamodules.bad_samples import SkippedSamples
from mammopath.datamodules.resumable import ResumableLoader
from mammopath.datamodules.samplers import EpochSampler, SlideGroupedSampler, distributed_context, global_seed
from mammopath.datasets.manifest_dataset import ManifestDataset
from mammopath.errors import ConfigError
from mammopath.io.location import Location
from mammopath.manifest import COLUMNS, GRADE_SCHEMES, load_manifest, num_grades, validate_manifest

log = logging.getLogger(__name__)

MODALITIES = ("mammo", "patho")
#: Input normalization of data without benchmark knowledge: generic conventions, not measured statistics
#: (mammography: [0, 1] intensities centred on 0.5; pathology: the ImageNet RGB statistics most encoders expect).
DEFAULT_NORMALIZATION: dict[str, dict[str, list[float]]] = {
    "mammo": {"mean": [0.5], "std": [0.25]},
    "patho": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
SAMPLE_TABLE_COLUMNS = ["sample_id", "patient_id", "parent_id", "dataset", "modality", "domain", "grade_scheme"]


@dataclass(frozen=True)
class Source:
    """One manifest of a composition: its file, the root its paths are relative to, the rows it gives."""

    name: str
    manifest: Path
    root: Location  # a local folder or an fsspec URL (mammopath.io.location)
    modality: str | None = None  # keep only this modality's rows (None: all)


class LodoDataModule(L.LightningDataModule):
    """LODO split, datasets and loaders over the rows of :meth:`sources` (the base of every mammopath datamodule).

    Args:
        holdout_domains: domains left out of training/validation and evaluated at test time.
        modalities: modalities to load, in dataloader order (default: those the sources have).
        image_size: model input size (H, W or one int).
        batch_size: per modality and step.
        eval_batch_size: per modality for validation/test/predict (default ``batch_size``).
        num_workers: DataLoader workers per loader.
        multiprocessing_context: ``fork``/``spawn``/``forkserver`` (None = platform default).
        canonical_side: mirror mammograms to this side (None = off).
        crop_breast: crop mammograms to the breast region.
        augment: train-time flips/rotations.
        check_files: verify at setup that every file exists.
        slide_cache_size: open slides kept per worker.
        decoded_cache_mb: keep decoded, resized samples in memory, up to this many MiB per process and split
            (0 = off; :class:`~mammopath.datasets.manifest_dataset.ManifestDataset`): from the second epoch on,
            training and validation read no file. Samples are identical to uncached ones (augmentations are drawn
            afresh). Each worker process keeps its own cache, so memory is ``(1 + num_workers)`` × the budget
            per split at most.
        normalization: per modality ``{"mean": [...], "std": [...]}``; default: the sources' own (benchmark
            datamodules carry theirs), else :data:`DEFAULT_NORMALIZATION`. Linked into the model.
        paired_sampling: ``auto`` puts patients with both modalities into the same training step
            (:class:`~mammopath.datamodules.pairing.PairedSampler`) whenever the training split has such
            patients; ``off`` shuffles each modality independently.
        paired_per_batch: paired patients per step and rank with paired sampling.
        balance_domains: training batches cycle through the (source domain, class) strata of each modality
            (:class:`~mammopath.datamodules.samplers.DomainBalancedSampler`; composes with paired sampling),
            as cross-domain MixStyle and IRM need.
        group_by_slide: train with :class:`~mammopath.datamodules.samplers.SlideGroupedSampler` (patches of one
            slide drawn in runs, runs shuffled: each worker's slide cache serves a run from one open handle).
        slide_group_size: longest run of one slide's patches with ``group_by_slide`` (None: the whole slide).
        pin_memory: page-locked batches for faster host-to-GPU copies (None: on when training on CUDA).
        storage_options: fsspec options (credentials, block size...) for slides under a URL data root.
        on_bad_sample: ``raise`` (default) stops at the first unreadable file with its error; ``skip`` replaces the
            sample, records it in ``runs/<run>/skipped.csv`` and the log, counts it in TensorBoard (``data/skipped``)
            and stops once more than ``max_bad_fraction`` of a split is unreadable
            (:mod:`mammopath.datamodules.bad_samples`).
        max_bad_fraction: with ``skip``, the most distinct unreadable samples of a split, as a fraction of its rows.
        preflight: at setup, open and decode every file of the manifest (in parallel, ``preflight_workers``
            threads) and stop with every bad file and its reason before training starts
            (:func:`mammopath.preflight.decode_check`; what ``mammopath validate-manifest --decode`` does).
        preflight_workers: threads of the pre-flight decode.
    """

    def __init__(
        self,
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
        decoded_cache_mb: float = 0.0,
        normalization: dict[str, dict[str, list[float]]] | None = None,
        paired_sampling: str = "auto",
        paired_per_batch: int = 4,
        balance_domains: bool = False,
        group_by_slide: bool = False,
        slide_group_size: int | None = None,
        pin_memory: bool | None = None,
        storage_options: dict[str, Any] | None = None,
        on_bad_sample: str = "raise",
        max_bad_fraction: float = 0.05,
        preflight: bool = False,
        preflight_workers: int = 4,
    ):
        super().__init__()
        if on_bad_sample not in ("raise", "skip"):
            raise ConfigError(f"data.on_bad_sample must be 'raise' or 'skip'; got {on_bad_sample!r}")
        self.on_bad_sample = on_bad_sample
        if decoded_cache_mb < 0:
            raise ConfigError(f"data.decoded_cache_mb must be >= 0 MiB (0 = off); got {decoded_cache_mb}")
        self.skipped = SkippedSamples(max_bad_fraction)
        self.preflight, self.preflight_workers = preflight, preflight_workers
        self._preflight_done = False
        if paired_sampling not in ("auto", "off"):
            raise ConfigError(f"data.paired_sampling must be 'auto' or 'off'; got {paired_sampling!r}")
        self.paired_sampling, self.paired_per_batch = paired_sampling, paired_per_batch
        self.balance_domains = balance_domains
        self.group_by_slide, self.slide_group_size, self.pin_memory = group_by_slide, slide_group_size, pin_memory
        #: datamodules whose rows join this one, per modality (only a composition has any)
        self.children: dict[str, list[LodoDataModule]] = {"mammo": [], "patho": []}
        self.holdout_domains = list(holdout_domains or [])
        for modality in modalities or []:
            if modality not in MODALITIES:
                raise ConfigError(f"unknown modality {modality!r} in data.modalities (use 'mammo' and/or 'patho')")
        self._modalities = list(modalities) if modalities else None
        self.image_size = image_size if isinstance(image_size, int) else [int(v) for v in image_size]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.multiprocessing_context = multiprocessing_context if num_workers > 0 else None
        self.dataset_kwargs: dict[str, Any] = {
            "image_size": self.image_size if isinstance(self.image_size, int) else tuple(self.image_size),
            "canonical_side": canonical_side,
            "crop_breast": crop_breast,
            "slide_cache_size": slide_cache_size,
            "storage_options": storage_options,
            "on_bad_sample": on_bad_sample,
            "decoded_cache_mb": decoded_cache_mb,
        }
        self.augment = augment
        self.check_files = check_files
        self._normalization = normalization
        self._manifest: pd.DataFrame | None = None
        self.datasets: dict[str, dict[str, ManifestDataset]] = {}

    # -- sources ---------------------------------------------------------------------------------
    def own_sources(self) -> list[Source]:
        """The sources of this datamodule itself (subclasses: their manifests)."""
        return []

    def rebase(self, data_root: Path) -> None:
        """Resolve relative roots against ``data_root`` (called by a composing datamodule)."""
        for child in self.children["mammo"] + self.children["patho"]:
            child.rebase(data_root)

    def sources(self) -> list[Source]:
        """Every source, children's rows restricted to the modality they are listed under."""
        sources = self.own_sources()
        for slot, children in self.children.items():
            for child in children:
                declared = getattr(child, "modality", None)
                if isinstance(declared, str) and declared != slot:
                    other = "patho" if slot == "mammo" else "mammo"
                    raise ConfigError(
                        f"{type(child).__name__} is a {declared} benchmark: list it under data.{other}, not data.{slot}"
                    )
                sources += [Source(s.name, s.manifest, s.root, slot) for s in child.sources()]
        if not sources:
            raise ConfigError(
                "no data: give data.manifest (your own manifest) or benchmark datamodules under data.mammo / data.patho"
            )
        return sources

    def prepare_data(self) -> None:
        """Build what the children need (benchmark manifests, cached)."""
        for child in self.children["mammo"] + self.children["patho"]:
            child.prepare_data()

    # -- manifest --------------------------------------------------------------------------------
    @property
    def manifest(self) -> pd.DataFrame:
        """The validated manifest of the whole composition (read once), with ``_root`` and ``_index`` columns."""
        if self._manifest is None:
            sources = self.sources()
            if len(sources) == 1 and sources[0].modality is None:
                src = sources[0]
                combined = load_manifest(
                    src.manifest, src.root, check_files=self.check_files, required_domains=self.holdout_domains
                ).assign(_root=str(src.root))
            else:  # each part against its own root, then the whole for ids, splits and LODO domains
                parts = [self._part(src) for src in sources]
                names = " + ".join(src.name for src in sources)
                combined = pd.concat(parts, ignore_index=True).astype({c: str for c in COLUMNS})
                combined = combined.replace({"nan": "", "<NA>": ""})
                combined = validate_manifest(combined, None, source=names, required_domains=self.holdout_domains)
            combined = combined.reset_index(drop=True)
            modalities = combined.groupby("patient_id")["modality"].nunique()
            paired = set(modalities[modalities > 1].index)
            self._manifest = combined.assign(
                _index=range(len(combined)),
                _patient_code=pd.factorize(combined["patient_id"])[0],
                _paired=combined["patient_id"].isin(paired),
            )
            self._check_grade_schemes(self._manifest)
        return self._manifest

    def _part(self, src: Source) -> pd.DataFrame:
        df = load_manifest(src.manifest, src.root, check_files=self.check_files)
        if src.modality is not None:
            kept = df[df["modality"] == src.modality]
            if kept.empty:
                raise ConfigError(f"{src.name}: no {src.modality} rows; list it under the modality it has")
            df = kept
        return df.assign(_root=str(src.root))

    def _check_grade_schemes(self, manifest: pd.DataFrame) -> None:
        present = {s for s in manifest["grade_scheme"].unique() if s}
        declared = set(self.grade_schemes)
        if not present <= declared:
            raise ConfigError(
                f"the manifest has grade schemes {sorted(present - declared)} that the datamodule does not declare "
                f"({sorted(declared)}); the model's grading head would lack them"
            )

    def declared_grade_schemes(self) -> set[str]:
        """Grade schemes of the sources (subclasses add their own to the children's)."""
        schemes: set[str] = set()
        for child in self.children["mammo"] + self.children["patho"]:
            schemes |= child.declared_grade_schemes()
        return {s for s in schemes if s in GRADE_SCHEMES}

    @property
    def grade_schemes(self) -> dict[str, int]:
        """Grade schemes of the composition → number of ordinal levels (given to the model once, by the CLI)."""
        return {s: num_grades(s) for s in sorted(self.declared_grade_schemes())}

    def source_normalization(self) -> dict[str, dict[str, list[float]]]:
        """Per-modality normalization the sources carry (plain manifests: :data:`DEFAULT_NORMALIZATION`)."""
        merged: dict[str, dict[str, list[float]]] = {}
        entries = self.own_normalization()
        for slot, children in self.children.items():
            entries += [(type(c).__name__, slot, c.source_normalization()) for c in children]
        for name, slot, stats in entries:
            for modality, value in stats.items():
                if slot and modality != slot:
                    continue
                if modality in merged and merged[modality] != value:
                    raise ConfigError(
                        f"{name} normalizes {modality} with {value}, another source with {merged[modality]}; "
                        f"set data.normalization.{modality} explicitly"
                    )
                merged[modality] = value
        return merged

    def own_normalization(self) -> list[tuple[str, str, dict[str, dict[str, list[float]]]]]:
        """``(name, modality slot or "", stats)`` of this datamodule's own sources (subclasses)."""
        return []

    @property
    def normalization(self) -> dict[str, dict[str, list[float]]]:
        """Per-modality input normalization (linked into the model and saved in its checkpoints)."""
        if self._normalization is not None:
            return {m: {"mean": list(v["mean"]), "std": list(v["std"])} for m, v in self._normalization.items()}
        return self.source_normalization()

    @property
    def modalities(self) -> list[str]:
        """Modalities loaded, in dataloader order: ``data.modalities``, else those the sources have."""
        if self._modalities is None:
            present = set(self.manifest["modality"].unique())
            self._modalities = [m for m in MODALITIES if m in present]
        return self._modalities

    @property
    def source_domains(self) -> list[str]:
        """Domains used for training and model selection."""
        return sorted(set(self.manifest["domain"]) - set(self.holdout_domains))

    @property
    def sample_table(self) -> pd.DataFrame:
        """One row per sample of the composition, indexed by its sample index: ids, patient, domain, role.

        The evaluation joins this to the per-sample numbers it gathers (``mammopath.metrics.evaluation``).
        """
        table = self.manifest.set_index("_index")
        role = table["domain"].isin(self.holdout_domains).map({True: "heldout", False: "source"})
        return table[SAMPLE_TABLE_COLUMNS].assign(
            role=role, paired=table["_paired"], patient_code=table["_patient_code"]
        )

    def frame(self, stage: str, modality: str) -> pd.DataFrame:
        """Rows of one stage (``train``/``val``/``test``/``predict``) and modality, with a ``role`` column.

        The predict set is the rows with an empty ``split`` (new cases) when the manifest has any; otherwise it
        is the test set (source test split + held-out domains).
        """
        df = self.manifest[self.manifest["modality"] == modality]
        held = df["domain"].isin(self.holdout_domains)
        if stage == "predict" and (self.manifest["split"] == "").any():
            unsplit = df[df["split"] == ""]
            role = unsplit["domain"].isin(self.holdout_domains).map({True: "heldout", False: "source"})
            return unsplit.assign(role=role).sort_values("domain", kind="stable", ignore_index=True)
        if stage == "train":
            return df[(df["split"] == stage) & ~held].assign(role="source")
        if stage == "val":
            rows = df[(df["split"] == stage) & ~held].assign(role="source")
            return rows.sort_values("domain", kind="stable", ignore_index=True)
        source = df[(df["split"] == "test") & ~held].assign(role="source")
        rows = pd.concat([source, df[held].assign(role="heldout")], ignore_index=True)
        return rows.sort_values("domain", kind="stable", ignore_index=True)  # evaluation batches: one domain each

    def run_preflight(self) -> None:
        """Decode every file of the manifest once; raise listing every bad file (``preflight: true``)."""
        from mammopath.preflight import decode_check, raise_for_bad

        if self._preflight_done:
            return
        manifest = self.manifest
        bad = decode_check(manifest, None, workers=self.preflight_workers)
        raise_for_bad(bad, " + ".join(src.name for src in self.sources()), len(manifest))
        self._preflight_done = True

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``on_bad_sample: skip``: record the batch's skipped samples before the model sees the batch."""
        if self.on_bad_sample != "skip":
            return batch
        sizes = {split: sum(len(d) for d in by_modality.values()) for split, by_modality in self.datasets.items()}
        return self.skipped.record(batch, self.trainer, sizes)

    def setup(self, stage: str | None = None) -> None:
        if self.preflight:
            self.run_preflight()
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in stages.get(stage or "fit", ("train", "val", "test")):
            self.datasets[split] = {}
            for modality in self.modalities:
                rows = self.frame(split, modality)
                if rows.empty and split == "predict" and (self.manifest["split"] == "").any():
                    continue  # new cases of one modality only
                if rows.empty:
                    names = " + ".join(src.name for src in self.sources())
                    raise ConfigError(
                        f"{names}: no {modality} rows for split '{split}' "
                        f"(holdout_domains={self.holdout_domains}); check the manifest or data.modalities"
                    )
                self.datasets[split][modality] = ManifestDataset(
                    rows, rows["_root"].iloc[0], augment=self.augment and split == "train", **self.dataset_kwargs
                )
            log.info("%s: %s", split, ", ".join(f"{m}={len(d)}" for m, d in self.datasets[split].items()))
            if split == "train":
                for modality, dataset in self.datasets[split].items():
                    domains = sorted(set(dataset.rows["domain"]))
                    if len(domains) < 2:
                        log.warning(
                            "%s trains on a single source domain (%s): cross-domain mechanisms (crossdomain MixStyle, "
                            "IRM environments) have nothing to compare in this modality",
                            modality,
                            domains[0],
                        )

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, dataset: ManifestDataset, *, train: bool) -> DataLoader:
        workers: dict[str, Any] = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "multiprocessing_context": self.multiprocessing_context,
            "pin_memory": self.pinned(),
        }
        if train:
            replicas, rank = distributed_context(self.trainer)
            sampler: EpochSampler
            if self.group_by_slide:
                sampler = SlideGroupedSampler(
                    dataset.slide_keys(), self.slide_group_size, num_replicas=replicas, rank=rank, seed=global_seed()
                )
            else:  # a uniform shuffle that depends only on (seed, epoch): what a mid-epoch resume needs
                sampler = EpochSampler(len(dataset), num_replicas=replicas, rank=rank, seed=global_seed())
            return self.resumable(
                ResumableLoader(
                    dataset, batch_size=self.batch_size, sampler=sampler, drop_last=len(dataset) > self.batch_size,
                    **workers,
                )
            )  # fmt: skip
        from mammopath.datamodules.samplers import DomainGroupedBatchSampler

        batches = DomainGroupedBatchSampler(
            SequentialSampler(dataset), self.eval_batch_size, drop_last=False, domains=list(dataset.rows["domain"])
        )
        return DataLoader(dataset, batch_sampler=batches, **workers)

    # -- checkpointed state: the training augmentations' generators -----------------------------
    def state_dict(self) -> dict[str, Any]:
        """The augmentation generator state of each training dataset (this process's), for exact resumes.

        Saved in every checkpoint; a run resumed at an epoch boundary continues the augmentations where
        they were (mid-epoch, :class:`~mammopath.datamodules.resumable.ResumableLoader` refines it to the state
        before the first batch not yet trained on).
        """
        train = getattr(self, "datasets", {}).get("train", {})
        return {"augment_generators": {m: d.augment_generator().get_state() for m, d in train.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        train = getattr(self, "datasets", {}).get("train", {})
        for modality, generator_state in state.get("augment_generators", {}).items():
            if modality in train:
                train[modality].augment_generator().set_state(generator_state)

    def resumable(self, loader: ResumableLoader) -> ResumableLoader:
        """Give a training loader the trainer's count of batches processed in the current epoch."""
        trainer: Any = self.trainer
        if trainer is not None:  # batches whose training step ran (Lightning fetches one ahead of them)
            loader.progress = lambda: int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            loader.epoch_length = lambda: float(trainer.num_training_batches)
        return loader

    def pinned(self) -> bool:
        """Page-locked batches: ``pin_memory`` if set, else on when training on CUDA (copies to a GPU)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        from lightning.pytorch.accelerators import CUDAAccelerator

        return self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)

    def paired_patients(self) -> list[str]:
        """Training patients with samples of every loaded modality (true cross-modal pairs)."""
        if len(self.modalities) < 2:
            return []
        sets = [set(self.datasets["train"][m].rows["patient_id"]) for m in self.modalities]
        return sorted(set.intersection(*sets))

    def train_dataloader(self) -> CombinedLoader:
        from mammopath.datamodules.training import train_loaders

        return CombinedLoader(train_loaders(self), mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets["val"][m], train=False) for m in self.modalities]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets["test"][m], train=False) for m in self.modalities]

    def predict_dataloader(self) -> list[DataLoader]:
        return [
            self._loader(self.datasets["predict"][m], train=False)
            for m in self.modalities
            if m in self.datasets["predict"]
        ]

    def roles(self, split: str, modality: str) -> dict[str, str]:
        """sample_id → role (``source``/``heldout``) of one evaluation loader."""
        rows = self.datasets[split][modality].rows
        return dict(zip(rows["sample_id"], rows["role"], strict=True))
