"""The guarded update's math (algorithms.md §4.2, §4.6): thresholds on the scale of ln C, DeYO's filter and weights.

SAR and EATA state their thresholds as fractions of ``ln C``, the entropy of a uniform prediction over C
classes: the reliable-sample bound E₀ = 0.4 · ln C. SAR's collapse bound (reset when the running mean
entropy of reliable samples falls below 0.2) was set on ImageNet (C = 1000); expressed as a fraction of
ln 1000 it is 0.2 / ln 1000 ≈ 0.029, which for a binary task (C = 2) is ≈ 0.020. Kept as an absolute 0.2
with C = 2 it sat below E₀ = 0.277, so almost every update was undone at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mammopath.errors import ConfigError

#: SAR's collapse bound 0.2 on ImageNet, as a fraction of ln 1000 (≈ 0.0290).
SAR_COLLAPSE_MARGIN = 0.2 / math.log(1000)
#: SAR's (and EATA's) reliable-entropy bound E₀ = 0.4 · ln C.
SAR_ENTROPY_MARGIN = 0.4


def entropy_scale(num_classes: int) -> float:
    """ln C: the entropy of a uniform prediction over ``num_classes`` classes (nats)."""
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (thresholds scale with ln C); got {num_classes}")
    return math.log(num_classes)


def entropy_threshold(margin: float, num_classes: int) -> float:
    """E₀ = ``margin`` · ln C (SAR: margin 0.4)."""
    return margin * entropy_scale(num_classes)


def collapse_threshold(margin: float, num_classes: int) -> float:
    """The collapse bound ``margin`` · ln C (SAR's 0.2 at C = 1000 is margin 0.2 / ln 1000)."""
    return margin * entropy_scale(num_classes)


def binary_entropy(logit: Tensor) -> Tensor:
    """Entropy (nats) of a Bernoulli with the given logit, per sample."""
    p = torch.sigmoid(logit)
    return -(p * F.logsigmoid(logit) + (1 - p) * F.logsigmoid(-logit))


def patch_shuffle(
    images: Tensor, grid: int = 4, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> Tensor:
    """Cut every image into grid × grid tiles and permute them, each image its own permutation (DeYO's shuffle:
    destroys shape, keeps local style). ``generator``: one per image (an image's permutation then depends on
    nothing else), or one drawn from image after image."""
    b, c, h, w = images.shape
    th, tw = h // grid, w // grid
    crop = images[:, :, : th * grid, : tw * grid]
    tiles = crop.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    generators = generator if isinstance(generator, Sequence) else [generator] * b
    if len(generators) != b:
        raise ConfigError(f"patch_shuffle: {len(generators)} generators for {b} images; give one per image")
    perm = torch.stack([torch.randperm(grid * grid, generator=g) for g in generators]).to(images.device)
    tiles = torch.gather(tiles, 1, perm.view(b, grid * grid, 1, 1, 1).expand_as(tiles))
    tiles = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, th * grid, tw * grid)
    out = images.clone()
    out[:, :, : th * grid, : tw * grid] = tiles
    return out


def plpd(logit: Tensor, shuffled_logit: Tensor) -> Tensor:
    """DeYO's pseudo-label probability difference: p_ŷ(x) − p_ŷ(x′), ŷ the prediction on x (binary)."""
    p, q = torch.sigmoid(logit), torch.sigmoid(shuffled_logit)
    return torch.where(p >= 0.5, p - q, q - p)


def deyo_weights(entropy: Tensor, plpd_value: Tensor, e0: float) -> Tensor:
    """DeYO's sample weights 1/exp(H − E₀) + 1/exp(−PLPD) (Lee et al., ICLR 2024), detached."""
    return (torch.exp(-(entropy.detach() - e0)) + torch.exp(plpd_value.detach())).detach()
