"""Training loaders that resume mid-epoch exactly: Lightning's stateful-iterable protocol on a DataLoader.

Lightning saves ``state_dict()`` of every training iterable that has one into the checkpoint
(``loops.fit_loop.state_dict.combined_loader``) and gives it back through ``load_state_dict()`` when a fit
resumes; it does not skip batches itself. :class:`ResumableLoader` records, for the current epoch, how many
batches the trainer has *completed* (not fetched: Lightning prefetches one batch ahead) and the state of the
dataset's augmentation generator before each fetch. Restored, the next iteration of the same epoch skips the
completed batches at the index level (no file is read for them) and re-seeds the augmentations to what they
were before the first batch it yields, so the resumed run sees the very batches the uninterrupted run saw.

Requirements, all met by the datamodules' training loaders: the sampler's order depends only on
``(seed, epoch)`` (:class:`~mammopath.datamodules.samplers.EpochSampler` and the paired and domain-balanced
samplers), and augmentations draw from the dataset's own generator, not torch's global one (so the training
step's dropout and MixStyle draws, which the checkpoint's RNG state restores, do not interleave with them).
With ``num_workers > 0`` the order is still exact, the augmentations of the resumed epoch are not (each worker
holds its own generator, out of reach of the main process); see ``docs/reliability.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

#: pre-fetch generator states kept per loader (Lightning prefetches one batch; a margin for deeper prefetching)
_HISTORY = 4


class _SkipFirst:
    """An index sampler whose next iteration starts after its first ``skip`` items (later ones: all of them)."""

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` with Lightning's ``state_dict`` / ``load_state_dict`` (see the module docstring).

    Its constructor is ``DataLoader``'s own, so Lightning can re-create it; the datamodule sets ``progress``
    (batches whose training step ran in the current epoch) and ``epoch_length`` (batches per epoch) after
    construction. A loaded state applies to the first iteration after it: the resumed epoch (Lightning resumes
    a checkpoint saved at an epoch's end in the next epoch, and the state then says to skip nothing).
    """

    progress: Callable[[], int] | None = None
    epoch_length: Callable[[], float] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("generator") is None:  # worker base seeds from the loader's own generator, not torch's global
            kwargs["generator"] = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        super().__init__(*args, **kwargs)

    def _augmentations(self) -> torch.Generator | None:
        get = getattr(self.dataset, "augment_generator", None)
        return get() if callable(get) else None

    @property
    def _index_sampler(self) -> Any:  # type: ignore[override]  # DataLoader's own, wrapped while a skip is pending
        inner = super()._index_sampler
        skip = self.__dict__.get("_skip")
        return inner if skip is None else _SkipFirst(inner, skip["position"])

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        iterator = super().__iter__()  # built while the skip is pending: its index sampler skips
        skip = self.__dict__.pop("_skip", None)
        return self._tracked(iterator, skip)

    def _tracked(self, iterator: Iterator[Any], skip: dict[str, Any] | None) -> Iterator[Any]:
        states: dict[int, torch.Tensor]
        if skip is not None:  # resumed: count on from the completed batches, augmentations as they were then
            self.__dict__["_fetched"], states = int(skip["completed"]), {}
            generator = self._augmentations()
            if generator is not None and skip.get("generator") is not None:
                generator.set_state(skip["generator"])
        elif self.__dict__.get("_pass_epoch") != self._epoch_now():
            self.__dict__["_fetched"], states = 0, {}  # a new epoch (a shorter loader's later passes continue)
        else:
            states = self.__dict__.get("_states", {})
        self.__dict__["_states"] = states  # fetch number in this epoch -> augmentation state before that fetch
        self.__dict__["_pass_epoch"] = self._epoch_now()
        while True:
            number = int(self.__dict__["_fetched"])
            generator = self._augmentations()
            if generator is not None:
                states[number] = generator.get_state()
                for old in [n for n in states if n < number - _HISTORY]:
                    del states[old]
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.__dict__["_fetched"] = number + 1
            yield batch

    def _epoch_now(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    # -- Lightning's stateful protocol -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The batches completed in this epoch, this loader's position, the augmentation state before the next."""
        completed = int(self.progress()) if self.progress is not None else int(self.__dict__.get("_fetched", 0))
        total = self.epoch_length() if self.epoch_length is not None else float("inf")
        generator = self._augmentations()
        if completed >= total:  # saved at the epoch's end: the resumed run starts the next epoch afresh
            return {"completed": 0, "position": 0, "generator": None if generator is None else generator.get_state()}
        state = self.__dict__.get("_states", {}).get(completed)
        if state is None and generator is not None:
            state = generator.get_state()
        length = len(super()._index_sampler)
        return {
            "completed": completed,
            "position": completed % length if length else 0,  # a shorter loader cycles within the epoch
            "generator": state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume after the completed batches on the next iteration."""
        self.__dict__["_skip"] = dict(state)
