"""`TokenStyleBank`: source-domain token styles kept on the module (and in every checkpoint) for test-time use.

Per modality, a bounded bank of ``size`` samples of token statistics (μ, σ) — per-channel mean and
standard deviation over the patch tokens after block ``layer`` (:func:`mammopath.dg.token_statistics`,
the helper MixStyle uses) — each tagged with its source domain. The ``StyleBank`` callback fills it
during fit; ``CausalTTA`` re-renders test images with its styles. Buffers, so the bank is in every
checkpoint whichever callbacks are attached; the domain names travel as the module's extra state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mammopath.errors import ConfigError


class TokenStyleBank(nn.Module):
    """A bank of ``size`` token styles per modality at block ``layer`` (``size`` 0: no bank).

    Args:
        modalities: the modality names.
        size: styles kept per modality.
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
            self.register_buffer(f"domain_{m}", torch.full((size,), -1, dtype=torch.long))

    def fill(self, modality: str, mu: Tensor, sigma: Tensor, domains: list[str]) -> None:
        """Replace a modality's bank with these styles (``[n, C]``, n ≤ size) of these source domains."""
        n = mu.shape[0]
        if n > self.size:
            raise ConfigError(f"{n} styles do not fit a bank of {self.size}")
        names = sorted(set(domains))
        codes = torch.tensor([names.index(d) for d in domains], dtype=torch.long)
        getattr(self, f"mu_{modality}").zero_()[:n] = mu.to(getattr(self, f"mu_{modality}"))
        getattr(self, f"sigma_{modality}").fill_(1.0)[:n] = sigma.to(getattr(self, f"sigma_{modality}"))
        getattr(self, f"domain_{modality}").fill_(-1)[:n] = codes
        self.domain_names[modality] = names

    def styles(self, modality: str) -> tuple[Tensor, Tensor, list[str]]:
        """The filled styles ``(μ [n, C], σ [n, C], domain of each)`` of a modality."""
        codes = getattr(self, f"domain_{modality}")
        filled = codes >= 0
        names = self.domain_names[modality]
        domains = [names[int(c)] for c in codes[filled].tolist()]
        return getattr(self, f"mu_{modality}")[filled], getattr(self, f"sigma_{modality}")[filled], domains

    def get_extra_state(self) -> Any:
        return {"domain_names": {m: list(v) for m, v in self.domain_names.items()}, "layer": self.layer}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict):
            self.domain_names = {m: list(v) for m, v in state.get("domain_names", {}).items()}
            for m in self.modalities:
                self.domain_names.setdefault(m, [])
