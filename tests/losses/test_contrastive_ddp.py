"""Under DDP (2 CPU processes, gloo) the contrastive step equals one process on the concatenated batch.

Deterministic on a loaded 2-core machine: the ranks meet through a FileStore (no TCP store served by rank 0, so
no rank depends on another still being alive while it tears down), every collective has a timeout, and a worker
leaves with ``os._exit(0)`` once its result is on disk and the group is destroyed. A plain interpreter exit ran
the C++ destructors of gloo's background threads, which intermittently aborted a worker with SIGABRT
("terminate called without an active exception") after it had finished its work.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mammopath.losses.contrastive import LOGIT_SCALE_INIT, CrossModalContrastiveLoss

D_IN, D_OUT = 8, 6
TIMEOUT = timedelta(seconds=120)  # a lost rank fails the test instead of stalling the suite
N_MAMMO, N_PATHO = 6, 5


def _batch() -> tuple[torch.Tensor, torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    x_m, x_p = torch.randn(N_MAMMO, D_IN, generator=g), torch.randn(N_PATHO, D_IN, generator=g)
    keys = {
        "mammo": {
            "patient": torch.tensor([0, 0, 1, 2, 3, 4]),
            "cls": torch.tensor([1, 1, 0, 1, 0, -1]),
            "paired": torch.tensor([True, True, True, False, False, False]),
        },
        "patho": {
            "patient": torch.tensor([0, 1, 1, 7, 8]),
            "cls": torch.tensor([1, 0, 0, 1, 0]),
            "paired": torch.tensor([True, True, True, False, False]),
        },
    }
    return x_m, x_p, keys


def _model() -> tuple[torch.nn.Linear, torch.nn.Parameter]:
    torch.manual_seed(1)
    return torch.nn.Linear(D_IN, D_OUT), torch.nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))


def _step(proj, log_scale, x_m, x_p, keys) -> tuple[float, list[torch.Tensor]]:
    z = {"mammo": proj(x_m), "patho": proj(x_p)}
    loss = CrossModalContrastiveLoss(intra_modal=0.5)(z, keys, log_scale.exp())
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in (*proj.parameters(), log_scale)]


def _worker(rank: int, world: int, split: dict[int, tuple[slice, slice]], out: str) -> None:
    store = f"file://{Path(out) / 'store'}"
    torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        x_m, x_p, keys = _batch()
        rows_m, rows_p = split[rank]
        local = {m: {k: v[rows_m if m == "mammo" else rows_p] for k, v in kv.items()} for m, kv in keys.items()}
        proj, log_scale = _model()
        loss, grads = _step(proj, log_scale, x_m[rows_m], x_p[rows_p], local)
        for grad in grads:  # what DDP does with the gradients: average over ranks
            torch.distributed.all_reduce(grad)
            grad /= world
        torch.save({"loss": loss, "grads": grads}, Path(out) / f"rank{rank}.pt")
        torch.distributed.barrier()  # no rank tears gloo down while the other still has work in flight
    finally:
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown of gloo's threads (the SIGABRT above); results are saved


SPLITS = {
    "even": {0: (slice(0, 3), slice(0, 3)), 1: (slice(3, 6), slice(3, 5))},
    "rank1_without_pathology": {0: (slice(0, 4), slice(0, 5)), 1: (slice(4, 6), slice(5, 5))},
}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_two_processes_equal_one_on_the_concatenated_batch(name: str, tmp_path: Path) -> None:
    x_m, x_p, keys = _batch()
    proj, log_scale = _model()
    loss, grads = _step(proj, log_scale, x_m, x_p, keys)
    mp.start_processes(_worker, args=(2, SPLITS[name], str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["loss"] == pytest.approx(loss, abs=1e-5)
        for ours, single in zip(result["grads"], grads, strict=True):
            torch.testing.assert_close(ours, single, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads)
