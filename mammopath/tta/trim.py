"""Causal trimming (TACT, Liu et al., NeurIPS 2025; algorithms.md §4.6 step 2) as plain tensor functions.

For each test sample, its own features z and the features of ``A`` style-only augmentations of it form a set
of 1 + A points; as TACT's ``get_PCs`` does, the set is centred on its mean (per sample) and its top-m
principal directions V (right singular vectors of the centred set, the eigenvectors of its scatter matrix)
are the sample's nuisance (acquisition) directions. The sample's features are trimmed, z ← z − Vᵀ(V z), and
so is the head's prototype (for the binary malignancy logit, its weight row w); the prediction uses a
running, sample-count-weighted average of the trimmed prototypes (:class:`PrototypeAverage`). Directions
with a zero singular value (augmentations that change nothing) are not trimmed. The decomposition runs in
double precision, on the CPU for Apple MPS (which has no float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mammopath.errors import ConfigError


def linalg_device(device: torch.device) -> torch.device:
    """Where the double-precision SVD runs: the features' device, or the CPU for MPS (no float64 there)."""
    return torch.device("cpu") if device.type == "mps" else device


def nuisance_directions(features: Tensor, augmented: Tensor, m: int, rtol: float = 1e-6) -> Tensor:
    """The top-``m`` principal directions of each sample's centred set {z, z(aug_1), …}, ``[B, m, D]`` (rows
    orthonormal or 0).

    Args:
        features: factual features ``[B, D]``.
        augmented: features of the augmentations ``[B, A, D]`` (m ≤ A).
        m: directions per sample.
        rtol: a direction whose singular value is below ``rtol`` × the sample's largest is dropped (zeroed).
    """
    if augmented.ndim != 3 or augmented.shape[0] != features.shape[0] or augmented.shape[2] != features.shape[1]:
        raise ConfigError(f"nuisance_directions: augmented features must be [B, A, D] for features "
                          f"{tuple(features.shape)}; got {tuple(augmented.shape)}")  # fmt: skip
    if not 0 <= m <= augmented.shape[1]:
        raise ConfigError(f"nuisance_directions: m must be in [0, A={augmented.shape[1]}]; got {m}")
    points = torch.cat([features[:, None], augmented], dim=1).to(linalg_device(features.device)).double()
    centred = points - points.mean(dim=1, keepdim=True)  # TACT's get_PCs: the set about its own mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # singular values in descending order
    keep = s[:, :m] > rtol * s[:, :1].clamp_min(torch.finfo(s.dtype).tiny)
    return (vh[:, :m] * keep[..., None]).to(device=features.device, dtype=features.dtype)


def trim(x: Tensor, directions: Tensor) -> Tensor:
    """Remove from each ``x[b]`` (``[B, D]``) its projection on the rows of ``directions[b]`` (``[B, m, D]``)."""
    coefficients = torch.einsum("bd,bmd->bm", x, directions)
    return x - torch.einsum("bm,bmd->bd", coefficients, directions)


class PrototypeAverage:
    """The running, sample-count-weighted average of trimmed prototypes (TACT), causal in time.

    Sample i of a batch is scored with ``(n · w̄ + P_i w) / (n + 1)``: the average over the n samples of earlier
    batches plus its own trimmed prototype, so a prediction depends on the sample itself and on the past only
    (not on the other samples of its batch); :meth:`update` then adds the batch. At the start (n = 0) this is
    ``P_i w``, and ``(P_i z)·(P_i w) = (P_i z)·w``: a single sample is scored with the plain prototype.
    """

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.count = 0

    def reset(self) -> None:
        self.mean, self.count = None, 0

    def for_samples(self, trimmed: Tensor) -> Tensor:
        """Each sample's prototype ``[B, D]`` from its own trimmed prototype ``trimmed`` ``[B, D]`` and the past."""
        if self.mean is None or self.count == 0:
            return trimmed
        return (self.count * self.mean.to(trimmed) + trimmed) / (self.count + 1)

    def update(self, trimmed: Tensor) -> None:
        """Add a batch's trimmed prototypes ``[B, D]`` to the average."""
        total = trimmed.detach().sum(dim=0)
        if self.mean is None or self.count == 0:
            self.mean, self.count = total / len(trimmed), len(trimmed)
            return
        self.mean = (self.count * self.mean + total) / (self.count + len(trimmed))
        self.count += len(trimmed)


def trimmed_logit(features: Tensor, directions: Tensor, prototypes: Tensor, bias: Tensor) -> Tensor:
    """The binary logit of trimmed features against per-sample prototypes: ``(P_i z_i) · p_i + b``.

    ``directions`` ``[B, m, D]`` from :func:`nuisance_directions`; ``prototypes`` ``[B, D]`` from
    :meth:`PrototypeAverage.for_samples`; ``bias`` the head's scalar bias.
    """
    return (trim(features, directions) * prototypes.to(features)).sum(dim=1) + bias.to(features).reshape(())
