"""Contrastive-loss behaviours that `make mutation` found unpinned (docs/mutation.md)."""

from __future__ import annotations

import pytest
import torch

from mammopath.losses import intra_modal_contrastive_loss, scale_grad


def test_scale_zero_detaches_so_no_backward_reaches_the_encoder() -> None:
    """``0 = detached`` (the docstring): no graph at all, not a graph with a zero gradient."""
    x = torch.randn(3, 2, requires_grad=True)
    out = scale_grad(x * 2, 0.0)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.equal(out, x.detach() * 2)


def test_intra_modal_term_without_positives_is_a_zero_that_keeps_the_graph() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    none = torch.zeros(4, 4, dtype=torch.bool)
    loss = intra_modal_contrastive_loss(z, none, 1 / 0.07)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))
    # the diagonal is never a positive: only self-pairs given is the same as none
    assert intra_modal_contrastive_loss(z, torch.eye(4, dtype=torch.bool), 1 / 0.07).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
def test_intra_modal_positives_given_as_numbers_are_read_as_booleans(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, generator=g)
    positives = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]])
    want = intra_modal_contrastive_loss(z, positives.bool(), 2.0)
    assert intra_modal_contrastive_loss(z, positives.to(dtype), 2.0).item() == pytest.approx(want.item(), rel=1e-6)
