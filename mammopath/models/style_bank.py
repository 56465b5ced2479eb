"""`TokenStyleBank`: source-domain token styles kept on the module (and in every checkpoint) for test-time use.

A token style is the per-channel mean and standard deviation (μ, σ) over the patch tokens after block
``layer`` (:func:`mammopath.dg.token_statistics`, the helper MixStyle uses). Per-image statistics carry
the image's class wherever class changes intensity or texture (it does in pathology: tumour nuclei are
denser and darker), so a bank of training images' statistics would re-render part of the class into a test
image. The bank therefore holds **style, not class**: per modality, rows of a Gaussian over styles, each
tagged with its source domain. The ``StyleBank`` callback writes one row per source domain with
:func:`class_balanced_styles`: the mean of the two class means (both classes weighted equally, whatever
the domain's prevalence) and the within-class spread (the between-class part, which is the class signal, is
left out), of μ and of log σ. ``CausalTTA`` samples styles with :meth:`TokenStyleBank.sample`: a domain
uniformly (the source style prior), a row of it, then μ = mean + spread · ε and σ = exp(mean log σ +
spread · ε′). A row with zero spread is a single style (what :meth:`TokenStyleBank.fill` writes by default).

Buffers, so the bank is in every checkpoint whichever callbacks are attached; the domain names travel as
the module's extra state. Checkpoints written before the spreads existed load with zero spreads (and, with
several rows per domain, are per-image banks that carry class: ``CausalTTA`` warns, see
:meth:`TokenStyleBank.predates_class_balance`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from mammopath.errors import ConfigError

log = logging.getLogger(__name__)


def class_balanced_styles(
    mu: Tensor, sigma: Tensor, labels: Tensor, domains: list[str]
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """One class-balanced style Gaussian per domain from per-image statistics.

    Args:
        mu, sigma: per-image token statistics ``[n, C]``.
        labels: the images' classes ``[n]`` (0/1; other values are ignored).
        domains: the images' source domains.

    Returns:
        ``(mean μ, spread of μ, mean σ, spread of log σ, domain)`` with one row per domain that has images of
        both classes: mean = the average of the class means (equal class weights), spread = the square root
        of the average within-class variance; σ is averaged in log space (a geometric mean), so sampled σ stay
        positive. A domain with a single class is left out: its mean would be that class's style.
    """
    if not (len(mu) == len(sigma) == len(labels) == len(domains)):
        raise ConfigError(f"class_balanced_styles: {len(mu)} μ, {len(sigma)} σ, {len(labels)} labels, "
                          f"{len(domains)} domains; they must be as many")  # fmt: skip
    log_sigma = sigma.float().log()
    rows: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    names: list[str] = []
    for domain in sorted(set(domains)):
        in_domain = torch.tensor([d == domain for d in domains], dtype=torch.bool)
        means, variances = [], []
        for cls in (0, 1):
            idx = in_domain & (labels == cls)
            if int(idx.sum()) == 0:
                break
            stats = torch.cat([mu[idx].float(), log_sigma[idx]], dim=1)
            means.append(stats.mean(dim=0))
            variances.append(stats.var(dim=0, unbiased=False))
        if len(means) < 2:
            continue
        mean, spread = (means[0] + means[1]) / 2, ((variances[0] + variances[1]) / 2).sqrt()
        c = mu.shape[1]
        rows.append((mean[:c], spread[:c], mean[c:].exp(), spread[c:]))
        names.append(domain)
    if not rows:
        empty = mu.new_zeros(0, mu.shape[1])
        return empty, empty, empty, empty, []
    stacked = [torch.stack(column) for column in zip(*rows, strict=True)]
    return stacked[0], stacked[1], stacked[2], stacked[3], names


class TokenStyleBank(nn.Module):
    """Up to ``size`` style rows per modality at block ``layer`` (``size`` 0: no bank).

    Args:
        modalities: the modality names.
        size: rows kept per modality (one per source domain from the ``StyleBank`` callback).
        dim: token width.
        layer: the block whose output the styles describe (the intervention layer).
    """

    def __init__(self, modalities: tuple[str, ...], size: int, dim: int, layer: int) -> None:
        super().__init__()
        if size < 0:
            raise ConfigError(f"style_bank_size must be >= 0; got {size}")
        self.modalities, self.size, self.layer = modalities, size, layer
        self.domain_names: dict[str, list[str]] = {m: [] for m in modalities}
        for m in modalities:
            self.register_buffer(f"mu_{m}", torch.zeros(size, dim))
            self.register_buffer(f"sigma_{m}", torch.ones(size, dim))
            self.register_buffer(f"mu_spread_{m}", torch.zeros(size, dim))
            self.register_buffer(f"log_sigma_spread_{m}", torch.zeros(size, dim))
            self.register_buffer(f"domain_{m}", torch.full((size,), -1, dtype=torch.long))

    def fill(
        self,
        modality: str,
        mu: Tensor,
        sigma: Tensor,
        domains: list[str],
        mu_spread: Tensor | None = None,
        log_sigma_spread: Tensor | None = None,
    ) -> None:
        """Replace a modality's bank with these rows (``[n, C]``, n ≤ size) of these source domains.

        Without spreads every row is one fixed style (μ, σ).
        """
        n = mu.shape[0]
        if n > self.size:
            raise ConfigError(f"{n} style rows ({modality}) do not fit model.style_bank_size={self.size}; raise it")
        if sigma.shape != mu.shape or len(domains) != n:
            raise ConfigError(f"style bank {modality}: μ {tuple(mu.shape)}, σ {tuple(sigma.shape)} and "
                              f"{len(domains)} domains must describe the same rows")  # fmt: skip
        for name, spread in (("mu_spread", mu_spread), ("log_sigma_spread", log_sigma_spread)):
            if spread is not None and (spread.shape != mu.shape or bool((spread < 0).any())):
                raise ConfigError(f"style bank {modality}: {name} must be >= 0 with μ's shape {tuple(mu.shape)}")
        names = sorted(set(domains))
        codes = torch.tensor([names.index(d) for d in domains], dtype=torch.long)
        buffers = {k: getattr(self, f"{k}_{modality}") for k in ("mu", "sigma", "mu_spread", "log_sigma_spread")}
        buffers["mu"].zero_()[:n] = mu.to(buffers["mu"])
        buffers["sigma"].fill_(1.0)[:n] = sigma.to(buffers["sigma"])
        buffers["mu_spread"].zero_()
        buffers["log_sigma_spread"].zero_()
        if mu_spread is not None:
            buffers["mu_spread"][:n] = mu_spread.to(buffers["mu_spread"])
        if log_sigma_spread is not None:
            buffers["log_sigma_spread"][:n] = log_sigma_spread.to(buffers["log_sigma_spread"])
        getattr(self, f"domain_{modality}").fill_(-1)[:n] = codes
        self.domain_names[modality] = names

    def styles(self, modality: str) -> tuple[Tensor, Tensor, list[str]]:
        """The filled rows' centres ``(μ [n, C], σ [n, C], domain of each)`` of a modality."""
        filled = getattr(self, f"domain_{modality}") >= 0
        return (
            getattr(self, f"mu_{modality}")[filled],
            getattr(self, f"sigma_{modality}")[filled],
            self._domains(modality),
        )

    def spreads(self, modality: str) -> tuple[Tensor, Tensor]:
        """The filled rows' spreads ``(of μ [n, C], of log σ [n, C])`` (zero: a fixed style)."""
        filled = getattr(self, f"domain_{modality}") >= 0
        return getattr(self, f"mu_spread_{modality}")[filled], getattr(self, f"log_sigma_spread_{modality}")[filled]

    def predates_class_balance(self, modality: str) -> bool:
        """True for a bank written before class-balanced styles: several rows of one domain, all spreads zero.

        Such banks (per-image statistics, loaded with zero spreads) carry their images' class; re-record them.
        """
        domains = self._domains(modality)
        if len(domains) == len(set(domains)):
            return False
        return all(not bool(spread.any()) for spread in self.spreads(modality))

    def warn_if_unusable(self, modality: str, user: str) -> None:
        """Log a warning when a modality's bank is empty or predates class-balanced styles."""
        if len(self.styles(modality)[0]) == 0:
            log.warning("%s: the %s style bank is empty (train with the StyleBank callback): %s predictions are not "
                        "marginalized", user, modality, modality)  # fmt: skip
        elif self.predates_class_balance(modality):
            log.warning(
                "%s: the %s style bank predates class-balanced styles (several rows per domain, no spreads: "
                "per-image styles that carry class); re-record it with the StyleBank callback",
                user,
                modality,
            )

    def _domains(self, modality: str) -> list[str]:
        codes = getattr(self, f"domain_{modality}")
        names = self.domain_names[modality]
        return [names[int(c)] for c in codes[codes >= 0].tolist()]

    def sample(
        self, modality: str, k: int, generator: torch.Generator, spread: float = 1.0
    ) -> tuple[Tensor, Tensor] | None:
        """``k`` styles ``(μ [k, C], σ [k, C])``: a domain uniformly, a row of it, then a draw from the row.

        ``spread`` scales the rows' spreads (0: the row centres themselves). None when the bank is empty.
        All randomness comes from ``generator`` (CPU), so a seeded generator gives the same styles anywhere.
        """
        mu, sigma, domains = self.styles(modality)
        if len(mu) == 0 or k == 0:
            return None
        mu_spread, log_sigma_spread = self.spreads(modality)
        names = sorted(set(domains))
        picks = []
        for _ in range(k):
            domain = names[int(torch.randint(len(names), (1,), generator=generator))]
            rows = [i for i, d in enumerate(domains) if d == domain]
            picks.append(rows[int(torch.randint(len(rows), (1,), generator=generator))])
        eps = torch.randn(2, k, mu.shape[1], generator=generator).to(mu)
        drawn_mu = mu[picks] + spread * mu_spread[picks] * eps[0]
        drawn_sigma = sigma[picks] * torch.exp(spread * log_sigma_spread[picks] * eps[1])
        return drawn_mu, drawn_sigma

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for m in self.modalities:  # checkpoints from before the spreads: fixed styles (zero spread)
            for name in (f"mu_spread_{m}", f"log_sigma_spread_{m}"):
                if prefix + f"mu_{m}" in state_dict and prefix + name not in state_dict:
                    state_dict[prefix + name] = torch.zeros_like(state_dict[prefix + f"mu_{m}"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> Any:
        return {"domain_names": {m: list(v) for m, v in self.domain_names.items()}, "layer": self.layer}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict):
            self.domain_names = {m: list(v) for m, v in state.get("domain_names", {}).items()}
            for m in self.modalities:
                self.domain_names.setdefault(m, [])
