"""MixStyle on ViT tokens (Zhou et al., ICLR 2021; token form as in TFS-ViT), as plain functions.

A token "style" is its per-channel mean and standard deviation over the patch tokens of one image
(pre-LN ViTs normalize each token over channels, so these instance statistics survive into the next
block). :func:`token_statistics` computes them (detached, in fp32, prefix tokens excluded); the
callback :class:`~mammopath.callbacks.mixstyle.MixStyle` and the test-time style bank share it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mammopath.errors import ConfigError


def token_statistics(tokens: Tensor, num_prefix_tokens: int = 1, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel ``(μ, σ)`` over the patch tokens of ``tokens`` ``[B, T, C]``, each ``[B, 1, C]``.

    μ = mean over patch tokens, σ = sqrt(var over patch tokens (unbiased, torch's default) + eps); both
    detached and computed in fp32 (a variance in fp16 under autocast can underflow).
    """
    if tokens.ndim != 3:
        raise ConfigError(f"token statistics need tokens [B, T, C]; got shape {tuple(tokens.shape)}")
    patches = tokens[:, num_prefix_tokens:].detach().float()
    if patches.shape[1] < 2:
        raise ConfigError(f"token statistics need at least 2 patch tokens; got {patches.shape[1]}")
    mu = patches.mean(dim=1, keepdim=True)
    sigma = (patches.var(dim=1, keepdim=True) + eps).sqrt()
    return mu, sigma


def mixstyle(tokens: Tensor, lam: Tensor, perm: Tensor, num_prefix_tokens: int = 1, eps: float = 1e-6) -> Tensor:
    """Mix every image's token style with that of its partner ``perm[b]``.

    tokens ``[B, T, C]``; the first ``num_prefix_tokens`` tokens pass unchanged. Over the remaining patch
    tokens μ, σ come from :func:`token_statistics`; λ = ``lam`` ``[B]`` is broadcast per sample;
    μ_mix = λμ + (1−λ)μ[perm], σ_mix likewise; output patch tokens = σ_mix · (x − μ)/σ + μ_mix.
    """
    b = tokens.shape[0]
    if lam.shape != (b,) or perm.shape != (b,):
        raise ConfigError(f"lam and perm need shape ({b},); got {tuple(lam.shape)} and {tuple(perm.shape)}")
    mu, sigma = token_statistics(tokens, num_prefix_tokens, eps)
    w = lam.to(mu).view(b, 1, 1)
    mu_mix = w * mu + (1 - w) * mu[perm]
    sigma_mix = w * sigma + (1 - w) * sigma[perm]
    patches = tokens[:, num_prefix_tokens:]
    mixed = (sigma_mix * (patches.float() - mu) / sigma + mu_mix).to(tokens.dtype)
    return torch.cat([tokens[:, :num_prefix_tokens], mixed], dim=1)


def random_partners(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """``mix='random'``: a random permutation of the batch."""
    return torch.randperm(batch, generator=generator)


def crossdomain_partners(domains: list[str], generator: torch.Generator | None = None) -> Tensor | None:
    """``mix='crossdomain'``: each sample's partner is drawn uniformly from the samples of *another* domain.

    Works for any number of domains and any batch size (odd included); None when the batch holds a
    single domain (there is nothing to mix across).
    """
    codes = {d: i for i, d in enumerate(sorted(set(domains)))}
    if len(codes) < 2:
        return None
    dom = torch.tensor([codes[d] for d in domains])
    partners = torch.empty(len(domains), dtype=torch.long)
    for i in range(len(domains)):
        others = torch.nonzero(dom != dom[i]).flatten()
        partners[i] = others[torch.randint(len(others), (1,), generator=generator)]
    return partners


def restyle(tokens: Tensor, mu: Tensor, sigma: Tensor, num_prefix_tokens: int = 1, eps: float = 1e-6) -> Tensor:
    """Re-render the content of ``tokens`` ``[B, T, C]`` with the style ``(mu, sigma)`` (``[C]`` or ``[B, 1, C]``).

    Patch tokens become ``σ_new · (x − μ(x)) / σ(x) + μ_new`` (μ(x), σ(x) from :func:`token_statistics`):
    MixStyle with λ = 0 and a partner style taken from elsewhere (a source style bank at test time).
    """
    own_mu, own_sigma = token_statistics(tokens, num_prefix_tokens, eps)
    mu = mu.to(own_mu).reshape(-1, 1, own_mu.shape[-1]) if mu.ndim < 3 else mu.to(own_mu)
    sigma = sigma.to(own_sigma).reshape(-1, 1, own_sigma.shape[-1]) if sigma.ndim < 3 else sigma.to(own_sigma)
    patches = tokens[:, num_prefix_tokens:]
    styled = (sigma * (patches.float() - own_mu) / own_sigma + mu).to(tokens.dtype)
    return torch.cat([tokens[:, :num_prefix_tokens], styled], dim=1)
