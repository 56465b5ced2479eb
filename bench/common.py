"""Shared by the benchmarks: the result line, timing, peak memory and the synthetic cohort.

Every benchmark runs mammopath and the raw library doing the same work side by side in one process and reports
both raw figures and their ratio, with the target the ratio must meet.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import operator
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass
class Result:
    """One benchmark line: ``ratio`` is ours relative to the raw library (see ``meaning``).

    ``target`` is ``">= x"`` / ``"<= x"`` (checked against ``ratio``) or ``"reported"`` (no target: a figure
    shown for context).
    """

    item: str
    name: str
    ours: float
    raw: float
    unit: str
    ratio: float
    meaning: str
    target: str

    @property
    def ok(self) -> bool | None:
        """Whether the target holds (None when the line has no target)."""
        if self.target == "reported":
            return None
        op, value = self.target.split()
        return bool(_OPS[op](self.ratio, float(value)))


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


def chunked_interleaved(
    a: Callable[[Sequence[T]], object],
    b: Callable[[Sequence[T]], object],
    items: Sequence[T],
    *,
    chunk: int = 20,
    repeats: int = 3,
) -> tuple[float, float]:
    """Total times of ``a`` and ``b`` over ``items``, alternating chunk by chunk; each chunk's best of ``repeats``.

    On a shared machine the load changes within seconds: alternating every few items makes a burst hit both
    sides alike, and the best of each chunk keeps what the work itself costs.
    """
    parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    a(parts[0]), b(parts[0])  # warm-up
    best_a, best_b = [float("inf")] * len(parts), [float("inf")] * len(parts)
    for _ in range(repeats):
        for i, part in enumerate(parts):
            start = time.perf_counter()
            a(part)
            best_a[i] = min(best_a[i], time.perf_counter() - start)
            start = time.perf_counter()
            b(part)
            best_b[i] = min(best_b[i], time.perf_counter() - start)
    return sum(best_a), sum(best_b)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (a DataLoader worker runs with 1), then restore the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- peak memory -------------------------------------------------------------------------------------
def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"{key}:\s+(\d+) kB", text)
    if match is None:  # pragma: no cover - every Linux kernel reports both
        raise OSError(f"/proc/self/status has no {key}")
    return int(match.group(1)) * 1024


@functools.cache
def _return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS, so that each measurement starts from the same RSS.

    Without it glibc raises its mmap threshold after the first large free and keeps later blocks in the heap: the
    first measurement would see the allocations, the next ones nothing.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: blocks >= 64 KiB are mmapped (and unmapped when freed)
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def peak_memory(fn: Callable[[], object]) -> float | None:
    """Peak resident memory ``fn`` adds on top of what the process holds when it starts, in bytes.

    Linux only: the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` before the call;
    None where that is unavailable. Counts every allocation (numpy, torch, pandas), unlike ``tracemalloc``.
    """
    try:
        _return_freed_memory()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give back what earlier runs left in the heap
        base = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    fn()
    return float(_status("VmHWM") - base)


# -- the synthetic cohort --------------------------------------------------------------------------
@functools.cache
def synth_cohort() -> Path:
    """A small synthetic multi-hospital cohort with the demo's image and slide sizes (written once per run).

    Fewer patients and slides than ``make demo`` (the benchmarks measure throughput, not accuracy), the same
    mammogram shape, slide size, tiles, patch size and resolution, so every sample costs what a demo sample costs.
    """
    from dataclasses import replace

    from mammopath.synth.benchmark import make_synth_benchmark
    from mammopath.synth.styles import SynthConfig

    root = Path(tempfile.mkdtemp(prefix="mammopath-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    cfg = replace(SynthConfig(), mammo_patients_per_domain=12, slides_per_domain=6)
    make_synth_benchmark(root, seed=0, cfg=cfg, paired=False)
    return root
