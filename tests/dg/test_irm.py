"""irm_penalty: zero where the logit scale is already optimal, equal to an independent autograd computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mammopath.dg import irm_penalty
from mammopath.errors import ConfigError


def _independent(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    def grad_at_one(lg: torch.Tensor, tg: torch.Tensor) -> torch.Tensor:
        w = torch.ones((), requires_grad=True, dtype=torch.float64)
        z = lg.double() * w
        risk = F.binary_cross_entropy_with_logits(z, tg.double()) if lg.ndim == 1 else F.cross_entropy(z, tg.long())
        return torch.autograd.grad(risk, w)[0]

    return grad_at_one(logits[0::2], targets[0::2]) * grad_at_one(logits[1::2], targets[1::2])


def test_zero_for_a_predictor_whose_scale_is_optimal_in_both_halves() -> None:
    # four logits repeated in both halves, labels drawn with exactly the predicted probabilities: BCE's
    # derivative in the scale, Σ (σ(z) − y) z, vanishes; the logits are far from zero
    z = torch.tensor([2.0, -1.5, 0.8, -3.0])
    p = torch.sigmoid(z)
    logits = torch.cat([z.repeat_interleave(100), z.repeat_interleave(100)])
    labels = torch.cat([(torch.arange(100)[None, :] < (p[:, None] * 100).round()).float().flatten()] * 2)
    # interleave so that [0::2] and [1::2] are the same set
    logits = torch.stack([logits[:400], logits[400:]], 1).flatten()
    labels = torch.stack([labels[:400], labels[400:]], 1).flatten()
    assert irm_penalty(logits, labels).abs().item() < 1e-3
    assert irm_penalty(logits * 3, labels).item() > 1e-2  # over-confident: not optimal, positive penalty


@pytest.mark.parametrize("shape", ["binary", "multiclass"])
def test_matches_an_independent_autograd_computation(shape: str) -> None:
    g = torch.Generator().manual_seed(1)
    if shape == "binary":
        logits = torch.randn(11, generator=g, requires_grad=True)
        targets = torch.randint(0, 2, (11,), generator=g).float()
    else:
        logits = torch.randn(10, 3, generator=g, requires_grad=True)
        targets = torch.randint(0, 3, (10,), generator=g)
    penalty = irm_penalty(logits, targets)
    assert penalty.item() == pytest.approx(_independent(logits, targets).item(), rel=1e-5, abs=1e-8)
    penalty.backward()  # create_graph: the penalty trains the model
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="at least 2"):
        irm_penalty(logits[:1], targets[:1])
