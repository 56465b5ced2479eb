"""IRMv1 penalty (Arjovsky et al. 2019) with DomainBed's unbiased split-batch estimate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mammopath.errors import ConfigError


def _risk(logits: Tensor, targets: Tensor) -> Tensor:
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets.long())


def irm_penalty(logits: Tensor, targets: Tensor) -> Tensor:
    """IRMv1 split-batch penalty of one environment.

    A dummy scale w = 1.0 requiring grad multiplies the logits; g₁ = ∂ L(w·logits[0::2], targets[0::2]) / ∂w
    and g₂ likewise on [1::2], both with ``create_graph``; penalty = g₁·g₂ (the product of two independent
    estimates is unbiased for ‖∇_w L‖²). L is cross-entropy for logits [N, C] with integer targets, and
    binary cross-entropy with logits for 1-D logits [N] with 0/1 targets.
    """
    if logits.shape[0] != targets.shape[0]:
        raise ConfigError(f"logits and targets differ in length ({logits.shape[0]} vs {targets.shape[0]})")
    if logits.shape[0] < 2:
        raise ConfigError("irm_penalty needs at least 2 samples (one per half)")
    scale = torch.tensor(1.0, device=logits.device, dtype=logits.dtype, requires_grad=True)
    g1 = torch.autograd.grad(_risk(logits[0::2] * scale, targets[0::2]), [scale], create_graph=True)[0]
    g2 = torch.autograd.grad(_risk(logits[1::2] * scale, targets[1::2]), [scale], create_graph=True)[0]
    return g1 * g2
