"""The training loaders of a LODO datamodule: paired, domain-balanced, or independently shuffled.

- patients with both modalities in the training split and ``paired_sampling: auto`` → one
  :class:`~mammopath.datamodules.pairing.PairedSampler` per modality (lockstep), its unpaired places
  filled domain-balanced when ``balance_domains`` is on;
- else ``balance_domains`` → one :class:`~mammopath.datamodules.samplers.DomainBalancedSampler` per modality;
- else a shuffled loader per modality (:class:`~mammopath.datamodules.samplers.EpochSampler`), or
  slide-grouped runs of patches (:class:`~mammopath.datamodules.samplers.SlideGroupedSampler`).

Every training loader is a :class:`~mammopath.datamodules.resumable.ResumableLoader` (exact mid-epoch resume).

Seeds come from Lightning's ``seed_everything`` (``PL_GLOBAL_SEED``); world size and rank from the trainer.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Sampler

from mammopath.datamodules.pairing import PairedSampler, shuffled_fill
from mammopath.datamodules.resumable import ResumableLoader
from mammopath.datamodules.samplers import DomainBalancedSampler, balanced_fill
from mammopath.datasets.manifest_dataset import ManifestDataset

if TYPE_CHECKING:
    from mammopath.datamodules.lodo import LodoDataModule

log = logging.getLogger(__name__)


def strata(dataset: ManifestDataset) -> list[tuple[str, str]]:
    """(domain, label) of every row: the strata of domain-balanced batches."""
    return list(zip(dataset.rows["domain"].astype(str), dataset.rows["label"].astype(str), strict=True))


def _world(dm: LodoDataModule) -> tuple[int, int]:
    trainer = dm.trainer
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def _loader(dm: LodoDataModule, dataset: ManifestDataset, sampler: Sampler[Any]) -> DataLoader:
    return dm.resumable(
        ResumableLoader(
            dataset,
            batch_size=dm.batch_size,
            sampler=sampler,
            num_workers=dm.num_workers,
            persistent_workers=dm.num_workers > 0,
            multiprocessing_context=dm.multiprocessing_context,
            pin_memory=dm.pinned(),
        )
    )


def train_loaders(dm: LodoDataModule) -> dict[str, DataLoader]:
    """One training loader per modality, as the module docstring describes."""
    datasets = dm.datasets["train"]
    world, rank = _world(dm)
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    patients = dm.paired_patients() if dm.paired_sampling == "auto" else []
    if not patients and not dm.balance_domains:
        return {m: dm._loader(d, train=True) for m, d in datasets.items()}
    if dm.group_by_slide:
        log.warning("group_by_slide is ignored: paired or domain-balanced sampling decides the training order")
    for modality, dataset in datasets.items():
        if dm.balance_domains and len({domain for domain, _ in strata(dataset)}) < 2:
            log.warning("%s: one source domain in training: domain-balanced batches balance classes only", modality)
    if not patients:
        return {
            m: _loader(dm, d, DomainBalancedSampler(d, strata(d), batch_size=dm.batch_size, seed=seed,
                                                    num_replicas=world, rank=rank))
            for m, d in datasets.items()
        }  # fmt: skip
    num_batches = max(max(1, len(d) // (dm.batch_size * world)) for d in datasets.values())
    per_batch = min(dm.paired_per_batch, dm.batch_size)
    loaders = {}
    for modality, dataset in datasets.items():
        sampler = PairedSampler(
            dataset,
            list(dataset.rows["patient_id"]),
            patients,
            batch_size=dm.batch_size,
            paired_per_batch=per_batch,
            num_batches=num_batches,
            seed=seed,
            modality=modality,
            num_replicas=world,
            rank=rank,
            fill=balanced_fill(strata(dataset)) if dm.balance_domains else shuffled_fill,
        )
        loaders[modality] = _loader(dm, dataset, sampler)
    log.info("paired sampling: %d patients with both modalities, %d per step", len(patients), per_batch)
    return loaders
