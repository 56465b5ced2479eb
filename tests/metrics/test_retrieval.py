"""Retrieval and alignment metrics against brute-force computations, and their chance levels by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mammopath.metrics import retrieval as R


def _data(seed: int, nq: int = 9, nc: int = 11):
    g = torch.Generator().manual_seed(seed)
    sim = torch.randn(nq, nc, generator=g)
    qc, cc = torch.randint(0, 3, (nq,), generator=g), torch.randint(0, 3, (nc,), generator=g)
    return sim, qc, cc


@pytest.mark.parametrize("seed", range(4))
def test_recall_precision_map_match_brute_force(seed: int) -> None:
    sim, qc, cc = _data(seed)
    relevant = qc[:, None] == cc[None, :]
    for k in (1, 3, 5):
        hits, precisions = [], []
        for i in range(sim.shape[0]):
            top = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))[:k]
            hits.append(any(bool(relevant[i, j]) for j in top))
            precisions.append(sum(bool(relevant[i, j]) for j in top) / k)
        assert R.recall_at_k(sim, relevant, k) == pytest.approx(np.mean(hits))
        assert R.precision_at_k(sim, relevant, k) == pytest.approx(np.mean(precisions))
    aps = []
    for i in range(sim.shape[0]):
        r = int(relevant[i].sum())
        if r == 0:
            continue
        order = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))
        hits, ap = 0, 0.0
        for pos, j in enumerate(order[:r], start=1):
            if relevant[i, j]:
                hits += 1
                ap += hits / pos
        aps.append(ap / r)
    assert R.map_at_r(sim, relevant) == pytest.approx(np.mean(aps))


def test_chance_levels_equal_random_rankings() -> None:
    rng = np.random.default_rng(0)
    n, k = 12, 3
    classes = torch.tensor([0] * 5 + [1] * 7)
    correct = torch.eye(n, dtype=torch.bool)  # patient level: one correct candidate per query
    assert R.chance_recall_at_k(correct, k) == pytest.approx(k / n)
    # a label-only model: same-class candidates first, in random order
    sims, hits = [], []
    for _ in range(4000):
        noise = torch.tensor(rng.random((n, n)))
        s = noise + 10.0 * (classes[:, None] == classes[None, :])
        hits.append(R.recall_at_k(s, correct, k))
        sims.append(R.recall_at_k(noise, correct, k))
    assert np.mean(sims) == pytest.approx(k / n, abs=0.01)
    expected = (5 * min(1, k / 5) + 7 * min(1, k / 7)) / n
    assert R.label_only_recall_at_k(correct, classes, classes, k) == pytest.approx(expected)
    assert np.mean(hits) == pytest.approx(expected, abs=0.01)
    relevant = classes[:, None] == classes[None, :]
    assert R.chance_precision_at_k(relevant) == pytest.approx((5 * 5 / 12 + 7 * 7 / 12) / 12)
    random_map = np.mean([R.map_at_r(torch.tensor(rng.random((n, n))), relevant) for _ in range(400)])
    assert R.chance_map_at_r(relevant, permutations=400, seed=3) == pytest.approx(random_map, abs=0.02)


def test_alignment_uniformity_and_positive_minus_negative() -> None:
    g = torch.Generator().manual_seed(2)
    u = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    assert R.alignment(u, u) == 0.0
    assert R.alignment(u, v) == pytest.approx(float(((u - v) ** 2).sum(1).mean()))
    pairs = [float(((u[i] - u[j]) ** 2).sum()) for i in range(6) for j in range(i + 1, 6)]
    assert R.uniformity(u) == pytest.approx(math.log(np.mean(np.exp(-2 * np.asarray(pairs)))), rel=1e-6)
    sim = u @ v.T
    pos = torch.eye(6, dtype=torch.bool)
    expected = float(sim.diag().mean() - sim[~pos].mean())
    assert R.positive_minus_negative(sim, pos) == pytest.approx(expected)
    assert math.isnan(R.positive_minus_negative(sim, torch.zeros(6, 6, dtype=torch.bool)))
