"""Step outputs: the one dict shape every evaluation and predict step returns.

Callbacks read them in Lightning's ``on_validation_batch_end`` / ``on_test_batch_end`` /
``on_predict_batch_end(trainer, module, outputs, batch, batch_idx, dataloader_idx)``; the evaluation component
(:class:`~mammopath.metrics.evaluation.Evaluation`) records the numeric fields.

Keys of an evaluation step output (``B`` samples of one modality):

- ``index`` ``(B,)`` int64: the sample's row in the datamodule's ``sample_table`` (unique across a composition);
- ``sample_id``, ``patient_id``, ``domain``, ``role`` (``source``/``heldout``), ``grade_scheme``: lists of strings;
  ``modality``: the batch's modality;
- ``label``, ``grade`` ``(B,)`` int64 ground truth (-1 = missing);
- ``score`` ``(B,)``: P(malignant) = sigmoid of ``outputs["cls_logit"]``;
- ``grade_pred`` ``(B,)`` int64: the predicted grade in the sample's scheme (-1 without one);
- ``bach4_pred`` ``(B,)`` int64: the BACH 4-class prediction (-1 when the model has no such output);
- ``pointing_hit`` ``(B,)``: 1/0 whether the heatmap's maximum falls in the lesion mask (NaN without a mask);
- ``outputs``: the model's forward dict (``features``, ``tokens``, ``cls_logit``, ``loc_heatmap``,
  ``loc_patch_logits``, ``grade_<scheme>`` ...); predict steps leave out ``tokens`` and move everything to the CPU.

A training step returns ``{"loss": total, "terms": {name: value}, "weights": {name: weight}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mammopath.models.heads import predict_grade


def pointing_hits(heatmap: Tensor, mask: Tensor, has_mask: Tensor) -> Tensor:
    """1.0 where the heatmap's arg-max pixel lies in the mask, 0.0 where it does not, NaN without a mask."""
    mask = mask.to(heatmap.device) > 0.5
    has = has_mask.to(heatmap.device) & mask.flatten(1).any(1)
    peak = heatmap.detach().flatten(1).argmax(1)
    hit = mask.flatten(1).gather(1, peak[:, None])[:, 0].float()
    return torch.where(has, hit, torch.full_like(hit, float("nan")))


def grade_predictions(out: Mapping[str, Tensor], schemes: list[str], method: str) -> Tensor:
    """Predicted grade of every sample in its own scheme (-1 for samples without a scheme the model grades)."""
    first = out["cls_logit"]
    pred = torch.full((first.shape[0],), -1, dtype=torch.int64, device=first.device)
    for scheme in sorted(set(schemes)):
        key = "grade_" + scheme
        if not scheme or key not in out:
            continue
        idx = torch.tensor([i for i, s in enumerate(schemes) if s == scheme], device=first.device)
        pred[idx] = predict_grade(out[key][idx], method)
    return pred


def eval_step_output(batch: Mapping[str, Any], out: dict[str, Tensor], modality: str, method: str) -> dict[str, Any]:
    """The evaluation step output of one batch (see the module docstring) from the model's forward dict."""
    schemes = [str(s) for s in batch["grade_scheme"]]
    logit = out["cls_logit"].detach()
    n = logit.shape[0]
    index = batch.get("index")
    return {
        "index": torch.as_tensor(index if index is not None else range(n), dtype=torch.int64),
        "sample_id": list(batch["sample_id"]),
        "patient_id": list(batch["patient_id"]),
        "domain": list(batch["domain"]),
        "role": list(batch.get("role", [""] * n)),
        "grade_scheme": schemes,
        "modality": modality,
        "label": torch.as_tensor(batch["label"]).long(),
        "grade": torch.as_tensor(batch["grade"]).long(),
        "score": torch.sigmoid(logit.float()),
        "grade_pred": grade_predictions(out, schemes, method),
        "bach4_pred": out["cls_bach4"].detach().argmax(1) if "cls_bach4" in out else torch.full((n,), -1),
        "pointing_hit": pointing_hits(out["loc_heatmap"], batch["mask"], batch["has_mask"]),
        "outputs": out,
    }


def predict_step_output(step: dict[str, Any]) -> dict[str, Any]:
    """A predict step output: the evaluation output on the CPU, without patch ``tokens`` (Lightning keeps them all)."""

    def cpu(value: Any) -> Any:
        return value.detach().cpu() if isinstance(value, Tensor) else value

    outputs = {k: cpu(v) for k, v in step["outputs"].items() if k != "tokens"}
    return {**{k: cpu(v) for k, v in step.items() if k != "outputs"}, "outputs": outputs}
