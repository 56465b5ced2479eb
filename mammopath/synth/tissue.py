"""Generator v2's pathology: cells whose nuclei differ by shape and arrangement, not by total stain; ink dots.

A patch (64 px at 1 µm/px, a 128-px cell of a 0.5 µm/px slide) of normal tissue has small round nuclei lined up
in gland rings around a lumen; in tumour, 70% of the nuclear area is large irregular nuclei at random among
fewer rings (generator 2.3; 2.0-2.1: all of it, which made the class easier than the ink cue; 2.2: 40%, too hard
for the oracle); both cover the same nuclear
area (:data:`NUCLEAR_AREA`), so the mean haematoxylin is not a class cue and per-image style statistics do not
carry the class. The cue is green ink dots inside a cell. Used by :mod:`mammopath.synth.suite`.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from mammopath.synth.patho import INK_OD
from mammopath.synth.styles import PathoStyle

#: how far a unit style tilt moves a cell's stain amounts (scenario M3): × e^{±0.2}
TILT_STAIN = 0.2
PATCH, PATCH_MPP, SLIDE_MPP = 64, 1.0, 0.5
CELL = int(PATCH * PATCH_MPP / SLIDE_MPP)  # level-0 pixels of one patch
NUCLEAR_AREA = 0.16  # fraction of a cell covered by nuclei, both classes
NORMAL_RADIUS = 3.2  # level-0 px: the small round nuclei of the gland rings
TUMOUR_RADIUS = (4.5, 6.5)  # level-0 px: the semi-minor axis of tumour nuclei, drawn uniformly
TUMOUR_ASPECT = (1.2, 1.8)  # their elongation, drawn uniformly
#: share of a tumour patch's nuclear area in large irregular nuclei, the rest in gland rings (generator 2.6,
#: ladder step 5 of pre-registration amendment 4; 2.5: 0.5; 2.3-2.4: 0.7; 2.2: 0.4; 2.0-2.1: 1.0)
TUMOUR_IRREGULAR = 0.4


def _disk(radius: float, aspect: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """A filled ellipse (semi-axes ``radius · aspect`` and ``radius``) rotated by ``angle``, on a square grid."""
    return _disk_cached(round(radius, 1), round(aspect, 1), round(angle % np.pi, 1))


@functools.lru_cache(maxsize=4096)
def _disk_cached(radius: float, aspect: float, angle: float) -> np.ndarray:
    r = int(np.ceil(radius * max(aspect, 1.0))) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    return (u / (radius * aspect)) ** 2 + (v / radius) ** 2 <= 1.0


def _stamp(canvas: np.ndarray, shape: np.ndarray, cy: int, cx: int, count: bool = True) -> int:
    """OR ``shape`` into ``canvas`` centred at (cy, cx), clipped at the borders; returns the pixels it newly set
    (0 without ``count``)."""
    r = shape.shape[0] // 2
    y0, x0 = cy - r, cx - r
    ys, xs = (
        slice(max(0, y0), min(canvas.shape[0], y0 + shape.shape[0])),
        slice(max(0, x0), min(canvas.shape[1], x0 + shape.shape[1])),
    )
    sub = shape[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    added = int(np.count_nonzero(sub & ~canvas[ys, xs])) if count else 0
    canvas[ys, xs] |= sub
    return added


def render_cell(rng: np.random.Generator, tumour_look: bool, size: int = CELL) -> np.ndarray:
    """Nuclei (bool) of one patch: gland rings of small round nuclei; a tumour patch keeps rings for all but
    :data:`TUMOUR_IRREGULAR` of its nuclear area and fills that share with large irregular nuclei at random.

    Both classes cover :data:`NUCLEAR_AREA` of the cell (±2%): the class is in shape and arrangement.
    """
    nuclei = np.zeros((size, size), dtype=bool)
    target = NUCLEAR_AREA * size * size
    rings_until = target * (1.0 - TUMOUR_IRREGULAR) if tumour_look else target
    area, guard = 0, 0
    while area < rings_until and guard < 40:
        guard += 1
        ring = rng.uniform(13, 18)
        cy, cx = rng.uniform(ring, size - ring, size=2)
        count = int(2 * np.pi * ring / 8.5)
        phase = rng.uniform(0, 2 * np.pi)
        for k in range(count):  # a whole ring, then the area once
            a = phase + 2 * np.pi * k / count
            _stamp(nuclei, _disk(NORMAL_RADIUS), int(cy + ring * np.sin(a)), int(cx + ring * np.cos(a)), count=False)
        area = int(np.count_nonzero(nuclei))
    guard = 0
    while tumour_look and area < target and guard < 400:
        guard += 1
        cy, cx = rng.integers(0, size, size=2)
        shape = _disk(rng.uniform(*TUMOUR_RADIUS), rng.uniform(*TUMOUR_ASPECT), rng.uniform(0, np.pi))
        area += _stamp(nuclei, shape, int(cy), int(cx))
    return nuclei


def render_patho_slide(
    rng: np.random.Generator, looks: np.ndarray, style: PathoStyle, tilt: np.ndarray, cues: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A grid of cells (``looks[i, j]``: tumour appearance) → (RGB level 0 with ink, the same without ink)."""
    g = looks.shape[0]
    size = g * CELL
    hema = np.zeros((size, size), dtype=np.float32)
    for i in range(g):
        for j in range(g):
            hema[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL] = render_cell(rng, bool(looks[i, j]))
    # per-cell stain amount (M3's tilt), expanded to pixels
    scale = np.kron(np.exp(TILT_STAIN * tilt), np.ones((CELL, CELL))).astype(np.float32)
    # the nuclei's edges (0.7 px) and the scanner's optical blur, in one filter of the haematoxylin field
    hema = ndimage.gaussian_filter(hema, float(np.hypot(0.7, style.blur))) * np.float32(1.1)
    # eosin: a smooth field, drawn at 1/4 resolution, upsampled and smoothed over the 4-px blocks
    coarse = ndimage.gaussian_filter(rng.standard_normal((size // 4, size // 4), dtype=np.float32), 0.75)
    eosin = ndimage.uniform_filter(np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1), 4)
    eosin = np.clip(np.float32(0.35) + np.float32(0.15) * eosin, 0, None) * np.float32(style.e_scale) * scale
    hema *= np.float32(style.h_scale) * scale
    # Beer-Lambert per channel, plus sensor noise (uniform integers in [-3, 3]: sd 2 grey levels)
    noise = rng.integers(-3, 4, size=(size, size, 3), dtype=np.int8)
    clean = np.empty((size, size, 3), dtype=np.uint8)
    for c in range(3):
        channel = np.exp(-(hema * np.float32(style.h_vector[c]) + eosin * np.float32(style.e_vector[c])))
        channel *= np.float32(255.0)
        channel += noise[..., c]
        clean[..., c] = np.clip(channel, 0, 255)
    # the cue: 3-5 dots of green ink inside each cued cell
    r = 5
    dots = np.zeros((size, size), dtype=bool)
    for i, j in zip(*np.nonzero(cues), strict=True):
        for _ in range(int(rng.integers(3, 6))):
            cy = int(i * CELL + rng.integers(r + 2, CELL - r - 2))
            cx = int(j * CELL + rng.integers(r + 2, CELL - r - 2))
            _stamp(dots, _disk(r), cy, cx)
    inked = clean.copy()
    inked[dots] = np.clip(inked[dots] * np.exp(-np.asarray(INK_OD)), 0, 255).astype(np.uint8)
    return inked, clean


def cell_polygon(i: int, j: int) -> np.ndarray:
    x0, y0 = j * CELL, i * CELL
    return np.asarray([[x0, y0], [x0 + CELL, y0], [x0 + CELL, y0 + CELL], [x0, y0 + CELL]], dtype=float)
