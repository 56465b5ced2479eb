"""Causal trimming inside `CausalTTA` (algorithms.md §4.6 step 2; the math in :mod:`mammopath.tta.trim`).

For a batch: ``augmentations`` style-only views of every image (:func:`mammopath.tta.style_augment`:
mammography gamma/contrast/noise/blur, TACT's H&E stain jitter σ = 0.05; one generator per image, so a view
never depends on the image's batch-mates), their pooled features (one encoder forward each, no heads, no
gradients), the top-``directions`` principal directions of each sample's centred set {z, z(views)}, and a logit
function that scores any feature vector of that sample (factual or re-styled) as ``(P_i z) · p_i + b`` with
``p_i`` the running sample-weighted average of trimmed prototypes. The binary malignancy head is linear
(``logit = w · z + b``), so its prototype is the weight row w.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mammopath.errors import ConfigError
from mammopath.tta.augment import STYLE_MODALITIES, style_augment
from mammopath.tta.trim import PrototypeAverage, nuisance_directions, trim, trimmed_logit


class Trimmer:
    """Per-stream state of causal trimming: the running prototype average (reset at a domain change only: it does
    not depend on the adapted weights' history beyond the features they give, so a collapse reset keeps it).

    Args:
        directions: m, directions trimmed per sample (0: off, plain inference exactly).
        augmentations: style-only views per sample.
    """

    def __init__(self, directions: int, augmentations: int) -> None:
        problems = self.problems(directions, augmentations)
        if problems:
            raise ConfigError("Trimmer: " + "; ".join(problems))
        self.directions, self.augmentations = directions, augmentations
        self.prototypes = PrototypeAverage()

    @staticmethod
    def problems(directions: int, augmentations: int) -> list[str]:
        """What is wrong with these arguments (an empty list: nothing), named as CausalTTA's."""
        checks = {
            f"trim_augmentations must be >= 1 (got {augmentations})": augmentations < 1,
            f"trim_directions must be in [0, trim_augmentations={augmentations}] (got {directions})":
                not 0 <= directions <= augmentations,
        }  # fmt: skip
        return [message for message, bad in checks.items() if bad]

    def reset(self) -> None:
        self.prototypes.reset()

    @staticmethod
    def check(pl_module: Any) -> None:
        """Raise at setup if a modality of the module has no style-only augmentation, or pathology is not RGB."""
        unsupported = sorted(set(pl_module.encoder.modalities) - set(STYLE_MODALITIES))
        if unsupported:
            raise ConfigError(f"CausalTTA trim: no style-only augmentation for modality {unsupported} (known: "
                              f"{list(STYLE_MODALITIES)}); set trim: false")  # fmt: skip
        if "patho" in pl_module.encoder.modalities and pl_module.encoder.in_chans != 3:
            raise ConfigError(f"CausalTTA trim: the H&E stain jitter needs RGB pathology images, but the encoder takes "
                              f"{pl_module.encoder.in_chans} channel(s); set trim: false")  # fmt: skip

    def augmented_features(
        self, pl_module: Any, images: Tensor, modality: str, generators: Sequence[torch.Generator]
    ) -> Tensor:
        """Pooled features ``[B, A, D]`` of ``augmentations`` style-only views of every image (encoder only)."""
        views = []
        with torch.no_grad():
            for _ in range(self.augmentations):
                x = pl_module.normalize(style_augment(images, modality, generators), modality)
                views.append(pl_module.encoder(x, modality)["features"])
        return torch.stack(views, dim=1)

    def logit_fn(
        self,
        pl_module: Any,
        batch: dict[str, Any],
        features: Tensor,
        modality: str,
        generators: Sequence[torch.Generator],
    ) -> Callable[[Tensor], Tensor]:
        """The batch's trimmed scoring ``features [B, D] -> logit [B]``; adds the batch to the prototype average.

        Augments the batch's images (one generator per image), finds each sample's directions from its own
        features ``features`` and its views'. Every sample's prototype mixes the earlier batches' average with its
        own trimmed prototype only (:class:`~mammopath.tta.trim.PrototypeAverage`), so neither its batch-mates nor
        the update after it can reach this prediction.
        """
        images = batch["image"].to(pl_module.device)
        augmented = self.augmented_features(pl_module, images, modality, generators)
        return self.score(pl_module, features, augmented)

    def score(self, pl_module: Any, features: Tensor, augmented: Tensor) -> Callable[[Tensor], Tensor]:
        """:meth:`logit_fn` from given augmented features ``[B, A, D]``."""
        fc = pl_module.classifier.fc
        directions = nuisance_directions(features.detach(), augmented, self.directions)
        own = trim(fc.weight[:1].detach().to(features).expand(len(features), -1), directions)
        prototypes = self.prototypes.for_samples(own)
        self.prototypes.update(own)
        bias = fc.bias.detach()[0]
        return lambda z: trimmed_logit(z, directions, prototypes, bias)
