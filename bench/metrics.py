"""Per-domain point metrics over a million patch predictions vs torchmetrics' AUROC on the same tensors (7)."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import Result, peak_memory


def per_domain_metrics(n: int = 1_000_000, n_domains: int = 10, repeats: int = 3) -> list[Result]:
    """``domain_point_metrics`` (AUROC, accuracy, balanced accuracy, sensitivity, specificity, sensitivity at 90%
    specificity, ECE per domain; no bootstrap) vs ``torchmetrics`` ``binary_auroc`` of each domain alone.

    Inputs: float32 scores (a model's sigmoid), int64 labels and int64 domain codes, as tensors. Targets: time at
    most 2× torchmetrics' per-domain AUROC; peak memory added during the call at most 2× the input tensors.
    """
    from torchmetrics.functional.classification import binary_auroc

    from mammopath.metrics.domain import domain_point_metrics

    rng = np.random.default_rng(0)
    domains = torch.from_numpy(rng.integers(0, n_domains, n))
    labels = torch.from_numpy(rng.integers(0, 2, n))
    shift = 0.1 + 0.4 * domains.numpy() / n_domains  # domains differ in difficulty
    scores = torch.from_numpy(np.clip(rng.normal(0.4 + shift * labels.numpy(), 0.2), 0, 1).astype(np.float32))
    tensor_bytes = sum(t.nbytes for t in (scores, labels, domains))

    def ours() -> object:
        return domain_point_metrics(scores, labels, domains)

    def baseline() -> object:
        return [binary_auroc(scores[domains == d], labels[domains == d]) for d in range(n_domains)]

    table, tm = ours(), baseline()  # warm-up, and the same numbers: our AUROC is torchmetrics'
    ours_auc = table["auroc"].to_numpy()
    if not np.allclose(ours_auc, [float(v) for v in tm], atol=1e-6):
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
    mem_ours, mem_raw = peak_memory(ours), peak_memory(baseline)
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
