"""Generator v2's mammograms: a square breast with one mass whose *shape* carries the class, and the cue.

A mammogram is rendered square (isotropic; 128 px, read at 64) with one mass of radius 16-21% of the side
(about 3 × 3 tokens of 8 px at 64 px): lobulated and spiculated when it looks malignant, a smooth ellipse when
benign, with the same contrast. The cue is a burned-in marker square in the top corner away from the chest wall.
Used by :mod:`mammopath.synth.suite`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from mammopath.synth.mammo import MammoCase
from mammopath.synth.styles import MammoStyle

#: how far a unit style tilt moves an image (scenario M3): gamma × e^{±0.35}, contrast × e^{±0.12}
TILT_GAMMA, TILT_CONTRAST = 0.35, 0.12


MAMMO_SIDE = 128


def mass_mask(rng: np.random.Generator, side: int, center: tuple[float, float], radius: float, malignant: bool):
    """A lobulated, spiculated mass (malignant look) or a smooth ellipse (benign look) of similar area."""
    yy, xx = np.mgrid[0:side, 0:side]
    dy, dx = yy - center[0], xx - center[1]
    theta, dist = np.arctan2(dy, dx), np.hypot(dy, dx)
    if malignant:
        r = np.full_like(theta, radius * 0.85)
        lobes = int(rng.integers(4, 7))
        r += radius * 0.30 * np.cos(lobes * theta + rng.uniform(0, 2 * np.pi))
        mask = dist <= r
        for angle in rng.uniform(0, 2 * np.pi, size=int(rng.integers(5, 8))):
            length = radius * rng.uniform(1.5, 2.0)
            along = dx * np.cos(angle) + dy * np.sin(angle)
            across = np.abs(-dx * np.sin(angle) + dy * np.cos(angle))
            mask |= (along > 0) & (along < length) & (across < 2.5 * (1 - along / length) + 0.8)
        return mask
    ratio, angle = rng.uniform(0.75, 0.95), rng.uniform(0, np.pi)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / radius) ** 2 + (v / (radius * ratio)) ** 2 <= 1.0


def render_breast(rng: np.random.Generator, looks_malignant: bool, side: int = MAMMO_SIDE) -> MammoCase:
    """A square breast image (chest wall left), one mass; display-domain values in [0, 1]."""
    yy, xx = np.mgrid[0:side, 0:side]
    breast_w = side * rng.uniform(0.78, 0.9)
    breast = (xx / breast_w) ** 2 + ((yy - side / 2) / (side * 0.47)) ** 2 <= 1.0
    noise = ndimage.gaussian_filter(rng.standard_normal((side, side)), 5)
    level = rng.uniform(0.28, 0.38)
    image = np.where(breast, np.clip(level + 0.05 * noise / (noise.std() + 1e-8), 0.05, 0.9), 0.0)
    radius = rng.uniform(0.16, 0.21) * side
    center = _mass_center(rng, side, breast_w, side * 0.47, margin=radius * 1.3)
    mask = mass_mask(rng, side, center, radius, looks_malignant) & breast
    image = np.clip(image + 0.35 * ndimage.gaussian_filter(mask.astype(float), 0.7), 0.0, 1.0)
    return MammoCase(image=image, mask=mask, malignant=looks_malignant, birads=0, marker=False)


def _mass_center(rng: np.random.Generator, side: int, a: float, b: float, margin: float) -> tuple[float, float]:
    """A uniform point at least ``margin`` inside the breast (semi-axes ``a`` along x from the chest wall, ``b``
    along y), away from the chest wall (x ≥ 15% of the side) and from the cue's corner (top right)."""
    for _ in range(1000):
        y, x = rng.uniform(side / 2 - b + margin, side / 2 + b - margin), rng.uniform(side * 0.15, a - margin)
        inside = (x / (a - margin)) ** 2 + ((y - side / 2) / (b - margin)) ** 2 <= 1.0
        if inside and not (y < side * 0.2 and x > side * 0.6):
            return float(y), float(x)
    raise AssertionError("no room for the mass")  # unreachable for the radii drawn here


def cue_region(side: int = MAMMO_SIDE) -> np.ndarray:
    """The burned-in marker: a square of 1/8 of the side in the top corner away from the chest wall."""
    s = side // 8
    region = np.zeros((side, side), dtype=bool)
    region[3 : 3 + s, side - 3 - s : side - 3] = True
    return region


def tilted(style: MammoStyle, tilt: float) -> MammoStyle:
    """The style moved by a tilt (M3's style-label confounding); tilt 0 is the style itself."""
    if tilt == 0:
        return style
    return replace(
        style,
        gamma=style.gamma * float(np.exp(TILT_GAMMA * tilt)),
        contrast=style.contrast * float(np.exp(TILT_CONTRAST * tilt)),
    )
