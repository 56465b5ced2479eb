"""`IRM`: the IRMv1 penalty as a loss term, per environment (a source domain within a modality).

It registers the term ``irm`` on the module: for every modality and every environment of the batch with
at least ``min_samples`` labelled samples, :func:`mammopath.dg.irm_penalty` on the malignancy logits; the
term is the mean over those environments (DomainBed). Its weight is 1.0 until ``anneal_steps`` and
``penalty_weight`` after (read every step; a YAML ``loss_weights.irm`` multiplies it); at the anneal step
the optimizer state is reset (DomainBed re-creates Adam there). Environments skipped for having too few
samples are counted (``dg/irm_skipped_envs``); a batch with fewer than two environments of a modality has
no cross-environment signal there, which is counted too (``dg/irm_single_env_batches``). The penalty is
logged as ``loss/irm``, its weight as ``loss_weight/irm``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mammopath.dg.irm import irm_penalty
from mammopath.errors import ConfigError
from mammopath.losses.task import zero_with_grad

log = logging.getLogger(__name__)


class IRM(L.Callback):
    """IRMv1 with an annealed penalty weight (defaults: DomainBed's λ = 100 after 500 steps).

    Args:
        penalty_weight: λ after the anneal step.
        anneal_steps: optimizer steps at weight 1.0 before λ applies (and the optimizer state is reset).
        min_samples: labelled samples an environment needs in a batch (≥ 2: one per half).
        anneal_fraction: instead of ``anneal_steps``, the share of the run's optimizer steps
            (``trainer.estimated_stepping_batches``) before λ applies, fixed when fitting starts: the same
            schedule for runs of any length (the evidence suite anneals over 10%).
    """

    def __init__(
        self, penalty_weight: float = 100.0, anneal_steps: int = 500, min_samples: int = 4,
        anneal_fraction: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if penalty_weight < 0 or anneal_steps < 0 or min_samples < 2:
            raise ConfigError("IRM needs penalty_weight >= 0, anneal_steps >= 0 and min_samples >= 2")
        if anneal_fraction is not None and not 0 <= anneal_fraction < 1:
            raise ConfigError(f"IRM anneal_fraction must be in [0, 1); got {anneal_fraction}")
        self.penalty_weight, self.anneal_steps, self.min_samples = penalty_weight, anneal_steps, min_samples
        self.anneal_fraction = anneal_fraction
        self.skipped = 0
        self.single_env = 0
        self._reset = False

    def weight(self, step: int) -> float:
        """The penalty weight at ``step``: 1.0 before the anneal step, λ from it on."""
        return 1.0 if step < self.anneal_steps else self.penalty_weight

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.register_loss_term("irm", self.penalty, weight=self.weight)  # type: ignore[operator]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.anneal_fraction is not None:
            self.anneal_steps = round(self.anneal_fraction * trainer.estimated_stepping_batches)
            log.info("IRM: anneal over %d of %d steps", self.anneal_steps, trainer.estimated_stepping_batches)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.unregister_loss_term("irm")  # type: ignore[operator]

    def penalty(self, module: Any, batch: dict[str, Any], outputs: dict[str, dict[str, Tensor]]) -> Tensor:
        """Mean IRMv1 penalty over the environments of every modality of the step."""
        terms: list[Tensor] = []
        for modality, out in outputs.items():
            sub = batch[modality]
            logits, labels = out["cls_logit"], sub["label"].to(out["cls_logit"].device)
            domains = list(sub["domain"])
            envs = sorted(set(domains))
            if len(envs) < 2:
                self.single_env += 1
            for env in envs:
                idx = torch.tensor([i for i, d in enumerate(domains) if d == env], device=logits.device)
                idx = idx[labels[idx] >= 0]
                if len(idx) < self.min_samples:
                    self.skipped += 1
                    continue
                terms.append(irm_penalty(logits[idx], labels[idx].float()))
        if not terms:
            first = next(iter(outputs.values()))["cls_logit"]
            return zero_with_grad(first)
        return torch.stack(terms).mean()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._reset and 0 < self.anneal_steps <= trainer.global_step:
            self._reset = True
            for optimizer in trainer.optimizers:
                optimizer.state.clear()
            log.info(
                "IRM: penalty weight %g from step %d; optimizer state reset", self.penalty_weight, self.anneal_steps
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("dg/irm_skipped_envs", float(self.skipped))
        pl_module.log("dg/irm_single_env_batches", float(self.single_env))
