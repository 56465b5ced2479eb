"""Gathering rows across ranks, with gradients, when ranks hold different numbers of rows.

Contrastive losses need every rank's embeddings as negatives. :func:`all_gather_rows` concatenates the
rows of every rank in rank order; ranks may hold any number of rows, zero included (each pads to the
largest count for the collective and the padding is trimmed after), so a step where one rank has no
sample of a modality neither hangs nor crashes. With ``grad=True`` the gather is differentiable and the
backward pass *sums* the gradients of every rank's copy of the loss into each rank's rows: when every
rank computes the same loss on the gathered batch, each rank's rows receive ``world_size`` times the
gradient of that loss, and DDP's gradient averaging then gives exactly the gradient of a single process
on the concatenated batch (tested in ``tests/losses/test_contrastive_ddp.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

#: gather(tensor) -> (world_size, *tensor.shape): a differentiable all-gather (e.g. LightningModule.all_gather
#: with ``sync_grads=True``).
Gather = Callable[[Tensor], Tensor]


def is_distributed() -> bool:
    """Whether a default process group exists (DDP and friends)."""
    return dist.is_available() and dist.is_initialized()


def _default_gather(t: Tensor) -> Tensor:
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private module; Lightning uses it too
        warnings.simplefilter("ignore", FutureWarning)
        return torch.stack(all_gather(t.contiguous()))


def all_gather_rows(x: Tensor, *, grad: bool = True, gather: Gather | None = None) -> Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order (``x`` itself when not distributed).

    Args:
        x: ``(n, ...)``; ``n`` may differ between ranks and may be 0.
        grad: gather with gradients (embeddings) or without (keys, labels).
        gather: the differentiable all-gather to use (default: ``torch.distributed.nn.functional.all_gather``,
            which is what Lightning's ``all_gather(..., sync_grads=True)`` calls).
    """
    if not is_distributed():
        return x
    if x.dtype == torch.bool:  # not every backend gathers bool tensors
        return all_gather_rows(x.to(torch.uint8), grad=False, gather=gather).bool()
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    fn = gather or _default_gather
    if grad:
        stacked = fn(x)
    else:
        with torch.no_grad():
            stacked = fn(x.detach())
    return torch.cat([stacked[r, : sizes[r]] for r in range(world)])
