"""Input conversion and checks shared by the metric functions.

Metrics accept numpy arrays, torch tensors (any device and dtype, bf16 included) or plain sequences, and work on
float64 / int64 numpy arrays internally so that results do not depend on where the predictions came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mammopath.errors import ConfigError


def to_numpy(x: Any, *, name: str, dtype: type | None = None) -> np.ndarray:
    """Return ``x`` as a numpy array (tensors are detached and moved to the CPU first)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # bf16/fp16 have no numpy equivalent (bf16) or lose precision in numpy ops
        arr = t.numpy()
    else:
        arr = np.asarray(x)
    if dtype is not None:
        try:
            arr = arr.astype(dtype, copy=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: cannot convert values to {dtype.__name__} ({exc})") from exc
    return arr


def binary_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (scores, labels) pair for binary metrics.

    Scores must be finite and 1-D; labels must be 0/1 and of the same length. Raises ConfigError naming the problem.
    """
    s = to_numpy(scores, name="scores", dtype=np.float64)
    if s.ndim > 1:
        raise ConfigError(f"scores must be 1-D (one score per sample), got shape {s.shape}")
    s = s.reshape(-1)
    y_raw = to_numpy(labels, name="labels")
    if y_raw.ndim > 1:
        raise ConfigError(f"labels must be 1-D (one label per sample), got shape {y_raw.shape}")
    y_raw = y_raw.reshape(-1)
    if s.shape[0] != y_raw.shape[0]:
        raise ConfigError(f"scores and labels differ in length ({s.shape[0]} vs {y_raw.shape[0]})")
    if not np.all(np.isfinite(s)):
        raise ConfigError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite value(s) (NaN/inf)")
    y = to_numpy(y_raw, name="labels", dtype=np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ConfigError(
            f"labels must be 0 (benign/normal) or 1 (malignant/tumor); found {int(bad.sum())} other value(s), "
            f"e.g. {y[bad][0]!r}. Drop rows with a missing label before computing metrics."
        )
    return s, y.astype(np.int64)


def check_probabilities(p: np.ndarray, *, name: str = "scores") -> None:
    """Raise ConfigError unless every value of ``p`` lies in [0, 1]."""
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ConfigError(
            f"{name} must be probabilities in [0, 1] (got min {p.min():.4g}, max {p.max():.4g}); "
            "apply sigmoid/softmax to logits first"
        )
