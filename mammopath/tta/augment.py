"""Style-only image augmentations for causal trimming (algorithms.md §4.6 step 2): acquisition, not content.

Each changes how an image was *acquired* and leaves what it shows in place, so the feature directions
they move are non-causal (TACT, Liu et al., NeurIPS 2025):

- mammography (:func:`mammo_style_jitter`): gamma, contrast about the image mean, Gaussian noise and
  Gaussian blur, with per-image strengths drawn uniformly from :data:`MAMMO_RANGES`;
- H&E (:func:`hed_jitter`): stain jitter in HED optical-density space (Ruifrok & Johnston's matrix, the
  scaling of scikit-image's ``rgb2hed``): every stain channel s ← α s + β with α ~ U(1 − σ, 1 + σ) and
  β ~ U(−σ, σ), σ = 0.05 (Tellez et al. 2018; TACT's Camelyon17 augmentation).

Images are ``[B, C, H, W]`` in [0, 1] (the module normalizes after); outputs stay in [0, 1]. All randomness
comes from the given generator (CPU), so a seeded generator gives the same augmentations on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mammopath.errors import ConfigError

#: Per-image strengths (uniform ranges) of the mammography jitter: log-gamma, contrast, noise std, blur sigma (px).
MAMMO_RANGES = {"log_gamma": (-0.3, 0.3), "contrast": (0.8, 1.2), "noise": (0.0, 0.02), "blur": (0.0, 1.0)}
#: Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_LOG_ADJUST = math.log(1e-6)  # scikit-image's scaling of optical density


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)


def _blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per image (sigma 0: unchanged)."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    s = sigma.to(images).clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(x**2) / (2 * s**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    b, c, h, w = images.shape
    flat = images.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)  # [B·C, K]
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(b * c, 1, -1, 1), groups=b * c)
    out = flat.reshape(b, c, h, w)
    return torch.where((sigma.to(images.device) > 1e-3).view(-1, 1, 1, 1), out, images)


def mammo_style_jitter(images: Tensor, generator: torch.Generator) -> Tensor:
    """A mammogram re-acquired: blur, then contrast about the mean, gamma, and noise (strengths per image)."""
    b = images.shape[0]
    r = MAMMO_RANGES
    gamma = torch.exp(_uniform((b,), r["log_gamma"], generator)).to(images).view(b, 1, 1, 1)
    contrast = _uniform((b,), r["contrast"], generator).to(images).view(b, 1, 1, 1)
    noise_std = _uniform((b,), r["noise"], generator).to(images).view(b, 1, 1, 1)
    blur = _uniform((b,), r["blur"], generator)
    noise = torch.randn(images.shape, generator=generator).to(images)
    out = _blur(images, blur)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0.0, 1.0) ** gamma
    return (out + noise_std * noise).clamp(0.0, 1.0)


def rgb_to_hed(images: Tensor) -> Tensor:
    """RGB [0, 1] → stain concentrations (H, E, D): scikit-image's ``rgb2hed`` scaling, without its clip at 0."""
    od = torch.log(images.clamp_min(1e-6)) / _LOG_ADJUST  # [B, 3, H, W], >= 0
    hed_from_rgb = torch.linalg.inv(RGB_FROM_HED).to(images)
    return torch.einsum("bchw,cs->bshw", od, hed_from_rgb)  # unclipped, so the jitter inverts exactly at σ = 0


def hed_to_rgb(stains: Tensor) -> Tensor:
    """Stain concentrations → RGB [0, 1] (inverse of :func:`rgb_to_hed` where nothing was clipped)."""
    od = torch.einsum("bshw,sc->bchw", stains, RGB_FROM_HED.to(stains))
    return torch.exp(od * _LOG_ADJUST).clamp(0.0, 1.0)


def hed_jitter(images: Tensor, generator: torch.Generator, sigma: float = 0.05) -> Tensor:
    """H&E stain jitter: per image and stain channel s ← α s + β, α ~ U(1−σ, 1+σ), β ~ U(−σ, σ)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"H&E stain jitter needs RGB images [B, 3, H, W]; got shape {tuple(images.shape)}")
    if sigma < 0:
        raise ConfigError(f"hed_jitter sigma must be >= 0; got {sigma}")
    b = images.shape[0]
    alpha = _uniform((b, 3), (1 - sigma, 1 + sigma), generator).to(images).view(b, 3, 1, 1)
    beta = _uniform((b, 3), (-sigma, sigma), generator).to(images).view(b, 3, 1, 1)
    return hed_to_rgb(rgb_to_hed(images) * alpha + beta)


def style_augment(images: Tensor, modality: str, generator: torch.Generator) -> Tensor:
    """The modality's style-only augmentation: mammography jitter, or H&E stain jitter (σ 0.05)."""
    if modality == "mammo":
        return mammo_style_jitter(images, generator)
    if modality == "patho":
        return hed_jitter(images, generator)
    raise ConfigError(f"no style-only augmentation for modality {modality!r}; known: 'mammo', 'patho'")
