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
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
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
        from mammopath.losses.distributed import is_distributed

        world = (
            num_replicas
            if num_replicas is not None
            else (torch.distributed.get_world_size() if is_distributed() else 1)
        )
        me = rank if rank is not None else (torch.distributed.get_rank() if is_distributed() else 0)
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
