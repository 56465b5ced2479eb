"""mixstyle against an independent computation; partners; token statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammopath.dg import crossdomain_partners, mixstyle, token_statistics
from mammopath.errors import ConfigError


def _independent(tokens: np.ndarray, lam: np.ndarray, perm: np.ndarray, prefix: int, eps: float) -> np.ndarray:
    out = tokens.astype(np.float64).copy()
    patches = out[:, prefix:]
    mu = patches.mean(axis=1, keepdims=True)
    sigma = np.sqrt(patches.var(axis=1, ddof=1, keepdims=True) + eps)
    lam = lam[:, None, None]
    mu_mix, sigma_mix = lam * mu + (1 - lam) * mu[perm], lam * sigma + (1 - lam) * sigma[perm]
    out[:, prefix:] = sigma_mix * (patches - mu) / sigma + mu_mix
    return out


@pytest.mark.parametrize("prefix", [0, 1, 3])
def test_mixstyle_equals_an_independent_computation(prefix: int) -> None:
    g = torch.Generator().manual_seed(prefix)
    tokens = torch.randn(5, 9, 6, generator=g) * 3 + 1
    lam = torch.rand(5, generator=g)
    perm = torch.tensor([2, 0, 4, 1, 3])
    got = mixstyle(tokens, lam, perm, num_prefix_tokens=prefix)
    expected = _independent(tokens.numpy(), lam.numpy(), perm.numpy(), prefix, 1e-6)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:, :prefix], tokens[:, :prefix])  # prefix tokens pass unchanged


def test_lambda_one_returns_the_input_and_statistics_are_detached() -> None:
    tokens = torch.randn(4, 7, 5, requires_grad=True)
    out = mixstyle(tokens, torch.ones(4), torch.tensor([1, 2, 3, 0]))
    torch.testing.assert_close(out, tokens, atol=1e-5, rtol=1e-5)
    out.sum().backward()  # gradient flows through x only (μ, σ detached): d/dx of σ·(x−μ)/σ + μ is 1
    torch.testing.assert_close(tokens.grad[:, 1:], torch.ones(4, 6, 5))
    mu, sigma = token_statistics(tokens.half(), 1)
    assert mu.dtype == torch.float32 and not mu.requires_grad and sigma.shape == (4, 1, 5)
    with pytest.raises(ConfigError, match="lam and perm"):
        mixstyle(tokens, torch.ones(3), torch.arange(4))


def test_crossdomain_partners_come_from_another_domain_for_any_batch() -> None:
    g = torch.Generator().manual_seed(0)
    for domains in (["a", "b", "a", "b", "a"], ["a", "b", "c"], ["x", "x", "y"]):  # odd sizes, three domains
        partners = crossdomain_partners(domains, g)
        assert partners is not None
        assert all(domains[int(j)] != domains[i] for i, j in enumerate(partners))
    assert crossdomain_partners(["a", "a", "a"]) is None
