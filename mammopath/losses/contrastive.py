"""Cross-modal contrastive alignment: symmetric multi-positive InfoNCE between mammograms and pathology.

open_clip's shape: the ground truth (:func:`positive_matrix` builds the positives from pairing keys),
the logits (``S = logit_scale · u vᵀ`` of L2-normalized rows) and the loss are separate, and
:class:`CrossModalContrastiveLoss` gathers embeddings and keys across ranks before computing it.

:func:`cross_modal_contrastive_loss` is defined exactly as: u, v = L2-normalized rows of ``z_mammo``
``[n_m, d]`` and ``z_patho`` ``[n_p, d]``; ``S = logit_scale · u vᵀ``; ``positives`` a bool ``[n_m, n_p]``;
row term = mean over mammography anchors i with at least one positive of
``−(1/|P_i|) Σ_{j∈P_i} log softmax(S_i,·)_j``; column term the same on ``Sᵀ`` with ``positivesᵀ``;
loss = ½ (row + column). A direction in which no anchor has a positive contributes 0 (and keeps the graph).
This is the UniCL / SupCon multi-positive form across modalities (algorithms.md §5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mammopath.errors import ConfigError
from mammopath.losses.distributed import Gather, all_gather_rows
from mammopath.losses.task import zero_with_grad

#: CLIP's initial temperature 0.07, stored as the log of the logit scale.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
#: open_clip clamps the logit scale at 100 (log 100 = 4.6052).
LOGIT_SCALE_MAX = 100.0


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``scale`` in the backward pass (0 = detached)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())


def _direction(logits: Tensor, positives: Tensor) -> Tensor | None:
    """Mean over anchors (rows) with a positive of −(1/|P_i|) Σ_{j∈P_i} log softmax(logits_i)_j; None if none."""
    has = positives.any(dim=1)
    if not bool(has.any()):
        return None
    log_prob = F.log_softmax(logits[has], dim=1)
    pos = positives[has]
    # masked_fill, not a product: excluded entries may be -inf (intra-modal self-similarity)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1)
    return per_anchor.mean()


def cross_modal_contrastive_loss(
    z_mammo: Tensor, z_patho: Tensor, positives: Tensor, logit_scale: Tensor | float
) -> Tensor:
    """Symmetric multi-positive InfoNCE (see the module docstring for the exact definition).

    Args:
        z_mammo: ``[n_m, d]`` mammography embeddings (any norm).
        z_patho: ``[n_p, d]`` pathology embeddings.
        positives: ``[n_m, n_p]`` bool, True where the pair is a positive.
        logit_scale: the scale (not its log), e.g. ``log_scale.exp().clamp(max=100)``.
    """
    if z_mammo.ndim != 2 or z_patho.ndim != 2 or z_mammo.shape[1] != z_patho.shape[1]:
        raise ConfigError(
            f"embeddings must be [n, d] with the same d; got {tuple(z_mammo.shape)}, {tuple(z_patho.shape)}"
        )
    if tuple(positives.shape) != (z_mammo.shape[0], z_patho.shape[0]):
        raise ConfigError(f"positives must be [{z_mammo.shape[0]}, {z_patho.shape[0]}]; got {tuple(positives.shape)}")
    u, v = F.normalize(z_mammo, dim=1), F.normalize(z_patho, dim=1)
    logits = logit_scale * u @ v.T
    positives = positives.to(device=logits.device, dtype=torch.bool)
    terms = [_direction(logits, positives), _direction(logits.T, positives.T)]
    zero = zero_with_grad(z_mammo, z_patho) + (logit_scale * 0.0 if isinstance(logit_scale, Tensor) else 0.0)
    return 0.5 * sum((t for t in terms if t is not None), start=zero)


def intra_modal_contrastive_loss(z: Tensor, positives: Tensor, logit_scale: Tensor | float) -> Tensor:
    """SupCon within one modality: multi-positive InfoNCE of every row against the others (self excluded).

    Args:
        z: ``[n, d]`` embeddings of one modality.
        positives: ``[n, n]`` bool (the diagonal is ignored).
        logit_scale: the scale (not its log).
    """
    n = z.shape[0]
    if n < 2:
        return zero_with_grad(z)
    u = F.normalize(z, dim=1)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (logit_scale * u @ u.T).masked_fill(eye, float("-inf"))
    term = _direction(logits, positives.to(device=z.device, dtype=torch.bool) & ~eye)
    return term if term is not None else zero_with_grad(z)


def positive_matrix(
    patient_a: Tensor, class_a: Tensor, paired_a: Tensor, patient_b: Tensor, class_b: Tensor, paired_b: Tensor
) -> Tensor:
    """Positives between two sets of samples from their pairing keys.

    Two samples of truly paired patients (a patient with rows in both modalities) are positive when they
    are the same patient: patient-level pairs. Two samples of unpaired patients (the public benchmarks,
    which share no patients) are positive when they have the same cross-modal class (>= 0): label-level
    pairs. A paired and an unpaired sample are never positive.

    Args:
        patient_a, patient_b: integer patient codes ``[n_a]``, ``[n_b]`` (codes from one table).
        class_a, class_b: cross-modal class per sample, -1 = unknown.
        paired_a, paired_b: bool, the sample's patient has both modalities.
    """
    same_patient = patient_a[:, None] == patient_b[None, :]
    same_class = (class_a[:, None] == class_b[None, :]) & (class_a[:, None] >= 0)
    both_paired = paired_a[:, None] & paired_b[None, :]
    neither = ~paired_a[:, None] & ~paired_b[None, :]
    return (both_paired & same_patient) | (neither & same_class)


class CrossModalContrastiveLoss:
    """The alignment term of a training step, gathered across ranks (see :mod:`mammopath.losses.distributed`).

    The global batch is split by pairing kind: the samples of truly paired patients are contrasted among
    themselves (patient-level positives, the other paired patients as negatives) and the samples of
    unpaired patients among themselves (label-level positives); when both are present the loss is
    ``(patient_term + w · label_term) / (1 + w)`` (``w = label_level_weight``; 1 = their mean), otherwise the
    term present. Keeping the two apart stops the label-level clusters of a large unpaired cohort from
    swamping the softmax of the few paired anchors in each step; ``w < 1`` also weakens the label-level pull
    towards one point per class, which works against telling paired patients of one class apart.

    Args:
        intra_modal: weight of the optional intra-modal SupCon term (0 = off).
        label_level_weight: ``w`` above (>= 0).
    """

    def __init__(self, intra_modal: float = 0.0, label_level_weight: float = 1.0) -> None:
        if label_level_weight < 0:
            raise ConfigError(f"align_label_level_weight must be >= 0; got {label_level_weight}")
        self.intra_modal = float(intra_modal)
        self.label_level_weight = float(label_level_weight)

    def __call__(
        self,
        z: dict[str, Tensor],
        keys: dict[str, dict[str, Tensor]],
        logit_scale: Tensor,
        gather: Gather | None = None,
    ) -> Tensor:
        """Loss on the global batch; ``z[m]`` ``[n_m, d]`` and ``keys[m]`` (``patient``, ``cls``, ``paired``)."""
        full_z = {m: all_gather_rows(z[m], grad=True, gather=gather) for m in ("mammo", "patho")}
        full_k = {
            m: {k: all_gather_rows(v, grad=False, gather=gather) for k, v in keys[m].items()}
            for m in ("mammo", "patho")
        }
        km, kp = full_k["mammo"], full_k["patho"]
        zm, zp = full_z["mammo"], full_z["patho"]
        # one term per pairing kind: true pairs contrast among true pairs, label-level pairs among the unpaired
        terms, weights = [], []
        for kind in (True, False):
            rows, cols = km["paired"] == kind, kp["paired"] == kind
            if bool(rows.any()) and bool(cols.any()):
                pos = positive_matrix(
                    km["patient"][rows], km["cls"][rows], km["paired"][rows],
                    kp["patient"][cols], kp["cls"][cols], kp["paired"][cols],
                )  # fmt: skip
                terms.append(cross_modal_contrastive_loss(zm[rows], zp[cols], pos, logit_scale))
                weights.append(1.0 if kind else self.label_level_weight)
        if len(terms) == 2:
            loss = (terms[0] + weights[1] * terms[1]) / (1.0 + weights[1])
        elif terms:
            loss = terms[0]
        else:  # one modality has only paired rows, the other only unpaired ones: nothing is positive
            loss = cross_modal_contrastive_loss(zm[:0], zp[:0], torch.zeros(0, 0, dtype=torch.bool), logit_scale)
            loss = loss + zero_with_grad(zm, zp)
        if self.intra_modal > 0:
            for m in ("mammo", "patho"):
                k = full_k[m]
                pos = positive_matrix(k["patient"], k["cls"], k["paired"], k["patient"], k["cls"], k["paired"])
                loss = loss + self.intra_modal * 0.5 * intra_modal_contrastive_loss(full_z[m], pos, logit_scale)
        return loss
