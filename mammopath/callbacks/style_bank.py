"""`StyleBank`: record source-domain token styles into the module's bank during fit.

At the start of every validation epoch (so the bank in each checkpoint, ``best.ckpt`` included, matches
the weights it is saved with) it runs up to ``size / n_domains`` training images of every source domain
and modality through the encoder in eval mode, with MixStyle paused, and stores their token statistics
(μ, σ) after the bank's layer (:func:`mammopath.dg.token_statistics`, the helper MixStyle uses) in
``module.style_bank``. The held-out domains are never read (they are not in the training rows).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import default_collate

from mammopath.dg.mixstyle import token_statistics
from mammopath.errors import ConfigError

log = logging.getLogger(__name__)


def record_styles(module: Any, images: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token statistics ``(μ, σ)`` ``[B, C]`` after the bank's layer for a batch of [0, 1] images."""
    captured: list[torch.Tensor] = []
    handle = module.encoder.blocks[module.style_bank.layer].register_forward_hook(
        lambda mod, inp, out: captured.append(out)
    )
    try:
        module.encoder(module.normalize(images, modality), modality)
    finally:
        handle.remove()
    mu, sigma = token_statistics(captured[0], module.encoder.num_prefix_tokens)
    return mu[:, 0], sigma[:, 0]


class StyleBank(L.Callback):
    """Fill ``module.style_bank`` with source styles (every validation epoch, and once before fit ends).

    Args:
        batch_size: images per recording forward.
        seed: seed of the choice of images.
    """

    def __init__(self, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        bank = getattr(pl_module, "style_bank", None)
        if bank is None or bank.size == 0:
            raise ConfigError("StyleBank needs model.style_bank_size > 0")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.record(trainer, pl_module)

    def record(self, trainer: L.Trainer, pl_module: Any) -> None:
        datasets = trainer.datamodule.datasets.get("train", {})  # type: ignore[attr-defined]
        pauses = [cb.paused() for cb in getattr(trainer, "callbacks", []) if hasattr(cb, "paused")]  # MixStyle
        was_training = pl_module.training
        pl_module.eval()
        # fork_rng: recording (which reads augmented training samples) leaves the training randomness untouched
        with contextlib.ExitStack() as stack, torch.no_grad(), torch.random.fork_rng(devices=[]):
            for pause in pauses:
                stack.enter_context(pause)
            for modality, dataset in datasets.items():
                rows = dataset.rows
                domains = sorted(set(rows["domain"]))
                quota = max(1, pl_module.style_bank.size // len(domains))
                rng = np.random.default_rng([self.seed, trainer.current_epoch])
                chosen: list[int] = []
                for domain in domains:
                    idx = np.flatnonzero(rows["domain"].to_numpy() == domain)
                    chosen += rng.choice(idx, size=min(quota, len(idx)), replace=False).tolist()
                mus, sigmas = [], []
                for start in range(0, len(chosen), self.batch_size):
                    batch = default_collate([dataset[i] for i in chosen[start : start + self.batch_size]])
                    mu, sigma = record_styles(pl_module, batch["image"].to(pl_module.device), modality)
                    mus.append(mu)
                    sigmas.append(sigma)
                names = [str(rows["domain"].iloc[i]) for i in chosen]
                pl_module.style_bank.fill(modality, torch.cat(mus), torch.cat(sigmas), names)
                log.debug("style bank %s: %d styles of %s", modality, len(chosen), domains)
        pl_module.train(was_training)
