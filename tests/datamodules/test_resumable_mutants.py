"""`ResumableLoader` behaviours that `make mutation` found unpinned (docs/mutation.md)."""

from __future__ import annotations

import pytest
import torch

from mammopath.datamodules.resumable import ResumableLoader, _SkipFirst


def test_the_skip_applies_to_the_first_iteration_only() -> None:
    """A DataLoader iterator kept across epochs (persistent workers) iterates its index sampler again."""
    skipping = _SkipFirst(range(6), 4)
    assert len(skipping) == 6
    assert list(skipping) == [4, 5]
    assert list(skipping) == [0, 1, 2, 3, 4, 5]
    assert list(skipping) == [0, 1, 2, 3, 4, 5]


def test_iterating_leaves_torchs_global_generator_alone() -> None:
    """The worker base seed comes from the loader's own generator: the checkpoint restores the global one for the
    training step's draws (dropout, MixStyle), which the loader must not shift."""
    loader = ResumableLoader(list(range(8)), batch_size=2)
    assert loader.generator is not None
    state = torch.get_rng_state()
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert torch.equal(torch.get_rng_state(), state)
    given = torch.Generator().manual_seed(5)
    assert ResumableLoader(list(range(8)), batch_size=2, generator=given).generator is given


def test_the_loaders_generator_follows_the_run_seed() -> None:
    seeds = {}
    for seed in (1, 3, 3):
        torch.manual_seed(seed)
        seeds.setdefault(seed, set()).add(ResumableLoader(list(range(4))).generator.initial_seed())  # type: ignore[union-attr]
    assert all(len(s) == 1 for s in seeds.values())  # the same seed, the same generator
    assert seeds[1] != seeds[3]


def test_a_dataset_without_augmentations_resumes_on_order_alone() -> None:
    loader = ResumableLoader(list(range(10)), batch_size=2)
    iterator = iter(loader)
    assert next(iterator).tolist() == [0, 1]
    state = loader.state_dict()
    assert state == {"completed": 1, "position": 1, "generator": None}
    resumed = ResumableLoader(list(range(10)), batch_size=2)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == [[2, 3], [4, 5], [6, 7], [8, 9]]


class _Augmented(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)

    def augment_generator(self) -> torch.Generator:
        return self.generator

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> int:
        return i


def test_a_saved_state_without_augmentations_leaves_the_generator_as_it_is() -> None:
    """A checkpoint from a run without augmentations, resumed with them: order restored, generator untouched."""
    loader = ResumableLoader(_Augmented(), batch_size=2)
    before = loader.dataset.generator.get_state()  # type: ignore[attr-defined]
    loader.load_state_dict({"completed": 1, "position": 1, "generator": None})
    assert [b.tolist() for b in loader] == [[2, 3], [4, 5]]
    assert torch.equal(loader.dataset.generator.get_state(), before)  # type: ignore[attr-defined]


class _Drawing(_Augmented):
    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> float:
        return float(torch.rand((), generator=self.generator))


def test_a_deeper_prefetch_across_a_pass_boundary_still_finds_the_saved_augmentation_state() -> None:
    """A shorter loader in its 2nd pass, two batches fetched ahead: the state before fetch 2 (1st pass) is kept."""
    from mammopath.datamodules.samplers import EpochSampler

    dataset = _Drawing()
    loader = ResumableLoader(dataset, batch_size=2, sampler=EpochSampler(6, seed=0))  # 3 batches per pass
    before: list[torch.Tensor] = []
    iterator = iter(loader)
    for _ in range(3):  # the whole 1st pass: fetches 0, 1, 2
        before.append(dataset.generator.get_state())
        next(iterator)
    before.append(dataset.generator.get_state())
    next(iter(loader))  # the 2nd pass of the same epoch: fetch 3
    loader.progress = lambda: 2  # the step of batch 2 is the last that ran
    state = loader.state_dict()
    assert state["completed"] == 2 and state["position"] == 2
    assert torch.equal(state["generator"], before[2])


@pytest.mark.parametrize(("ahead", "kept"), [(4, True), (5, False)])
def test_augmentation_states_are_kept_for_four_batches_fetched_ahead(ahead: int, kept: bool) -> None:
    dataset = _Drawing(20)
    loader = ResumableLoader(dataset, batch_size=2)
    first = dataset.generator.get_state()
    iterator = iter(loader)
    for _ in range(ahead + 1):  # fetches 0 .. ahead
        next(iterator)
    loader.progress = lambda: 0  # no step has completed yet
    assert torch.equal(loader.state_dict()["generator"], first) is kept


def test_a_new_epoch_counts_its_batches_from_zero() -> None:
    from mammopath.datamodules.samplers import EpochSampler

    sampler = EpochSampler(6, seed=0)
    loader = ResumableLoader(list(range(6)), batch_size=2, sampler=sampler)
    assert loader.state_dict() == {"completed": 0, "position": 0, "generator": None}  # before any batch
    assert len(list(loader)) == 3 and loader.state_dict()["completed"] == 3
    sampler.set_epoch(1)
    iterator = iter(loader)
    next(iterator)
    assert loader.state_dict()["completed"] == 1


@pytest.mark.parametrize("augmented", [True, False])
def test_a_state_saved_at_the_epochs_end_starts_the_next_epoch_afresh(augmented: bool) -> None:
    dataset = _Drawing(6) if augmented else list(range(6))
    loader = ResumableLoader(dataset, batch_size=2)
    assert len(list(loader)) == 3
    loader.progress = lambda: 3
    loader.epoch_length = lambda: 3.0
    generator = dataset.generator.get_state() if isinstance(dataset, _Drawing) else None
    state = loader.state_dict()
    assert set(state) == {"completed", "position", "generator"}
    assert (state["completed"], state["position"]) == (0, 0)
    assert (state["generator"] is None) if generator is None else torch.equal(state["generator"], generator)
    loader.progress = lambda: 2  # one batch short of the end: a mid-epoch state
    assert loader.state_dict()["completed"] == 2


def test_an_empty_loader_has_a_state_too() -> None:
    assert ResumableLoader([], batch_size=2).state_dict() == {"completed": 0, "position": 0, "generator": None}
