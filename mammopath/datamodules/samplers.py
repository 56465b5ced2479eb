"""Training samplers: which sample indices each rank draws, in which order, every epoch.

Every sampler here is a :class:`torch.utils.data.DistributedSampler` (so Lightning leaves it in place instead of
wrapping it in its own distributed sampler), deterministic given ``seed`` and the epoch (:meth:`set_epoch`, which
Lightning calls at the start of every epoch), and DDP-aware: the global order is built identically on every rank
from ``(seed, epoch)``, padded by repeating its head to a multiple of ``num_replicas`` (or cut, with
``drop_last``), and each rank takes its own contiguous share, so all ranks draw the same number of samples (no
collective waits on a rank with fewer batches) and together draw every sample once per epoch (plus the padding).

A sampler subclasses :class:`EpochSampler` and implements :meth:`EpochSampler.global_order`; the base class does
the seeding, padding and rank split, so samplers compose by building one order from another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from mammopath.errors import ConfigError


class EpochSampler(DistributedSampler):
    """Base of the mammopath samplers: a seeded global order per epoch, padded and split into contiguous rank shares.

    Args:
        size: number of samples in the dataset.
        num_replicas: ranks sharing the data (1 without DDP).
        rank: this rank, in ``[0, num_replicas)``.
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        drop_last: cut the global order to a multiple of ``num_replicas`` instead of padding it.
    """

    def __init__(self, size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0, drop_last: bool = False):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"sampler: rank {rank} is not in [0, num_replicas={num_replicas})")
        # DistributedSampler's own __init__ wants a dataset and an initialized process group; set its fields here
        self.dataset: Any = range(size)
        self.size = int(size)
        self.num_replicas, self.rank, self.seed, self.drop_last = num_replicas, rank, int(seed), drop_last
        self.shuffle = True
        self.epoch = 0
        if drop_last:
            self.num_samples = self.size // num_replicas
        else:
            self.num_samples = -(-self.size // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def generator(self) -> np.random.Generator:
        """The random generator of the current epoch (the same on every rank)."""
        return np.random.default_rng([self.seed, self.epoch])

    def global_order(self, rng: np.random.Generator) -> np.ndarray:
        """Every sample index once, in this epoch's order (subclasses); the base class shuffles uniformly."""
        return rng.permutation(self.size)

    def rank_indices(self) -> np.ndarray:
        """The indices this rank draws this epoch: its contiguous share of the padded (or cut) global order."""
        order = np.asarray(self.global_order(self.generator()), dtype=np.int64)
        if order.size != self.size:
            raise ConfigError(f"{type(self).__name__}.global_order gave {order.size} indices for {self.size} samples")
        if self.drop_last:
            order = order[: self.total_size]
        elif order.size and order.size < self.total_size:
            order = np.resize(order, self.total_size)  # repeats from the head, like DistributedSampler
        return order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)


class SlideGroupedSampler(EpochSampler):
    """Patches grouped by slide for locality, with the groups shuffled: an open slide is read many times in a row.

    Each epoch the samples of every group (a slide; any key) are shuffled and cut into runs of at most
    ``group_size``, and the runs of all groups are shuffled together. A worker's bounded slide cache then serves
    a run from one open handle (and its decoded-tile cache) instead of opening a slide per patch, while batches still
    mix slides (a run shorter than the batch size mixes several per batch; ``group_size=None`` keeps a slide's
    patches together). Samples without a slide (photos, mammograms) are their own group.

    Args:
        groups: the group key (e.g. the slide path) of every sample, in dataset order.
        group_size: most consecutive samples of one group (None: the whole group).
        **kwargs: the :class:`EpochSampler` arguments (``num_replicas``, ``rank``, ``seed``, ``drop_last``).
    """

    def __init__(self, groups: Sequence[Any], group_size: int | None = None, **kwargs: Any):
        if group_size is not None and group_size < 1:
            raise ConfigError(f"SlideGroupedSampler: group_size must be >= 1 or None, got {group_size}")
        super().__init__(len(groups), **kwargs)
        _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        #: the sample indices of every group, in dataset order
        self.members: list[np.ndarray] = np.split(order, bounds) if order.size else []
        self.group_size = group_size

    def global_order(self, rng: np.random.Generator) -> np.ndarray:
        runs: list[np.ndarray] = []
        for members in self.members:
            shuffled = rng.permutation(members)
            step = self.group_size or max(len(shuffled), 1)
            runs += [shuffled[i : i + step] for i in range(0, len(shuffled), step)]
        if not runs:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([runs[i] for i in rng.permutation(len(runs))])


def distributed_context(trainer: Any) -> tuple[int, int]:
    """``(num_replicas, rank)`` of a Lightning trainer (``(1, 0)`` without one or without distribution)."""
    if trainer is None:
        return 1, 0
    return int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)


def global_seed() -> int:
    """The run's seed (``seed_everything`` exports it as ``PL_GLOBAL_SEED``, which spawned ranks inherit), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0) or 0)
