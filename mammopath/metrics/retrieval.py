"""Alignment and cross-modal retrieval metrics, each with the chance level that makes it readable.

On L2-normalized embeddings (rows = queries of one modality, columns = candidates of the other):

- :func:`alignment` and :func:`uniformity` (Wang & Isola 2020, α = 2, t = 2; lower is better);
- :func:`recall_at_k`: fraction of queries with a correct candidate in the top k (patient-level: the
  correct candidate is the same patient), with :func:`chance_recall_at_k` (a random ranking) and
  :func:`label_only_recall_at_k` (a model that knows only the class: same-class candidates first, in
  random order) — with two classes, R@k of a label-only model is about twice plain chance;
- :func:`precision_at_k` and :func:`map_at_r` for class-consistent (label-level) retrieval, with
  :func:`chance_precision_at_k` and :func:`chance_map_at_r` (a random ranking, by seeded permutations);
- :func:`positive_minus_negative`: mean cosine similarity of positive pairs minus that of negative ones.

Ties in similarity are broken by candidate order (``argsort`` is stable), the same for every metric.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mammopath.errors import ConfigError


def _ranks(sim: Tensor) -> Tensor:
    """Candidate indices of every query, most similar first (stable for ties)."""
    return torch.argsort(-sim, dim=1, stable=True)


def alignment(u: Tensor, v: Tensor, alpha: float = 2.0) -> float:
    """E ‖u_i − v_i‖^α over matched positive rows ``u[i] ↔ v[i]`` (normalized embeddings)."""
    if u.shape != v.shape or u.numel() == 0:
        raise ConfigError(f"alignment needs two equal, non-empty [n, d] sets; got {tuple(u.shape)}, {tuple(v.shape)}")
    return float((u - v).norm(dim=1).pow(alpha).mean())


def uniformity(x: Tensor, t: float = 2.0) -> float:
    """log E exp(−t ‖x_i − x_j‖²) over pairs i < j (normalized embeddings); NaN with fewer than 2 rows."""
    if x.shape[0] < 2:
        return float("nan")
    return float(torch.pdist(x.double(), p=2).pow(2).mul(-t).exp().mean().log())


def recall_at_k(sim: Tensor, correct: Tensor, k: int) -> float:
    """Fraction of queries (rows) with at least one correct candidate among their k most similar."""
    top = _ranks(sim)[:, :k]
    return float(correct.gather(1, top).any(dim=1).double().mean())


def chance_recall_at_k(correct: Tensor, k: int) -> float:
    """Expected :func:`recall_at_k` of a random ranking: mean over queries of 1 − C(N−c, k) / C(N, k)."""
    n = correct.shape[1]
    k = min(k, n)
    values = [1.0 - math.comb(n - int(c), k) / math.comb(n, k) for c in correct.sum(dim=1).tolist()]
    return float(np.mean(values))


def label_only_recall_at_k(correct: Tensor, query_class: Tensor, candidate_class: Tensor, k: int) -> float:
    """Expected :func:`recall_at_k` of a model that knows only the class of every item.

    It ranks the candidates of the query's class first, in random order, then the others. With one
    correct candidate per query, of the query's class among ``n_c`` such candidates, the recall at k is
    ``min(1, k / n_c)``; in general the chance recall within the same-class block (and, past it, within
    the rest).
    """
    values = []
    for i in range(correct.shape[0]):
        same = candidate_class == query_class[i]
        n_same, n_rest = int(same.sum()), int((~same).sum())
        c_same, c_rest = int(correct[i][same].sum()), int(correct[i][~same].sum())
        if k <= n_same:
            values.append(1.0 - math.comb(n_same - c_same, k) / math.comb(n_same, k) if n_same else 0.0)
        else:
            miss_same = 1.0 if c_same == 0 else 0.0  # every same-class candidate is within the top k
            kk = min(k - n_same, n_rest)
            miss_rest = math.comb(n_rest - c_rest, kk) / math.comb(n_rest, kk) if n_rest else 1.0
            values.append(1.0 - miss_same * miss_rest)
    return float(np.mean(values))


def precision_at_k(sim: Tensor, relevant: Tensor, k: int) -> float:
    """Mean over queries of the fraction of relevant candidates among the k most similar."""
    top = _ranks(sim)[:, :k]
    return float(relevant.gather(1, top).double().mean())


def chance_precision_at_k(relevant: Tensor) -> float:
    """Expected :func:`precision_at_k` of a random ranking: the mean fraction of relevant candidates."""
    return float(relevant.double().mean(dim=1).mean())


def map_at_r(sim: Tensor, relevant: Tensor) -> float:
    """Mean over queries with R ≥ 1 relevant candidates of AP@R = (1/R) Σ_{i ≤ R} P@i · rel_i (Musgrave 2020)."""
    order = _ranks(sim)
    rel = relevant.gather(1, order).double()
    r = relevant.sum(dim=1)
    keep = r > 0
    if not bool(keep.any()):
        return float("nan")
    rel, r = rel[keep], r[keep]
    hits = rel.cumsum(dim=1)
    positions = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    within = positions[None, :] <= r[:, None]
    ap = (hits / positions * rel * within).sum(dim=1) / r
    return float(ap.mean())


def chance_map_at_r(relevant: Tensor, permutations: int = 50, seed: int = 0) -> float:
    """Expected :func:`map_at_r` of a random ranking, estimated with seeded random similarity matrices."""
    g = torch.Generator().manual_seed(seed)
    values = [map_at_r(torch.rand(relevant.shape, generator=g), relevant) for _ in range(permutations)]
    return float(np.nanmean(values))


def positive_minus_negative(sim: Tensor, positives: Tensor) -> float:
    """Mean similarity of positive pairs minus mean similarity of negative pairs (NaN if either is empty)."""
    if not bool(positives.any()) or bool(positives.all()):
        return float("nan")
    return float(sim[positives].mean() - sim[~positives].mean())
