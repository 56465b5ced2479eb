"""`MixStyle`: mix token styles between images of one modality after early ViT blocks, during training only.

Forward hooks on the chosen blocks replace the block's output tokens by :func:`mammopath.dg.mixstyle`
with probability ``p`` per batch and block, λ ~ Beta(α, α). ``random`` pairs each image with a random
image of the same batch; ``crossdomain`` with an image of another source domain of the batch (any number
of domains, odd batch sizes). A batch is always one modality (the module runs each modality through
its own forward), so styles are never mixed across modalities. In eval, test and predict mode, and
while :meth:`MixStyle.paused` (the style bank records clean statistics), the hooks are an exact identity.

With ``crossdomain`` and a single source domain in a batch (a fold that leaves one source domain of a
modality) the batch is mixed at random instead; every such batch is counted and the count logged as
``dg/mixstyle_single_domain`` (and said once in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mammopath.dg.mixstyle import crossdomain_partners, mixstyle, random_partners
from mammopath.errors import ConfigError

log = logging.getLogger(__name__)


class MixStyle(L.Callback):
    """Token-level MixStyle (defaults from algorithms.md §2: p = 0.5, α = 0.1, ε = 1e-6).

    Args:
        layers: indices of the blocks after which styles are mixed (early blocks; default the second and third).
        p: probability of mixing, per batch and layer.
        alpha: Beta(α, α) parameter of the mixing weight λ.
        mix: ``random`` or ``crossdomain``.
        eps: added to the variance.
        modalities: modalities mixed (default both).
    """

    def __init__(
        self,
        layers: list[int] | None = None,
        p: float = 0.5,
        alpha: float = 0.1,
        mix: str = "crossdomain",
        eps: float = 1e-6,
        modalities: list[str] | None = None,
    ) -> None:
        super().__init__()
        if mix not in ("random", "crossdomain"):
            raise ConfigError(f"MixStyle mix must be 'random' or 'crossdomain'; got {mix!r}")
        if not 0 <= p <= 1 or alpha <= 0:
            raise ConfigError(f"MixStyle needs 0 <= p <= 1 and alpha > 0; got p={p}, alpha={alpha}")
        self.layers = list(layers) if layers is not None else [1, 2]
        self.p, self.alpha, self.mix, self.eps = p, alpha, mix, eps
        self.modalities = set(modalities or ["mammo", "patho"])
        self._handles: list[Any] = []
        self._domains: dict[str, list[str]] = {}
        self._paused = False
        self.mixed = 0
        self.single_domain = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._handles:
            return
        encoder: Any = pl_module.encoder  # type: ignore[attr-defined]
        depth = len(encoder.blocks)
        bad = [i for i in self.layers if not 0 <= i < depth - 1]
        if bad:
            raise ConfigError(f"MixStyle layers {bad} are not early blocks of a {depth}-block encoder (0..{depth - 2})")
        for i in self.layers:
            self._handles.append(encoder.blocks[i].register_forward_hook(self._hook(pl_module)))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run without mixing (e.g. while recording clean token statistics)."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._domains = {m: list(sub["domain"]) for m, sub in batch.items() if sub is not None}

    def _hook(self, pl_module: Any):  # type: ignore[no-untyped-def]
        encoder = pl_module.encoder

        def hook(module: Any, inputs: Any, output: Tensor) -> Tensor | None:
            modality = encoder.active_modality
            if self._paused or not pl_module.training or modality not in self.modalities:
                return None
            domains = self._domains.get(modality)
            if domains is None or len(domains) != output.shape[0] or output.shape[0] < 2:
                return None
            if torch.rand(()) >= self.p:
                return None
            perm = crossdomain_partners(domains) if self.mix == "crossdomain" else random_partners(len(domains))
            if perm is None:
                if self.single_domain == 0:
                    log.warning("MixStyle crossdomain: a %s batch holds one source domain; mixed at random", modality)
                self.single_domain += 1
                perm = random_partners(len(domains))
            lam = torch.distributions.Beta(self.alpha, self.alpha).sample((output.shape[0],))
            self.mixed += 1
            return mixstyle(output, lam.to(output.device), perm.to(output.device), encoder.num_prefix_tokens, self.eps)

        return hook

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("dg/mixstyle_batches", float(self.mixed))
        pl_module.log("dg/mixstyle_single_domain", float(self.single_domain))
