"""Synthetic H&E slides with a designed causal signal, written as tiled pyramidal TIFFs.

Causal signal: nuclear density, size and darkness grow with the grade (normal < benign < in situ
< invasive; BACH's four classes). Domain style (:class:`PathoStyle`) changes the stain matrix,
stain amounts, blur, scanner resolution, tile codec and JPEG quality. The shortcut is green ink
dots: on the tumour in source centres, on normal tissue in the held-out one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

from mammopath.synth.styles import PathoStyle

#: Per grade (bach4 index): nuclei per pixel, radius range, hematoxylin amount.
NUCLEI = {
    0: (0.0035, (2.0, 3.0), 1.0),
    1: (0.0045, (2.1, 3.2), 1.04),
    2: (0.0055, (2.3, 3.5), 1.1),
    3: (0.0065, (2.5, 3.8), 1.16),
}


@dataclass
class SlideCase:
    """Ground truth of one synthetic slide."""

    rgb: np.ndarray  # (H, W, 3) uint8 level 0
    tissue: np.ndarray  # (H, W) bool
    regions: list[tuple[np.ndarray, int]]  # (polygon (K, 2) level-0 x/y, grade) lesion regions
    grade_map: np.ndarray  # (H, W) int8 per-pixel grade (0 outside lesions)
    marker_mask: np.ndarray  # (H, W) bool ink dots


def blob_polygon(rng: np.random.Generator, center: tuple[float, float], radius: float, n: int = 48) -> np.ndarray:
    """An irregular closed polygon (K, 2) of x/y points around ``center``."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.full(n, radius)
    for k in (2, 3, 5):
        r += radius * rng.uniform(0.05, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterize one polygon (x/y points) to a bool mask of ``shape`` (H, W)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in polygon], fill=1)
    return np.asarray(img, dtype=bool)


def _nuclei(rng: np.random.Generator, region: np.ndarray, grade: int) -> np.ndarray:
    """Hematoxylin concentration of nuclei scattered in ``region`` at the density of ``grade``."""
    density, (rmin, rmax), amount = NUCLEI[grade]
    out = np.zeros(region.shape, dtype=np.float32)
    for radius in np.linspace(rmin, rmax, 3):
        seeds = (rng.random(region.shape) < density / 3) & region
        r = int(np.ceil(radius))
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = (xx**2 + (yy * rng.uniform(0.8, 1.2)) ** 2) <= radius**2
        out = np.maximum(out, ndimage.binary_dilation(seeds, structure=disk).astype(np.float32) * amount)
    return out


def render_slide(
    rng: np.random.Generator,
    size: int,
    lesions: list[int],
    style: PathoStyle,
    marker_on_lesion: bool | None,
    *,
    lesion_size: float | None = None,
    density: float | None = None,
) -> SlideCase:
    """Render one slide with one lesion region per entry of ``lesions`` (its bach4 grade).

    Args:
        marker_on_lesion: put green ink dots on the tumour (True), on lesion-free tissue (False),
            or nowhere (None).
        lesion_size: a patient's latent lesion size in [0, 1] (region radius 10-26% of the slide); None
            draws it (14-22%).
        density: a patient's latent stromal density in [0, 1] (eosin 0.30-0.60); None keeps 0.45.
    """
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size]
    base = ((xx - size / 2) / (size * 0.42)) ** 2 + ((yy - size / 2) / (size * 0.38)) ** 2
    noise = ndimage.gaussian_filter(rng.standard_normal((-(-size // 8), -(-size // 8))), 3)
    noise = np.kron(noise / (noise.std() + 1e-8), np.ones((8, 8)))[:size, :size]
    tissue = (base + 0.15 * noise) < 1.0
    grade_map = np.zeros(shape, dtype=np.int8)
    regions: list[tuple[np.ndarray, int]] = []
    inner = np.argwhere(ndimage.binary_erosion(tissue, iterations=size // 8))
    for grade in lesions:
        cy, cx = inner[rng.integers(len(inner))]
        frac = rng.uniform(0.14, 0.22) if lesion_size is None else 0.10 + 0.16 * lesion_size
        polygon = blob_polygon(rng, (float(cx), float(cy)), size * frac)
        region = fill_polygon(polygon, shape) & tissue
        grade_map[region] = np.maximum(grade_map[region], grade)
        regions.append((polygon, grade))
    hema = np.zeros(shape, dtype=np.float32)
    for grade in range(4):
        area = tissue & (grade_map == grade)
        if area.any():
            hema = np.maximum(hema, _nuclei(rng, area, grade))
    stroma = 0.45 if density is None else 0.30 + 0.30 * density
    eosin = tissue * (stroma + 0.12 * ndimage.gaussian_filter(rng.standard_normal(shape), 4) * 4)
    od = hema[..., None] * style.h_scale * np.asarray(style.h_vector) + np.clip(eosin, 0, None)[
        ..., None
    ] * style.e_scale * np.asarray(style.e_vector)
    marker = np.zeros(shape, dtype=bool)
    if marker_on_lesion is not None:
        # ink dots, as pathologists dot the area of interest: on the tumour, or on normal tissue
        target = (grade_map >= 2) if marker_on_lesion else (tissue & (grade_map == 0))
        candidates = np.argwhere(ndimage.binary_erosion(target, iterations=4))
        if len(candidates):
            n_dots = max(1, int(target.sum() / (size * size / 40)))
            seeds = np.zeros(shape, dtype=bool)
            picks = candidates[rng.integers(len(candidates), size=n_dots)]
            seeds[picks[:, 0], picks[:, 1]] = True
            r = max(3, size // 160)
            yy2, xx2 = np.mgrid[-r : r + 1, -r : r + 1]
            marker = ndimage.binary_dilation(seeds, structure=(xx2**2 + yy2**2) <= r * r)
            od = od + marker[..., None] * np.asarray([0.9, 0.15, 0.8])  # green ink absorbs red and blue
    rgb = 255.0 * np.exp(-od)
    if style.blur > 0:
        rgb = ndimage.gaussian_filter(rgb, (style.blur, style.blur, 0))
    rgb8 = np.clip(rgb + rng.normal(0, 2.0, rgb.shape), 0, 255).astype(np.uint8)
    return SlideCase(rgb=rgb8, tissue=tissue, regions=regions, grade_map=grade_map, marker_mask=marker)


#: Optical density of green ink (it absorbs red and blue).
INK_OD = np.asarray([0.9, 0.15, 0.8])


def paint_ink(rgb: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator, size: int) -> np.ndarray:
    """Green ink dots inside ``box`` = (x0, y0, x1, y1) of a rendered slide, as a separate layer.

    Returns the dot mask; ``rgb`` is darkened in place where the dots are (Beer-Lambert: × exp(−OD)).
    """
    x0, y0, x1, y1 = box
    r = max(3, size // 160)
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (xx**2 + yy**2) <= r * r
    for _ in range(int(rng.integers(2, 5))):
        cy = int(rng.integers(y0 + r, max(y0 + r + 1, y1 - r)))
        cx = int(rng.integers(x0 + r, max(x0 + r + 1, x1 - r)))
        sub = mask[cy - r : cy + r + 1, cx - r : cx + r + 1]
        sub |= disk[: sub.shape[0], : sub.shape[1]]
    rgb[mask] = np.clip(rgb[mask] * np.exp(-INK_OD), 0, 255).astype(rgb.dtype)
    return mask


def write_pyramid_tiff(
    path: str | Path,
    rgb: np.ndarray,
    *,
    mpp: float | None,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    min_size: int = 128,
    description: str | None = None,
) -> Path:
    """Write a generic pyramidal tiled TIFF like ASAP's converter (levels downsampled by 2).

    Args:
        mpp: level-0 µm/px stored as XResolution/YResolution in pixels per centimetre (the
            CAMELYON convention); ``None`` writes no resolution tags.
        compression: ``"jpeg"`` or ``"jpeg2000"`` tiles.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = [rgb]
    while min(levels[-1].shape[:2]) // 2 >= min_size:
        prev = levels[-1].astype(np.float32)
        h, w = (prev.shape[0] // 2) * 2, (prev.shape[1] // 2) * 2
        half = prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        levels.append(np.round(half).astype(np.uint8))
    args = {"level": quality}
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp) as tif:
        for i, level in enumerate(levels):
            kwargs: dict[str, Any] = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)
                kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs=args,
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
                **kwargs,
            )
    tmp.replace(path)
    return path
