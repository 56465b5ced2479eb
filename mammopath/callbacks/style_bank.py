"""`StyleBank`: record source-domain token styles into the module's bank during fit.

At the start of every validation epoch (so the bank in each checkpoint, ``best.ckpt`` included, matches
the weights it is saved with) it runs up to ``images_per_class`` labelled training images of each class of
every source domain and modality through the encoder in eval mode, with MixStyle paused, takes their token
statistics (μ, σ) after the bank's layer (:func:`mammopath.dg.token_statistics`, the helper MixStyle uses)
and stores one class-balanced style Gaussian per source domain in ``module.style_bank``
(:func:`~mammopath.models.style_bank.class_balanced_styles`: style, not class). A source domain without
labelled images of both classes gets no row (its style could not be told from its class), with a warning.
The held-out domains are never read (they are not in the training rows).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import default_collate

from mammopath.dg.mixstyle import token_statistics
from mammopath.errors import ConfigError
from mammopath.models.style_bank import class_balanced_styles

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
    """Fill ``module.style_bank`` with class-balanced source styles (every validation epoch, and before fit ends).

    Arguments are keyword-only (an old positional call fails instead of changing meaning).

    Args:
        images_per_class: labelled training images of each class recorded per source domain.
        batch_size: images per recording forward.
        seed: seed of the choice of images.
    """

    def __init__(self, *, images_per_class: int = 16, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        if images_per_class < 2:
            raise ConfigError(f"StyleBank.images_per_class must be >= 2 (a spread needs two images); "
                              f"got {images_per_class}")  # fmt: skip
        if batch_size < 1:
            raise ConfigError(f"StyleBank.batch_size must be >= 1; got {batch_size}")
        if seed < 0:
            raise ConfigError(f"StyleBank.seed must be >= 0 (it seeds numpy's generator); got {seed}")
        self.images_per_class, self.batch_size, self.seed = images_per_class, batch_size, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        bank = getattr(pl_module, "style_bank", None)
        if bank is None or bank.size == 0:
            raise ConfigError("StyleBank needs model.style_bank_size > 0")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.record(trainer, pl_module)

    def choose(self, rows: Any, epoch: int) -> list[int]:
        """Row indices: up to ``images_per_class`` of each class (0, 1) of every domain, seeded by epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        domain = rows["domain"].astype(str).to_numpy()
        label = pd.to_numeric(rows["label"], errors="coerce").to_numpy(dtype=float)
        chosen: list[int] = []
        for name in sorted(set(domain)):
            for cls in (0, 1):
                idx = np.flatnonzero((domain == name) & (label == cls))
                chosen += rng.choice(idx, size=min(self.images_per_class, len(idx)), replace=False).tolist()
        return chosen

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
                chosen = self.choose(rows, trainer.current_epoch)
                if not chosen:
                    log.warning("style bank %s: no labelled training images; the bank stays empty", modality)
                    continue
                mus, sigmas, labels = [], [], []
                for start in range(0, len(chosen), self.batch_size):
                    batch = default_collate([dataset[i] for i in chosen[start : start + self.batch_size]])
                    mu, sigma = record_styles(pl_module, batch["image"].to(pl_module.device), modality)
                    mus.append(mu.cpu())
                    sigmas.append(sigma.cpu())
                    labels.append(torch.as_tensor(batch["label"]).long().cpu())
                names = [str(rows["domain"].iloc[i]) for i in chosen]
                mean, mu_spread, sigma_mean, log_sigma_spread, domains = class_balanced_styles(
                    torch.cat(mus), torch.cat(sigmas), torch.cat(labels), names
                )
                left_out = sorted(set(names) - set(domains))
                if left_out:
                    log.warning(
                        "style bank %s: source domain(s) %s have labelled images of one class only and get no "
                        "style row (their style could not be told from their class)", modality, left_out,
                    )  # fmt: skip
                pl_module.style_bank.fill(modality, mean, sigma_mean, domains, mu_spread, log_sigma_spread)
                log.debug("style bank %s: %d class-balanced rows from %d images", modality, len(domains), len(chosen))
        pl_module.train(was_training)
