"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Result:
    """One benchmark line: ``ratio`` is ours relative to the raw library (see ``meaning``)."""

    name: str
    ours: float
    raw: float
    unit: str
    ratio: float
    meaning: str
    target: str
    ok: bool


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int = 5) -> tuple[float, float]:
    """Best times of ``a`` and ``b`` measured alternately, so drifts in machine load hit both alike."""
    a()
    b()
    best_a = best_b = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a()
        best_a = min(best_a, time.perf_counter() - start)
        start = time.perf_counter()
        b()
        best_b = min(best_b, time.perf_counter() - start)
    return best_a, best_b
