"""Samplers: seeded per epoch, every sample once per epoch across ranks, slide runs for locality."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.data import DistributedSampler, RandomSampler

from mammopath.datamodules.samplers import EpochSampler, SlideGroupedSampler
from mammopath.errors import ConfigError

# 7 slides of uneven size plus 3 samples without a slide
GROUPS = [f"s{i % 7}" for i in range(60)] + [f"s{i}" for i in range(5)] + ["#a", "#b", "#c"]


def runs(keys: list[str]) -> list[tuple[str, int]]:
    """(key, length) of every maximal run of equal keys."""
    out: list[tuple[str, int]] = []
    for key in keys:
        if out and out[-1][0] == key:
            out[-1] = (key, out[-1][1] + 1)
        else:
            out.append((key, 1))
    return out


def test_same_seed_and_epoch_same_order_and_epochs_differ() -> None:
    a, b = SlideGroupedSampler(GROUPS, seed=3), SlideGroupedSampler(GROUPS, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(SlideGroupedSampler(GROUPS, seed=4)) != first


def test_whole_slides_come_in_one_run_each_and_runs_are_shuffled() -> None:
    sampler = SlideGroupedSampler(GROUPS, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(GROUPS)))  # every sample exactly once
    keys = [GROUPS[i] for i in order]
    seen = runs(keys)
    assert len(seen) == len(set(GROUPS))  # one run per slide: each slide opened once per epoch
    assert {k: n for k, n in seen} == {k: GROUPS.count(k) for k in set(GROUPS)}
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(k for k, _ in runs([GROUPS[i] for i in sampler])))
    assert len(orders) > 1  # the slide order is shuffled across epochs
    # a uniform shuffle switches slides almost every sample
    random_keys = [GROUPS[i] for i in RandomSampler(range(len(GROUPS)))]
    assert len(runs(random_keys)) > 3 * len(seen)


def test_group_size_bounds_runs() -> None:
    sampler = SlideGroupedSampler(GROUPS, group_size=3, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(GROUPS)))
    seen = runs([GROUPS[i] for i in order])
    for key in set(GROUPS):  # a slide comes in runs of <= 3 (two of its runs may happen to abut)
        assert sum(1 for k, _ in seen if k == key) <= -(-GROUPS.count(key) // 3)
    assert len(seen) > len(set(GROUPS))  # more, shorter runs than with whole slides
    whole = runs([GROUPS[i] for i in SlideGroupedSampler(GROUPS, seed=1)])
    assert max(n for _, n in whole) > 3


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_ranks_draw_equal_contiguous_shares_covering_every_sample(replicas: int) -> None:
    full = list(SlideGroupedSampler(GROUPS, seed=5))
    shares = [list(SlideGroupedSampler(GROUPS, seed=5, num_replicas=replicas, rank=r)) for r in range(replicas)]
    assert len({len(s) for s in shares}) == 1  # equal batches per rank: no collective waits on a short rank
    flat = [i for share in shares for i in share]
    padded = full + full[: len(flat) - len(full)]  # padding repeats the head, as DistributedSampler does
    assert flat == padded and set(flat) == set(range(len(GROUPS)))
    cut = [list(SlideGroupedSampler(GROUPS, seed=5, num_replicas=replicas, rank=r, drop_last=True)) for r in range(2)]
    assert len(cut[0]) == len(GROUPS) // replicas and not set(cut[0]) & set(cut[1])


def test_is_a_distributed_sampler_and_rejects_bad_arguments() -> None:
    # Lightning keeps a DistributedSampler in place instead of wrapping it (which would reshuffle the runs)
    assert isinstance(SlideGroupedSampler(GROUPS), DistributedSampler)
    with pytest.raises(ConfigError, match="rank 2"):
        EpochSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="group_size"):
        SlideGroupedSampler(GROUPS, group_size=0)
    assert list(SlideGroupedSampler([])) == []


def test_datamodule_option_groups_train_patches_by_slide(synth_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mammopath.io.slide as slide_io
    from mammopath.datamodules.crossmodal import CrossModalDataModule

    opened: list[str] = []
    real = slide_io.SlideReader.__init__

    def counting(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        real(self, path, *args, **kwargs)

    monkeypatch.setattr(slide_io.SlideReader, "__init__", counting)
    kwargs = {"image_size": 16, "batch_size": 4, "slide_cache_size": 1, "modalities": ["patho"]}
    grouped = CrossModalDataModule(str(synth_root / "manifest.csv"), group_by_slide=True, **kwargs)
    grouped.trainer = SimpleNamespace(world_size=2, global_rank=1, accelerator=None)  # type: ignore[assignment]
    grouped.setup("fit")
    loader = grouped.train_dataloader().iterables["patho"]
    assert isinstance(loader.sampler, SlideGroupedSampler) and not loader.pin_memory
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, 1)
    dataset = grouped.datasets["train"]["patho"]
    slides = set(dataset.slide_keys())
    for _ in loader:
        pass
    read = list(loader.sampler)[: len(loader) * loader.batch_size]  # the last partial batch is dropped
    share = [dataset.slide_keys()[i] for i in read]
    assert len(opened) == len(runs(share)) <= len(slides) + 1  # one open per run, a cache of one suffices
    opened.clear()
    plain = CrossModalDataModule(str(synth_root / "manifest.csv"), **kwargs)
    plain.setup("fit")
    sampler = plain.train_dataloader().iterables["patho"].sampler
    assert type(sampler) is EpochSampler  # a uniform shuffle seeded by (seed, epoch)
    for _ in plain.train_dataloader():
        pass
    assert len(opened) > 2 * len(slides)  # a uniform shuffle reopens slides all the time with a cache of one


def test_pinned_memory_only_when_training_on_cuda(synth_root: Path) -> None:
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    from mammopath.datamodules.crossmodal import CrossModalDataModule

    pinned = {}
    cases = [
        ("cuda", CUDAAccelerator(), None),
        ("cpu", CPUAccelerator(), None),
        ("forced", CPUAccelerator(), True),
        ("off", CUDAAccelerator(), False),
    ]
    for name, accelerator, option in cases:
        dm = CrossModalDataModule(str(synth_root / "manifest.csv"), image_size=16, batch_size=4, pin_memory=option)
        dm.trainer = SimpleNamespace(world_size=1, global_rank=0, accelerator=accelerator)  # type: ignore[assignment]
        dm.setup("fit")
        pinned[name] = {loader.pin_memory for loader in dm.train_dataloader().iterables.values()}
    assert pinned == {"cuda": {True}, "cpu": {False}, "forced": {True}, "off": {False}}
