"""Style-intervention marginalization (algorithms.md §4.6 step 1, the backdoor adjustment) as a plain function.

``p(y | do(x)) ≈ β · p(y | factual) + (1 − β) · mean_k p(y | content re-rendered with source style k)``: the
tokens after the style-bank layer are re-rendered with each style (:func:`mammopath.dg.restyle`, MixStyle with
λ = 0) and only the later blocks re-run (``forward_from``). Each sample is re-styled with its own token
statistics, so its prediction never depends on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mammopath.dg.mixstyle import restyle


def marginalized_logit(
    pl_module: Any,
    tokens: Tensor,
    styles: tuple[Tensor, Tensor],
    factual: Tensor,
    beta: float,
    modality: str,
    grid: Tensor | tuple[int, int],
    image_size: tuple[int, int],
    score: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The logit of the backdoor-adjusted probability.

    Args:
        pl_module: the module (``forward_from``, ``encoder.num_prefix_tokens``).
        tokens: the batch's tokens after the style layer.
        styles: ``(μ [K, C], σ [K, C])``, the K source styles.
        factual: the factual logit ``[B]`` (already trimmed when trimming is on).
        beta: weight of the factual prediction.
        modality, grid, image_size: of the batch (``grid`` the forward's patch grid).
        score: scores a re-styled feature vector (trimming); None: the head's own logit.
    """
    mus, sigmas = styles
    k = len(mus)
    prefix = pl_module.encoder.num_prefix_tokens
    grid = (int(grid[0]), int(grid[1]))
    p = beta * torch.sigmoid(factual)
    for mu, sigma in zip(mus, sigmas, strict=True):
        styled = pl_module.forward_from(restyle(tokens, mu, sigma, prefix), modality, grid, image_size)
        logit = styled["cls_logit"] if score is None else score(styled["features"])
        p = p + (1 - beta) / k * torch.sigmoid(logit)
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)
