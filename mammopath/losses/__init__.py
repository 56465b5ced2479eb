"""Losses: task losses that score the heads' outputs, and the weighted objective with named terms."""

from mammopath.losses.objective import DEFAULT_TASK_WEIGHTS, Objective, RegisteredTerm, TermFn
from mammopath.losses.task import (
    classification_loss,
    grading_loss,
    localization_loss,
    multiclass_loss,
    task_losses,
    zero_with_grad,
)

__all__ = [
    "DEFAULT_TASK_WEIGHTS",
    "Objective",
    "RegisteredTerm",
    "TermFn",
    "classification_loss",
    "grading_loss",
    "localization_loss",
    "multiclass_loss",
    "task_losses",
    "zero_with_grad",
]
