"""One weighted training objective with named terms.

The total loss is ``Σ_name w_name(step) · term_name``. Terms come from two places:

- the task losses the module computes every step (``cls``, ``bach4``, ``loc``, ``grade`` and, with
  ``model.alignment``, the cross-modal contrastive term ``align``), weighted by the YAML
  ``model.loss_weights`` (defaults in :data:`DEFAULT_TASK_WEIGHTS`);
- terms *registered* by callbacks (:meth:`Objective.register`): a function of the step's batch and
  outputs, with a weight that is either a number or a schedule ``weight(step) -> float``, read at
  **every** step, so a callback can anneal it (IRM's penalty ramp) or change it with
  :meth:`Objective.set_weight`.

Precedence when both set a weight for a registered term: the YAML ``loss_weights`` entry is a
**multiplier** on the callback's weight at that step (``effective = loss_weights[name] · schedule(step)``);
neither silently discards the other. ``loss_weights: {irm: 0}`` switches a term off; without a YAML
entry the callback's weight applies unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mammopath.errors import ConfigError

log = logging.getLogger(__name__)

#: fn(module, batch_by_modality, outputs_by_modality) -> scalar tensor
TermFn = Callable[[Any, dict[str, Any], dict[str, dict[str, Tensor]]], Tensor]
Weight = float | Callable[[int], float]

DEFAULT_TASK_WEIGHTS: dict[str, float] = {"cls": 1.0, "bach4": 0.5, "loc": 0.5, "grade": 0.5, "align": 1.0}


@dataclass
class RegisteredTerm:
    """A loss term added by a callback: its function and its (possibly scheduled) weight."""

    fn: TermFn
    weight: Weight

    def weight_at(self, step: int) -> float:
        value = self.weight(step) if callable(self.weight) else self.weight
        return float(value)


class Objective:
    """Named loss terms and their weights; :meth:`combine` returns the total and what to log.

    Args:
        loss_weights: YAML weights. For task terms they are the weight; for registered terms a
            multiplier on the callback's weight (see the module docstring). Names must be identifiers.
    """

    def __init__(self, loss_weights: Mapping[str, float] | None = None) -> None:
        given = dict(loss_weights or {})
        for name, value in given.items():
            if not str(name).isidentifier():
                raise ConfigError(f"model.loss_weights: term name '{name}' must be an identifier")
            if not isinstance(value, int | float):
                raise ConfigError(f"model.loss_weights.{name} must be a number, got {value!r}")
        self.yaml_weights: dict[str, float] = {k: float(v) for k, v in given.items()}
        self.task_weights: dict[str, float] = {**DEFAULT_TASK_WEIGHTS, **self.yaml_weights}
        self.registered: dict[str, RegisteredTerm] = {}

    # -- registered terms ------------------------------------------------------------------------
    def register(self, name: str, fn: TermFn, weight: Weight = 1.0) -> None:
        """Add (or replace) a term computed by ``fn``; ``weight`` is a number or ``schedule(step)``."""
        if not name.isidentifier():
            raise ConfigError(f"loss term name '{name}' must be an identifier (it is logged as loss/{name})")
        if name in DEFAULT_TASK_WEIGHTS:
            raise ConfigError(f"loss term name '{name}' is a task loss of the module; choose another name")
        if name in self.yaml_weights:
            log.info(
                "loss term '%s': model.loss_weights.%s=%g multiplies its weight", name, name, self.yaml_weights[name]
            )
        self.registered[name] = RegisteredTerm(fn, weight)

    def unregister(self, name: str) -> None:
        """Remove a registered term (no-op when absent)."""
        self.registered.pop(name, None)

    def set_weight(self, name: str, weight: Weight) -> None:
        """Change a registered term's weight (a number or a schedule); read at the next step."""
        if name not in self.registered:
            raise ConfigError(f"no registered loss term '{name}' (registered: {sorted(self.registered)})")
        self.registered[name].weight = weight

    # -- combination -----------------------------------------------------------------------------
    def weight(self, name: str, step: int) -> float:
        """Effective weight of a term at ``step``."""
        if name in self.registered:
            return self.yaml_weights.get(name, 1.0) * self.registered[name].weight_at(step)
        return self.task_weights.get(name, 1.0)

    def combine(self, terms: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """Weighted sum of ``terms`` at ``step``; returns ``(total, {name: weight used})``."""
        if not terms:
            raise ConfigError("the objective got no loss terms for this step")
        weights = {name: self.weight(name, step) for name in terms}
        first = next(iter(terms.values()))
        total = torch.zeros((), device=first.device, dtype=first.dtype)
        for name, value in terms.items():
            total = total + weights[name] * value
        return total, weights
