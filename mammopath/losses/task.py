"""Task losses: they score what the heads output (heads produce outputs, losses score them).

- :func:`classification_loss`: BCE of the malignancy logit on labelled samples;
- :func:`multiclass_loss`: cross-entropy of an extra multi-class output (BACH 4-class) on the samples of its scheme;
- :func:`localization_loss`: mask-supervised where a mask exists, MIL-supervised by the image label otherwise;
- :func:`grading_loss`: ordinal CORAL / CORN over every grade scheme;
- :func:`task_losses`: all of them for one single-modality batch, keyed by term name.

Missing labels are masked, never imputed: a term with no contributing sample is a graph-connected 0, so
``backward()`` works and DDP sees every parameter used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mammopath.errors import ConfigError

ORDINAL_METHODS = ("corn", "coral")


def zero_with_grad(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the graph of ``tensors`` (so ``backward()`` works and DDP sees the params)."""
    return sum((t.sum() * 0.0 for t in tensors), start=torch.zeros((), device=tensors[0].device))


def classification_loss(logit: Tensor, label: Tensor) -> Tensor:
    """Mean BCE-with-logits of ``logit`` ``(B,)`` against 0/1 ``label`` over samples with ``label >= 0``."""
    label = label.to(logit.device)
    known = label >= 0
    if not bool(known.any()):
        return zero_with_grad(logit)
    return F.binary_cross_entropy_with_logits(logit[known], label[known].float())


def multiclass_loss(logits: Tensor, target: Tensor, selected: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` ``(B, K)`` on ``selected`` samples with ``target >= 0``."""
    target = target.to(logits.device)
    use = selected.to(logits.device) & (target >= 0)
    if not bool(use.any()):
        return zero_with_grad(logits)
    return F.cross_entropy(logits[use], target[use])


def localization_loss(out: Mapping[str, Tensor], mask: Tensor | None, has_mask: Tensor, label: Tensor) -> Tensor:
    """Mask-supervised where a mask exists, MIL-supervised by the image label otherwise.

    Per contributing sample the loss is either the mean pixel BCE between the patch logits and the
    mask area-averaged onto the patch grid (``has_mask``), or the BCE of ``image_logit`` against the
    binary image label (no mask, label present). The result is the mean over contributing samples;
    samples with neither are ignored. Returns a graph-connected 0 when nothing contributes.

    Args:
        out: :class:`~mammopath.models.heads.LocalizationHead` output (``patch_logits`` ``(B, h, w)``,
            ``image_logit`` ``(B,)``).
        mask: ``(B, H, W)`` (or ``(B, 1, H, W)``) in [0, 1], or None when no sample has one.
        has_mask: ``(B,)`` bool.
        label: ``(B,)`` float in {0, 1}; NaN or negative = missing.
    """
    logits = out["patch_logits"]
    image_logit = out["image_logit"]
    b, h, w = logits.shape
    has_mask = has_mask.to(device=logits.device, dtype=torch.bool).view(-1)
    label = label.to(device=logits.device, dtype=logits.dtype).view(-1)
    if has_mask.numel() != b or label.numel() != b:
        raise ConfigError(f"has_mask and label need {b} entries; got {has_mask.numel()} and {label.numel()}")
    terms: list[Tensor] = []
    if bool(has_mask.any()):
        if mask is None:
            raise ConfigError("has_mask is True for some samples but mask is None")
        m = mask.to(device=logits.device, dtype=logits.dtype)
        if m.ndim == 3:
            m = m.unsqueeze(1)
        if m.ndim != 4 or m.shape[0] != b or m.shape[1] != 1:
            raise ConfigError(f"mask must be (B, H, W) with B={b}; got {tuple(mask.shape)}")
        target = F.adaptive_avg_pool2d(m[has_mask], (h, w))[:, 0]  # area average per patch
        pix = F.binary_cross_entropy_with_logits(logits[has_mask], target.clamp(0.0, 1.0), reduction="none")
        terms.append(pix.flatten(1).mean(dim=1))
    weak = ~has_mask & torch.isfinite(label) & (label >= 0)
    if bool(weak.any()):
        terms.append(F.binary_cross_entropy_with_logits(image_logit[weak], label[weak], reduction="none"))
    if not terms:
        return zero_with_grad(logits, image_logit)
    return torch.cat(terms).mean()


def _levels(y: Tensor, k_minus_1: int) -> Tensor:
    """Ordinal level targets ``y_k = 1[y > k]``, ``(B, K-1)``."""
    return (y.unsqueeze(1) > torch.arange(k_minus_1, device=y.device).unsqueeze(0)).float()


def grading_loss(
    logits_by_scheme: Mapping[str, Tensor], grade: Tensor, scheme_idx: Sequence[str], method: str = "corn"
) -> Tensor:
    """Ordinal loss over all schemes, masking samples with no grade.

    CORAL: ``-Σ_k [y_k log σ(g_k) + (1 - y_k) log(1 - σ(g_k))]`` with ``y_k = 1[y > k]``, averaged
    over graded samples (coral-pytorch ``coral_loss``). CORN: task ``k`` is trained only on samples
    with ``y > k - 1`` (target ``1[y > k]``), the summed BCE divided by the number of
    (sample, task) pairs used (coral-pytorch ``corn_loss``). Pooled over schemes with the same
    normalisation.

    Args:
        logits_by_scheme: :class:`~mammopath.models.heads.GradingHead` output; each ``(B, K-1)``.
        grade: ``(B,)`` long, 0-based grade within the sample's scheme; ``-1`` = missing.
        scheme_idx: scheme name per sample (``""`` = none).
        method: ``"corn"`` or ``"coral"``.

    Returns:
        Scalar loss; a graph-connected 0 when no sample has a grade.

    Raises:
        ConfigError: unknown scheme name, a grade outside ``[0, K-1]``, or length mismatch.
    """
    if method not in ORDINAL_METHODS:
        raise ConfigError(f"method must be one of {list(ORDINAL_METHODS)}; got '{method}'")
    if not logits_by_scheme:
        raise ConfigError("grading_loss got no logits")
    grade = grade.view(-1)
    if len(scheme_idx) != grade.numel():
        raise ConfigError(f"scheme_idx has {len(scheme_idx)} entries but grade has {grade.numel()}")
    unknown = sorted({s for s in scheme_idx if s and s not in logits_by_scheme})
    if unknown:
        raise ConfigError(f"unknown grade scheme(s) {unknown}; the head has {sorted(logits_by_scheme)}")
    total: Tensor | None = None
    count = 0
    for name, logits in logits_by_scheme.items():
        sel = torch.tensor([s == name for s in scheme_idx], dtype=torch.bool, device=logits.device)
        sel &= grade.to(logits.device) >= 0
        if not bool(sel.any()):
            continue
        y = grade.to(logits.device)[sel].long()
        g = logits[sel]
        km1 = g.shape[1]
        if bool((y > km1).any()):
            raise ConfigError(f"grade scheme '{name}' has {km1 + 1} grades but got grade {int(y.max())}")
        bce = F.binary_cross_entropy_with_logits(g, _levels(y, km1), reduction="none")
        if method == "coral":
            part, n = bce.sum(), int(y.numel())
        else:
            # task k sees samples with y > k - 1, i.e. y >= k
            used = (y.unsqueeze(1) >= torch.arange(km1, device=y.device).unsqueeze(0)).float()
            part, n = (bce * used).sum(), int(used.sum().item())
        total = part if total is None else total + part
        count += n
    if total is None or count == 0:
        return zero_with_grad(*logits_by_scheme.values())
    return total / count


def task_losses(batch: Mapping[str, Any], out: Mapping[str, Tensor], grading_method: str = "corn") -> dict[str, Tensor]:
    """Per-head losses of one single-modality batch, keyed ``cls``, ``bach4``, ``loc``, ``grade``.

    ``bach4`` is present when the model has the BACH 4-class output (``cls_bach4``), ``grade`` when it
    has grading outputs (``grade_<scheme>``). Missing labels (-1) are masked, never imputed.

    Args:
        batch: collated samples (``label``, ``grade``, ``grade_scheme``, ``mask``, ``has_mask``).
        out: :meth:`MammoPathModule.forward` output of that batch.
        grading_method: ``corn`` or ``coral``.
    """
    device = out["cls_logit"].device
    label = batch["label"].to(device)
    grade = batch["grade"].to(device)
    schemes = list(batch["grade_scheme"])
    losses = {"cls": classification_loss(out["cls_logit"], label)}
    if "cls_bach4" in out:
        is_bach = torch.tensor([s == "bach4" for s in schemes], device=device)
        losses["bach4"] = multiclass_loss(out["cls_bach4"], grade, is_bach)
    label_f = torch.where(label >= 0, label.float(), torch.full_like(label, -1, dtype=torch.float))
    losses["loc"] = localization_loss(
        {"patch_logits": out["loc_patch_logits"], "image_logit": out["loc_image_logit"]},
        batch["mask"].to(device),
        batch["has_mask"].to(device),
        label_f,
    )
    grading = {k.removeprefix("grade_"): v for k, v in out.items() if k.startswith("grade_")}
    if grading:
        losses["grade"] = grading_loss(grading, grade, schemes, grading_method)
    return losses
