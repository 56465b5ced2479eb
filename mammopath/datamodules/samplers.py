"""Training samplers that shape what each batch holds.

- :class:`DomainBalancedSampler`: every batch cycles through the (source domain, class) strata of its
  modality, so a batch holds several source domains and both classes inside each domain, as
  cross-domain MixStyle and IRM's per-environment penalty need;
- :func:`balanced_fill`: the same composition as a fill policy of the
  :class:`~mammopath.datamodules.pairing.PairedSampler`, so paired and domain-balanced sampling compose.

Both are ``DistributedSampler`` subclasses that shard themselves (Lightning leaves them in place and
calls ``set_epoch``): the sequence of per-rank batches is drawn once from ``(seed, epoch)``, and rank r
takes batch ``b · world + r``: together the ranks see the one-process epoch, each its own batches
(strata are drawn with replacement across batches, so a sample of a small stratum can recur). Deterministic
under a seed.

- :class:`SlideGroupedSampler` (on :class:`EpochSampler`): patches of one slide drawn in runs, runs
  shuffled, so each worker's slide cache serves a run from one open handle.

:class:`EpochSampler` subclasses are deterministic given ``seed`` and the epoch (:meth:`set_epoch`), and
DDP-aware: the global order is built identically on every rank from ``(seed, epoch)``, padded by repeating
its head to a multiple of ``num_replicas`` (or cut, with ``drop_last``), and each rank takes its own
contiguous share, so all ranks draw the same number of samples and together draw every sample once per
epoch (plus the padding). A sampler subclasses :class:`EpochSampler` and implements
:meth:`EpochSampler.global_order`; the base class does the seeding, padding and rank split.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from mammopath.errors import ConfigError


def balanced_order(
    rng: np.random.Generator, pool: np.ndarray, strata: Sequence[Hashable], n: int, chunk: int
) -> np.ndarray:
    """``n`` indices of ``pool`` in chunks of ``chunk``; each chunk takes one sample per stratum in turn.

    Every chunk starts the strata in a fresh random order and draws each stratum's samples from its own
    shuffled, cycling list, so a chunk of size c holds at most ceil(c / S) samples of each of S strata.

    Args:
        rng: the generator (seeded by the caller).
        pool: dataset indices to draw from.
        strata: stratum of every dataset index (e.g. ``(domain, label)``), indexed like the dataset.
        n: how many indices.
        chunk: batch size the balance applies to.
    """
    if n == 0 or len(pool) == 0:
        return np.zeros(0, dtype=np.int64)
    groups: dict[Hashable, list[int]] = {}
    for i in pool.tolist():
        groups.setdefault(strata[i], []).append(i)
    keys = sorted(groups, key=repr)
    queues = {k: list(rng.permutation(groups[k])) for k in keys}
    out: list[int] = []
    while len(out) < n:
        order = [keys[i] for i in rng.permutation(len(keys))]
        for j in range(min(chunk, n - len(out))):
            key = order[j % len(order)]
            if not queues[key]:
                queues[key] = list(rng.permutation(groups[key]))
            out.append(int(queues[key].pop()))
    return np.asarray(out, dtype=np.int64)


def balanced_fill(strata: Sequence[Hashable]):  # type: ignore[no-untyped-def]
    """A :class:`~mammopath.datamodules.pairing.PairedSampler` fill policy balancing the given strata."""

    def fill(rng: np.random.Generator, pool: np.ndarray, n: int, chunk: int) -> np.ndarray:
        return balanced_order(rng, pool, strata, n, chunk)

    return fill


class DomainBalancedSampler(DistributedSampler):
    """Batches that cycle through every (domain, class) stratum of a modality's training rows.

    Args:
        dataset: the modality's training dataset (only its length is used).
        strata: stratum of every row, e.g. ``(domain, label)``.
        batch_size: per rank.
        num_batches: batches per epoch (default: one pass over the rows).
        seed: base seed; epoch ``e`` draws from ``(seed, e)``.
        num_replicas, rank: DDP world size and this rank (default: the process group, else 1 and 0).
    """

    def __init__(
        self,
        dataset: Dataset,
        strata: Sequence[Hashable],
        *,
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        world, me = replica_context(num_replicas, rank)
        super().__init__(dataset, num_replicas=world, rank=me, shuffle=False, seed=seed, drop_last=True)
        if len(strata) != len(dataset):  # type: ignore[arg-type]
            raise ConfigError(f"strata has {len(strata)} entries for {len(dataset)} rows")  # type: ignore[arg-type]
        self.strata = list(strata)
        self.batch_size = batch_size
        self.num_batches = num_batches or max(1, len(self.strata) // (batch_size * world))

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        total = self.num_batches * self.num_replicas
        order = balanced_order(rng, np.arange(len(self.strata)), self.strata, total * self.batch_size, self.batch_size)
        batches = order.reshape(total, self.batch_size)[self.rank :: self.num_replicas]
        return iter(batches.reshape(-1).tolist())


class DomainGroupedBatchSampler(torch.utils.data.BatchSampler):
    """Evaluation batches that never straddle two domains (test-time adaptation resets per domain).

    Takes the indices of ``sampler`` in order and cuts a batch at ``batch_size`` or wherever the domain
    changes. A ``BatchSampler`` subclass with its signature, so Lightning can re-create it around a
    distributed sampler (each rank then cuts its own shard the same way).

    Args:
        sampler: the index order (sequential for evaluation).
        batch_size: the largest batch.
        drop_last: drop each domain's last short batch (False for evaluation).
        domains: the domain of every dataset index.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool = False, domains: Sequence[str] = ()) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sampler, batch_size, drop_last)
        self.domains = list(domains)

    def __iter__(self):  # type: ignore[no-untyped-def]
        batch: list[int] = []
        current = None
        for index in self.sampler:
            domain = self.domains[index]
            if batch and (domain != current or len(batch) == self.batch_size):
                yield batch
                batch = []
            batch.append(int(index))
            current = domain
        if batch and not (self.drop_last and len(batch) < self.batch_size):
            yield batch

    def __len__(self) -> int:
        count, run, current = 0, 0, None
        for index in self.sampler:
            domain = self.domains[index]
            if run and (domain != current or run == self.batch_size):
                count, run = count + 1, 0
            run += 1
            current = domain
        return count + (1 if run and not (self.drop_last and run < self.batch_size) else 0)


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


def replica_context(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)`` as given, else those of the initialized process group, else ``(1, 0)``."""
    from mammopath.losses.distributed import is_distributed

    world = num_replicas if num_replicas is not None else (dist.get_world_size() if is_distributed() else 1)
    me = rank if rank is not None else (dist.get_rank() if is_distributed() else 0)
    return world, me


def distributed_context(trainer: Any) -> tuple[int, int]:
    """``(num_replicas, rank)`` of a Lightning trainer (``(1, 0)`` without one or without distribution)."""
    if trainer is None:
        return 1, 0
    return int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)


def global_seed() -> int:
    """The run's seed (``seed_everything`` exports it as ``PL_GLOBAL_SEED``, which spawned ranks inherit), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0) or 0)
