"""Per-domain point metrics over a million patch predictions vs torchmetrics' AUROC on the same tensors (7)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from bench.common import Result, peak_memory


def _inputs(n: int, n_domains: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded synthetic predictions: float32 scores (a model's sigmoid), int64 labels, int64 domain codes."""
    rng = np.random.default_rng(0)
    domains = torch.from_numpy(rng.integers(0, n_domains, n))
    labels = torch.from_numpy(rng.integers(0, 2, n))
    shift = 0.1 + 0.4 * domains.numpy() / n_domains  # domains differ in difficulty
    scores = torch.from_numpy(np.clip(rng.normal(0.4 + shift * labels.numpy(), 0.2), 0, 1).astype(np.float32))
    return scores, labels, domains


def _pair(n: int, n_domains: int) -> tuple[Callable[[], object], Callable[[], object], int]:
    """(ours, torchmetrics per domain, bytes of the input tensors) on the same tensors."""
    from torchmetrics.functional.classification import binary_auroc

    from mammopath.metrics.domain import domain_point_metrics

    scores, labels, domains = _inputs(n, n_domains)

    def ours() -> object:
        return domain_point_metrics(scores, labels, domains)

    def baseline() -> object:
        return [binary_auroc(scores[domains == d], labels[domains == d]) for d in range(n_domains)]

    return ours, baseline, sum(t.nbytes for t in (scores, labels, domains))


def _peak_memories(n: int, n_domains: int, threads: int) -> tuple[float | None, float | None]:
    """Peak memory added by ours and by torchmetrics, measured in a fresh process (run through spawn).

    A fresh process: what earlier benchmarks left in the allocator (Lightning, DataLoader workers) would
    otherwise blur a resident-memory high-water mark by tens of MiB.
    """
    torch.set_num_threads(threads)
    ours, baseline, _ = _pair(n, n_domains)
    ours(), baseline()  # warm-up: code and library pages resident before measuring
    return peak_memory(ours), peak_memory(baseline)


def per_domain_metrics(n: int = 1_000_000, n_domains: int = 10, repeats: int = 3) -> list[Result]:
    """``domain_point_metrics`` (AUROC, accuracy, balanced accuracy, sensitivity, specificity, sensitivity at 90%
    specificity, ECE per domain; no bootstrap) vs ``torchmetrics`` ``binary_auroc`` of each domain alone.

    Inputs: float32 scores (a model's sigmoid), int64 labels and int64 domain codes, as tensors. Targets: time at
    most 2× torchmetrics' per-domain AUROC; peak memory added during the call at most 2× the input tensors.
    """
    ours, baseline, tensor_bytes = _pair(n, n_domains)
    table, tm = ours(), baseline()  # warm-up, and the same numbers: our AUROC is torchmetrics'
    ours_auc = table["auroc"].to_numpy()  # type: ignore[index]
    if not np.allclose(ours_auc, [float(v) for v in tm], atol=1e-6):  # type: ignore[attr-defined]
        raise AssertionError(f"per-domain AUROC differs from torchmetrics: {ours_auc} vs {tm}")
    t_ours = t_raw = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        t_ours = min(t_ours, time.perf_counter() - start)
        start = time.perf_counter()
        baseline()
        t_raw = min(t_raw, time.perf_counter() - start)
    results = [
        Result(
            "7",
            f"per-domain point metrics, {n:,} predictions, {n_domains} domains",
            t_ours * 1000,
            t_raw * 1000,
            "ms",
            t_ours / t_raw,
            "time ours (7 metrics) / torchmetrics binary_auroc per domain",
            "<= 2.00",
        )
    ]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        mem_ours, mem_raw = pool.submit(_peak_memories, n, n_domains, torch.get_num_threads()).result()
    if mem_ours is not None and mem_raw is not None:
        results.append(
            Result(
                "7",
                "per-domain point metrics, peak memory added",
                mem_ours / 2**20,
                tensor_bytes / 2**20,
                "MiB",
                mem_ours / tensor_bytes,
                f"peak added / input tensors (torchmetrics AUROC alone: {mem_raw / 2**20:.1f} MiB)",
                "<= 2.00",
            )
        )
    return results
