"""Pairing: the paired sampler puts both modalities of a paired patient in one step; label maps; pairing table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mammopath.datamodules import CrossModalDataModule
from mammopath.datamodules.pairing import LabelMap, PairedSampler, pairing_table
from mammopath.errors import ConfigError

HOLDOUT = ["hospital_c", "centre_3"]


@pytest.fixture(scope="module")
def paired_dm(synth_root: Path) -> CrossModalDataModule:
    dm = CrossModalDataModule(
        [str(synth_root / "manifest.csv"), str(synth_root / "paired_manifest.csv")],
        root=[str(synth_root), str(synth_root)],
        holdout_domains=HOLDOUT,
        image_size=16,
        batch_size=6,
        paired_per_batch=2,
    )
    dm.setup("fit")
    return dm


def _batches(sampler: PairedSampler, rows) -> list[set[str]]:
    """Paired patients of every batch a sampler yields."""
    indices = list(sampler)
    patients = rows["patient_id"].to_numpy()
    paired = set(sampler.paired_patients)
    b = sampler.batch_size
    return [{p for p in patients[indices[i : i + b]] if p in paired} for i in range(0, len(indices), b)]


def _samplers(
    dm: CrossModalDataModule, world: int, rank: int, seed: int = 0, num_batches: int = 5
) -> dict[str, PairedSampler]:
    patients = dm.paired_patients()
    return {
        m: PairedSampler(
            d, list(d.rows["patient_id"]), patients, batch_size=6, paired_per_batch=2, num_batches=num_batches,
            seed=seed, modality=m, num_replicas=world, rank=rank,
        )
        for m, d in dm.datasets["train"].items()
    }  # fmt: skip


def test_both_modalities_of_a_paired_patient_share_the_step(paired_dm: CrossModalDataModule) -> None:
    patients = paired_dm.paired_patients()
    assert patients and all(p.startswith("PP") for p in patients)
    loader = paired_dm.train_dataloader()
    samplers = {m: dl.sampler for m, dl in loader.iterables.items()}
    assert all(isinstance(s, PairedSampler) for s in samplers.values())
    rows = {m: paired_dm.datasets["train"][m].rows for m in samplers}
    mammo, patho = (_batches(samplers[m], rows[m]) for m in ("mammo", "patho"))
    assert len(mammo) == len(patho) == len(loader.iterables["mammo"])
    assert all(len(m) == 2 and m == p for m, p in zip(mammo, patho, strict=True))
    batch, _, _ = next(iter(loader))
    ids = {
        m: {pid for pid, pair in zip(batch[m]["patient_id"], batch[m]["paired"], strict=True) if pair} for m in batch
    }
    assert ids["mammo"] == ids["patho"] and len(ids["mammo"]) == 2  # in the collated step, too


def test_ranks_take_disjoint_parts_in_lockstep_and_epochs_reshuffle(paired_dm: CrossModalDataModule) -> None:
    per_rank = [_samplers(paired_dm, world=2, rank=r) for r in (0, 1)]
    rows = {m: paired_dm.datasets["train"][m].rows for m in ("mammo", "patho")}
    for samplers in per_rank:
        assert _batches(samplers["mammo"], rows["mammo"]) == _batches(samplers["patho"], rows["patho"])
    for step in range(5):
        a, b = (_batches(s["mammo"], rows["mammo"])[step] for s in per_rank)
        assert not a & b  # a patient is on one rank per step
    one_pass = int((~rows["patho"]["_paired"]).sum()) // (2 * 4)  # batches whose fill does not cycle the pool
    shards = [_samplers(paired_dm, world=2, rank=r, num_batches=one_pass)["patho"] for r in (0, 1)]
    paired_rows = set(np.flatnonzero(rows["patho"]["_paired"].to_numpy()))
    fill = [set(list(s)) - paired_rows for s in shards]
    assert one_pass >= 1 and not fill[0] & fill[1]  # the fill shards are disjoint
    again = _samplers(paired_dm, world=2, rank=0)
    assert list(again["mammo"]) == list(per_rank[0]["mammo"])  # deterministic under a seed
    again["mammo"].set_epoch(1)
    assert list(again["mammo"]) != list(per_rank[0]["mammo"])
    assert list(_samplers(paired_dm, 2, 0, seed=1)["mammo"]) != list(per_rank[0]["mammo"])


def test_no_paired_patients_means_plain_shuffling(synth_root: Path) -> None:
    dm = CrossModalDataModule(str(synth_root / "manifest.csv"), holdout_domains=HOLDOUT, image_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.paired_patients() == []
    assert all(not isinstance(dl.sampler, PairedSampler) for dl in dm.train_dataloader().iterables.values())
    with pytest.raises(ConfigError, match="paired_sampling"):
        CrossModalDataModule(str(synth_root / "manifest.csv"), paired_sampling="always")


def test_label_map_and_pairing_table(paired_dm: CrossModalDataModule) -> None:
    malignancy = LabelMap.parse("malignancy")
    assert malignancy.classes(torch.tensor([1, 0, -1]), torch.tensor([3, 1, 2]), ["birads"] * 3).tolist() == [1, 0, -1]
    bins = LabelMap.parse({"birads": [0, 0, 0, 0, 1, 2, 2], "bach4": [0, 0, 1, 2]})
    got = bins.classes(torch.tensor([1, 1, 0, 1]), torch.tensor([5, 3, 1, 2]), ["birads", "bach4", "bach4", "c17_node"])
    assert got.tolist() == [2, 2, 0, -1]
    with pytest.raises(ConfigError, match="needs 4 classes"):
        LabelMap.parse({"bach4": [0, 1]})
    table = pairing_table(paired_dm.manifest).set_index(["modality", "domain"])
    assert table.loc[("mammo", "paired_site"), "pairing"] == "patient-level"
    assert table.loc[("patho", "centre_1"), "pairing"] == "label-level"
    assert table.loc[("mammo", "paired_site"), "n_paired_patients"] == 20
