"""Map validation beyond the pointing game: deletion and insertion AUC, each with its random-map baseline.

Deletion (Petsiuk et al. 2018): remove the patch-grid cells of an image in the order of a map (most
relevant first), replacing them with the image mean, and follow the model's probability of its original
prediction; the area under that curve is low when the map found what the model uses. Insertion starts
from the mean image and adds cells in the map's order; its AUC is high for a faithful map. The same
curves with a random cell order are the baseline that makes the numbers readable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def _curve(
    predict: Callable[[Tensor], Tensor], images: Tensor, order: Tensor, grid: tuple[int, int], steps: int, insert: bool
) -> np.ndarray:
    """Probability of the originally predicted class after each step, ``[B, steps + 1]``."""
    b, _, height, width = images.shape
    h, w = grid
    base = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    with torch.no_grad():
        p0 = predict(images)
    positive = p0 >= 0.5
    n = h * w
    probs = []
    for step in range(steps + 1):
        k = round(n * step / steps)
        cells = torch.zeros(b, n, dtype=torch.bool)
        rows = torch.arange(b)[:, None].expand(-1, k)
        cells[rows, order[:, :k]] = True
        mask = cells.view(b, 1, h, w).float()
        mask = torch.nn.functional.interpolate(mask, size=(height, width), mode="nearest")
        keep = mask if insert else 1 - mask
        with torch.no_grad():
            p = predict(images * keep + base * (1 - keep))
        probs.append(torch.where(positive, p, 1 - p))
    return torch.stack(probs, dim=1).cpu().numpy()


def deletion_insertion(
    predict: Callable[[Tensor], Tensor], images: Tensor, maps: Tensor, steps: int = 8, seed: int = 0
) -> dict[str, float]:
    """Deletion and insertion AUC of ``maps`` ``[B, h, w]`` and of random maps on the same images.

    Args:
        predict: images ``[B, C, H, W]`` → probability of malignancy ``[B]``.
        images: the images (the fixed subset being validated).
        maps: relevance maps on the patch grid.
        steps: cells are removed / inserted in this many equal steps.
        seed: seed of the random baseline's orders.
    """
    b, h, w = maps.shape
    order = torch.argsort(maps.reshape(b, -1), dim=1, descending=True, stable=True)
    g = torch.Generator().manual_seed(seed)
    random = torch.stack([torch.randperm(h * w, generator=g) for _ in range(b)])
    out = {}
    for name, o in (("map", order), ("random", random)):
        for kind, insert in (("deletion", False), ("insertion", True)):
            curve = _curve(predict, images, o, (h, w), steps, insert)
            out[f"{kind}_auc_{name}"] = float(np.trapezoid(curve, dx=1.0 / steps, axis=1).mean())
    return out


def pointing_hits(maps: Tensor, masks: Tensor) -> tuple[list[float], list[float]]:
    """Per image with a lesion: whether the map's arg-max cell (upsampled to the mask) hits it, and the hit
    probability of a uniformly random point on the same image (the lesion's area fraction)."""
    hits, chance = [], []
    for m, mask in zip(maps, masks, strict=True):
        mask = mask > 0.5
        if not bool(mask.any()):
            continue
        up = torch.nn.functional.interpolate(m[None, None].float(), size=mask.shape, mode="nearest")[0, 0]
        flat = int(torch.argmax(up))
        hits.append(float(mask.flatten()[flat]))
        chance.append(float(mask.float().mean()))
    return hits, chance
