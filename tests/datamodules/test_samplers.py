"""Domain-balanced batches: several domains and both classes per batch, deterministic, disjoint DDP shards."""

from __future__ import annotations

from pathlib import Path

from mammopath.datamodules import CrossModalDataModule
from mammopath.datamodules.samplers import DomainBalancedSampler
from mammopath.datamodules.training import strata

HOLDOUT = ["hospital_c", "centre_3"]


def _dm(synth_root: Path) -> CrossModalDataModule:
    dm = CrossModalDataModule(
        str(synth_root / "manifest.csv"), holdout_domains=HOLDOUT, image_size=16, batch_size=8, balance_domains=True
    )
    dm.setup("fit")
    return dm


def test_every_batch_holds_every_source_domain_and_both_classes(synth_root: Path) -> None:
    dm = _dm(synth_root)
    loaders = dm.train_dataloader().iterables
    for modality, loader in loaders.items():
        assert isinstance(loader.sampler, DomainBalancedSampler)
        rows = dm.datasets["train"][modality].rows
        indices = list(loader.sampler)
        for start in range(0, len(indices), 8):
            batch = rows.iloc[indices[start : start + 8]]
            assert batch["domain"].nunique() >= 2, modality
            assert (batch.groupby("domain")["label"].nunique() == 2).all(), modality  # both classes per environment
    seen = {sid for m in loaders for sid in dm.datasets["train"][m].rows["sample_id"]}
    manifest = dm.manifest.set_index("sample_id")
    assert not set(manifest.loc[list(seen), "domain"]) & set(HOLDOUT)  # the held-out domains never train
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert not set(batch["mammo"]["domain"]) & set(HOLDOUT) and len(set(batch["mammo"]["domain"])) >= 2


def test_deterministic_and_disjoint_across_ranks(synth_root: Path) -> None:
    dm = _dm(synth_root)
    dataset = dm.datasets["train"]["patho"]

    def make(rank: int, world: int = 2, seed: int = 0) -> DomainBalancedSampler:
        return DomainBalancedSampler(
            dataset, strata(dataset), batch_size=4, num_batches=6 // world, seed=seed, num_replicas=world, rank=rank
        )

    a, b = list(make(0)), list(make(1))
    assert list(make(0)) == a and list(make(0, seed=1)) != a
    # the ranks take alternate batches of one global sequence: together they are the 1-process epoch
    single = list(make(0, world=1))
    batches = [single[i : i + 4] for i in range(0, len(single), 4)]
    assert a == [i for batch in batches[0::2] for i in batch] and b == [i for batch in batches[1::2] for i in batch]
    sampler = make(0)
    sampler.set_epoch(1)
    assert list(sampler) != a
