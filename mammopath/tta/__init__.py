"""Test-time adaptation as plain functions: guard thresholds and DeYO weights, style-only augmentations, trimming,
marginalization, seeded generators.

The callbacks :class:`~mammopath.callbacks.tta.CausalTTA` and :class:`~mammopath.callbacks.tta.TENT` wrap them.
"""

from mammopath.tta.augment import hed_jitter, mammo_style_jitter, stain_jitter, style_augment
from mammopath.tta.guard import (
    SAR_COLLAPSE_MARGIN,
    SAR_ENTROPY_MARGIN,
    binary_entropy,
    collapse_threshold,
    deyo_weights,
    entropy_threshold,
    patch_shuffle,
    plpd,
)
from mammopath.tta.marginalize import marginalized_logit
from mammopath.tta.seeding import sample_keys, seeded_generator
from mammopath.tta.trim import PrototypeAverage, nuisance_directions, trim, trimmed_logit

__all__ = [
    "SAR_COLLAPSE_MARGIN",
    "SAR_ENTROPY_MARGIN",
    "PrototypeAverage",
    "binary_entropy",
    "collapse_threshold",
    "deyo_weights",
    "entropy_threshold",
    "hed_jitter",
    "mammo_style_jitter",
    "marginalized_logit",
    "nuisance_directions",
    "patch_shuffle",
    "plpd",
    "sample_keys",
    "seeded_generator",
    "stain_jitter",
    "style_augment",
    "trim",
    "trimmed_logit",
]
