"""Causal trimming inside `CausalTTA` (algorithms.md §4.6 step 2; the math in :mod:`mammopath.tta.trim`).

For a batch: ``augmentations`` style-only views of every image (:func:`mammopath.tta.style_augment`:
mammography gamma/contrast/noise/blur, H&E stain jitter σ = 0.05 in HED space), their pooled features
(one forward each, no gradients), the top-``directions`` principal directions of each sample's feature
deltas, and a logit function that scores any feature vector of that sample (factual or re-styled) as
``(P_i z) · p_i + b`` with ``p_i`` the running sample-weighted average of trimmed prototypes. The binary
malignancy head is linear (``logit = w · z + b``), so its prototype is the weight row w.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mammopath.tta.augment import style_augment
from mammopath.tta.trim import PrototypeAverage, nuisance_directions, trim, trimmed_logit


class Trimmer:
    """Per-stream state of causal trimming: the running prototype average.

    Args:
        directions: m, directions trimmed per sample (0: off, plain inference exactly).
        augmentations: style-only views per sample.
    """

    def __init__(self, directions: int, augmentations: int) -> None:
        self.directions, self.augmentations = directions, augmentations
        self.prototypes = PrototypeAverage()

    def reset(self) -> None:
        self.prototypes.reset()

    def augmented_features(self, pl_module: Any, images: Tensor, modality: str, generator: torch.Generator) -> Tensor:
        """Pooled features of ``augmentations`` style-only views of every image, ``[B, A, D]``."""
        views = []
        with torch.no_grad():
            for _ in range(self.augmentations):
                views.append(pl_module(style_augment(images, modality, generator), modality)["features"])
        return torch.stack(views, dim=1)

    def logit_fn(self, pl_module: Any, features: Tensor, augmented: Tensor) -> Callable[[Tensor], Tensor]:
        """The batch's trimmed scoring ``features [B, D] -> logit [B]``; adds the batch to the prototype average.

        Every sample's prototype mixes the earlier batches' average with its own trimmed prototype only
        (:class:`~mammopath.tta.trim.PrototypeAverage`), so the update after it cannot reach this prediction.
        """
        fc = pl_module.classifier.fc
        directions = nuisance_directions(features.detach(), augmented, self.directions)
        own = trim(fc.weight[:1].detach().to(features).expand(len(features), -1), directions)
        prototypes = self.prototypes.for_samples(own)
        self.prototypes.update(own)
        bias = fc.bias.detach()[0]
        return lambda z: trimmed_logit(z, directions, prototypes, bias)
