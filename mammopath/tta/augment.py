"""Style-only image augmentations for causal trimming (algorithms.md §4.6 step 2): acquisition, not content.

Each changes how an image was *acquired* and leaves what it shows in place, so the feature directions
they move are non-causal (TACT, Liu et al., NeurIPS 2025):

- mammography (:func:`mammo_style_jitter`): gamma, contrast about the image mean, Gaussian noise and
  Gaussian blur, with per-image strengths drawn uniformly from :data:`MAMMO_RANGES`;
- H&E (:func:`hed_jitter`): TACT's Camelyon17 stain jitter (Tellez et al. 2018), in TACT's units: stain
  concentrations S = −ln(255 · P + ε) · M⁻¹ per pixel (P the RGB value in [0, 1], ε = 1e-6, M Ruifrok &
  Johnston's stain matrix; natural-log optical density of 8-bit intensities), every stain channel
  S ← α S + β with α ~ U(1 − σ, 1 + σ), β ~ U(−σ, σ), σ = 0.05, back with P = (exp(−S · M) − ε) / 255,
  clipped to [0, 1] (:func:`stain_jitter` is that map for given α, β).

Images are ``[B, C, H, W]`` in [0, 1] (the module normalizes after); outputs stay in [0, 1]. Every image has
its own generator (one per sample, :meth:`~mammopath.callbacks.tta.TestTimeAdaptation.sample_generators`),
so an image's augmentation never depends on its batch-mates. Strengths are drawn on the CPU from that
generator; the mammography noise is drawn on the images' device from a generator of that device seeded by
it (no full-resolution copy per augmentation): reproducible on a given device type, not across CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mammopath.errors import ConfigError

#: Per-image strengths (uniform ranges) of the mammography jitter: log-gamma, contrast, noise std, blur sigma (px).
MAMMO_RANGES = {"log_gamma": (-0.3, 0.3), "contrast": (0.8, 1.2), "noise": (0.0, 0.02), "blur": (0.0, 1.0)}
#: Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density (TACT's M).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
#: TACT's ε inside the logarithm of 8-bit intensities.
STAIN_EPS = 1e-6


def _uniform(bounds: tuple[float, float], generator: torch.Generator, n: int = 1) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator)


def _check(images: Tensor, generators: Sequence[torch.Generator]) -> None:
    if images.ndim != 4 or len(generators) != images.shape[0]:
        raise ConfigError(f"style augmentation needs images [B, C, H, W] and one generator per image; got shape "
                          f"{tuple(images.shape)} and {len(generators)} generators")  # fmt: skip


def _blur_one(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one image ``[C, H, W]`` (radius from its own sigma; sigma ≤ 1e-3: unchanged)."""
    if sigma <= 1e-3:
        return image
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    flat = image[None]
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                    groups=c)  # fmt: skip
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)  # fmt: skip
    return flat[0]


def _device_normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise drawn on ``like``'s device from a generator of that device seeded by ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(shape, generator=device_generator, device=like.device, dtype=like.dtype)


def mammo_style_jitter(images: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """A mammogram re-acquired: blur, then contrast about the mean, gamma, and noise (strengths per image)."""
    _check(images, generators)
    r = MAMMO_RANGES
    out = []
    for image, g in zip(images, generators, strict=True):
        gamma = math.exp(float(_uniform(r["log_gamma"], g)))
        contrast, noise_std, blur = (float(_uniform(r[k], g)) for k in ("contrast", "noise", "blur"))
        x = _blur_one(image, blur)
        mean = x.mean()
        x = ((x - mean) * contrast + mean).clamp(0.0, 1.0) ** gamma
        out.append((x + noise_std * _device_normal(tuple(image.shape), image, g)).clamp(0.0, 1.0))
    return torch.stack(out)


def stain_jitter(images: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """TACT's stain map for given ``alpha``, ``beta`` ``[B, 3]``: S = −ln(255 P + ε) M⁻¹, S ← αS + β, back to RGB."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"H&E stain jitter needs RGB images [B, 3, H, W]; got shape {tuple(images.shape)}")
    m = RGB_FROM_HED.to(images)
    stains = -torch.einsum("bchw,cs->bshw", torch.log(255.0 * images + STAIN_EPS), torch.linalg.inv(m))
    stains = stains * alpha.to(images).view(-1, 3, 1, 1) + beta.to(images).view(-1, 3, 1, 1)
    rgb = torch.exp(-torch.einsum("bshw,sc->bchw", stains, m)) - STAIN_EPS
    return (rgb / 255.0).clamp(0.0, 1.0)


def hed_jitter(images: Tensor, generators: Sequence[torch.Generator], sigma: float = 0.05) -> Tensor:
    """H&E stain jitter (TACT's): per image and stain channel S ← α S + β, α ~ U(1−σ, 1+σ), β ~ U(−σ, σ)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"H&E stain jitter needs RGB images [B, 3, H, W]; got shape {tuple(images.shape)}")
    if sigma < 0:
        raise ConfigError(f"hed_jitter sigma must be >= 0; got {sigma}")
    _check(images, generators)
    draws = [(_uniform((1 - sigma, 1 + sigma), g, 3), _uniform((-sigma, sigma), g, 3)) for g in generators]
    alpha = torch.stack([a for a, _ in draws])
    beta = torch.stack([b for _, b in draws])
    return stain_jitter(images, alpha, beta)


def style_augment(images: Tensor, modality: str, generators: Sequence[torch.Generator]) -> Tensor:
    """The modality's style-only augmentation (one generator per image): mammography jitter or H&E stain jitter."""
    if modality == "mammo":
        return mammo_style_jitter(images, generators)
    if modality == "patho":
        return hed_jitter(images, generators)
    raise ConfigError(f"no style-only augmentation for modality {modality!r}; known: {sorted(STYLE_MODALITIES)}")


#: The modalities with a style-only augmentation (causal trimming needs one).
STYLE_MODALITIES = ("mammo", "patho")
