"""Losses: task losses that score the heads' outputs, the cross-modal contrastive loss, and the weighted
objective with named terms."""

from mammopath.losses.contrastive import (
    CrossModalContrastiveLoss,
    cross_modal_contrastive_loss,
    intra_modal_contrastive_loss,
    positive_matrix,
    scale_grad,
)
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
    "CrossModalContrastiveLoss",
    "Objective",
    "RegisteredTerm",
    "TermFn",
    "classification_loss",
    "cross_modal_contrastive_loss",
    "grading_loss",
    "intra_modal_contrastive_loss",
    "localization_loss",
    "multiclass_loss",
    "positive_matrix",
    "scale_grad",
    "task_losses",
    "zero_with_grad",
]
