"""`MammoPathModule`: one shared ViT with modality adapters and three heads.

``forward(images, modality)`` returns a dict (features, patch tokens, per-head outputs) that the
losses, callbacks and writers all consume. Training batches are ``{"mammo": batch, "patho": batch}``;
each modality goes through its own adapter set and the task losses of both are summed.

Callbacks add loss terms through one documented hook, :meth:`MammoPathModule.register_loss_term`:
the module calls each registered function in ``training_step`` and adds ``weight * value`` to the
total; it never needs to know which callback is attached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from mammopath.metrics.domain import per_domain_table
from mammopath.models.encoders import ViTEncoder
from mammopath.models.heads import (
    ClassificationHead,
    GradingHead,
    LocalizationHead,
    grading_loss,
    localization_loss,
    predict_grade,
)

log = logging.getLogger(__name__)

#: term name -> fn(module, batch_by_modality, outputs_by_modality) -> scalar tensor
LossTermFn = Callable[["MammoPathModule", dict[str, dict[str, Any]], dict[str, dict[str, Tensor]]], Tensor]

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"cls": 1.0, "bach4": 0.5, "loc": 0.5, "grade": 0.5}
DEFAULT_NORMALIZE: dict[str, tuple[list[float], list[float]]] = {
    "mammo": ([0.5], [0.25]),
    "patho": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def metrics_table(predictions: pd.DataFrame, n_boot: int = 200) -> pd.DataFrame:
    """Per (modality, domain) metrics of an evaluation frame, with the pointing game added.

    ``predictions`` uses -1 for missing labels/grades (as collected by the module); they are turned
    into NaN so every metric skips them.
    """
    frame = predictions.copy()
    frame["label"] = frame["label"].where(frame["label"] >= 0)
    for column in ("grade_true", "grade_pred"):
        frame[column] = frame[column].where(frame["grade_true"] >= 0)
    frame["grade_scheme"] = frame["grade_scheme"].replace("", np.nan)
    frame["is_source"] = frame["role"] != "heldout"
    table = per_domain_table(frame, n_boot=n_boot)
    pointing = frame.groupby(["modality", "domain"])["pointing_hit"].mean().rename("pointing_game").reset_index()
    return table.merge(pointing, on=["modality", "domain"], how="left")


class MammoPathModule(L.LightningModule):
    """Multi-task cross-modal model (classification, localization, grading).

    Args:
        backbone: timm ViT name (``vit_tiny_patch16_224`` ... ``vit_large_patch16_224``, DeiT, EVA).
        img_size: input size the position embeddings are built for.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth``, ``patch_size``).
        checkpoint_path: local pretrained weights (timm/safetensors/state dict). Nothing downloads.
        grayscale: ``sum`` (patch-embed kernels summed) or ``replicate`` for 1-channel mammograms.
        adapter: ``adaptformer`` (default), ``houlsby``, ``lora`` or ``none``.
        adapter_kwargs: adapter options (bottleneck, scale, rank...).
        freeze: ``adapters`` (frozen backbone), ``last_k`` or ``full``.
        trainable_blocks: blocks left trainable with ``freeze=last_k``.
        grade_schemes: grade scheme → number of levels (linked from the datamodule).
        grading_method: ``corn`` or ``coral``.
        localization_pooling: ``topk`` or ``attention`` MIL pooling of patch scores.
        topk_ratio: fraction of patches averaged by top-k pooling.
        loss_weights: weights of ``cls``, ``bach4``, ``loc``, ``grade`` and registered terms.
        optimizer: injected optimizer (YAML ``class_path``).
        scheduler: injected LR scheduler, stepped per epoch.
    """

    def __init__(
        self,
        backbone: str = "vit_tiny_patch16_224",
        img_size: int | list[int] = 224,
        model_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        grayscale: str = "sum",
        adapter: str = "adaptformer",
        adapter_kwargs: dict[str, Any] | None = None,
        freeze: str = "adapters",
        trainable_blocks: int = 0,
        drop_path_rate: float = 0.0,
        grade_schemes: dict[str, int] | None = None,
        grading_method: str = "corn",
        localization_pooling: str = "topk",
        topk_ratio: float = 0.1,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        size = img_size if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        self.encoder = ViTEncoder(
            name=backbone,
            img_size=size,
            modalities=("mammo", "patho"),
            grayscale=grayscale,
            checkpoint_path=checkpoint_path,
            model_kwargs=model_kwargs,
            adapter=adapter,
            adapter_kwargs=adapter_kwargs,
            freeze=freeze,
            trainable_blocks=trainable_blocks,
            drop_path_rate=drop_path_rate,
        )
        dim = self.encoder.embed_dim
        self.grade_schemes = dict(grade_schemes or {})
        extra = {"bach4": 4} if "bach4" in self.grade_schemes else {}
        self.classifier = ClassificationHead(dim, extra_outputs=extra)
        self.localizer = LocalizationHead(dim, pooling=localization_pooling, topk_ratio=topk_ratio)
        self.grader = GradingHead(dim, self.grade_schemes, method=grading_method) if self.grade_schemes else None
        self.grading_method = grading_method
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        for modality, (mean, std) in DEFAULT_NORMALIZE.items():
            self.register_buffer(f"mean_{modality}", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"std_{modality}", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._loss_terms: dict[str, tuple[LossTermFn, float]] = {}
        self._eval_records: list[dict[str, Any]] = []
        self.results: dict[str, pd.DataFrame] = {}

    # -- hook for callbacks ----------------------------------------------------------------------
    def register_loss_term(self, name: str, fn: LossTermFn, weight: float = 1.0) -> None:
        """Add ``weight * fn(module, batch, outputs)`` to the training loss, logged as ``loss/<name>``.

        ``batch`` and ``outputs`` are dicts keyed by modality. Callbacks call this once (e.g. in
        ``setup``); registering the same name again replaces the term.
        """
        self._loss_terms[name] = (fn, float(weight))

    def unregister_loss_term(self, name: str) -> None:
        """Remove a registered loss term (no-op when absent)."""
        self._loss_terms.pop(name, None)

    # -- model -----------------------------------------------------------------------------------
    def normalize(self, images: Tensor, modality: str) -> Tensor:
        """[0, 1] images → the normalized input of this modality."""
        mean, std = getattr(self, f"mean_{modality}"), getattr(self, f"std_{modality}")
        if images.shape[1] != mean.shape[1]:
            mean, std = mean.mean().view(1, 1, 1, 1), std.mean().view(1, 1, 1, 1)
        return (images - mean) / std

    def forward(self, images: Tensor, modality: str) -> dict[str, Tensor]:
        """Encode one single-modality batch of [0, 1] images and run the three heads."""
        enc = self.encoder(self.normalize(images, modality), modality)
        grid = (int(enc["grid"][0]), int(enc["grid"][1]))
        out: dict[str, Tensor] = {"features": enc["features"], "tokens": enc["tokens"], "grid": enc["grid"]}
        for key, value in self.classifier(enc["features"]).items():
            out["cls_" + key] = value
        for key, value in self.localizer(enc["tokens"], grid, tuple(images.shape[-2:])).items():
            out["loc_" + key] = value
        if self.grader is not None:
            for scheme, logits in self.grader(enc["features"]).items():
                out["grade_" + scheme] = logits
        return out

    @staticmethod
    def batch_modality(batch: dict[str, Any]) -> str:
        modalities = set(batch["modality"])
        if len(modalities) != 1:
            raise ValueError(f"a batch must hold one modality, got {sorted(modalities)}")
        return modalities.pop()

    def task_losses(self, batch: dict[str, Any], out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-head losses of one single-modality batch; missing labels are masked, never imputed."""
        label = batch["label"].to(self.device)
        known = label >= 0
        zero = out["cls_logit"].sum() * 0.0
        losses: dict[str, Tensor] = {}
        losses["cls"] = (
            F.binary_cross_entropy_with_logits(out["cls_logit"][known], label[known].float()) if known.any() else zero
        )
        schemes = list(batch["grade_scheme"])
        grade = batch["grade"].to(self.device)
        if "cls_bach4" in out:
            bach = torch.tensor([s == "bach4" for s in schemes], device=self.device) & (grade >= 0)
            losses["bach4"] = F.cross_entropy(out["cls_bach4"][bach], grade[bach]) if bach.any() else zero
        label_f = torch.where(known, label.float(), torch.full_like(label, -1, dtype=torch.float))
        losses["loc"] = localization_loss(
            {"patch_logits": out["loc_patch_logits"], "image_logit": out["loc_image_logit"]},
            batch["mask"].to(self.device),
            batch["has_mask"].to(self.device),
            label_f,
        )
        if self.grader is not None:
            logits = {k[len("grade_") :]: v for k, v in out.items() if k.startswith("grade_")}
            losses["grade"] = grading_loss(logits, grade, schemes, self.grading_method)
        return losses

    def training_step(self, batch: dict[str, dict[str, Any]], batch_idx: int) -> Tensor:
        outputs: dict[str, dict[str, Tensor]] = {}
        totals: dict[str, Tensor] = {}
        for modality, sub in batch.items():
            if sub is None:
                continue
            outputs[modality] = self(sub["image"], modality)
            for name, value in self.task_losses(sub, outputs[modality]).items():
                totals[name] = totals.get(name, 0.0) + value
        for name, (fn, weight) in self._loss_terms.items():
            totals[name] = fn(self, batch, outputs)
            self.loss_weights.setdefault(name, weight)
        loss = sum(self.loss_weights.get(name, 1.0) * value for name, value in totals.items())
        size = sum(len(sub["label"]) for sub in batch.values() if sub is not None)
        for name, value in totals.items():
            self.log(f"loss/{name}", value, batch_size=size)
        self.log("loss/total", loss, prog_bar=True, batch_size=size)
        return loss  # type: ignore[return-value]

    # -- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        modality = self.batch_modality(batch)
        out = self(batch["image"], modality)
        scores = torch.sigmoid(out["cls_logit"]).detach().float().cpu().numpy()
        heat = out["loc_heatmap"].detach().float()
        mask = batch["mask"].to(heat.device) > 0.5
        has_mask = batch["has_mask"].to(heat.device) & mask.flatten(1).any(1)
        flat = heat.flatten(1).argmax(1)
        hit = mask.flatten(1).gather(1, flat[:, None])[:, 0]
        pointing = torch.where(has_mask, hit.float(), torch.full_like(hit, float("nan"), dtype=torch.float))
        grade_pred = np.full(len(scores), -1)
        schemes = list(batch["grade_scheme"])
        if self.grader is not None:
            for scheme in self.grade_schemes:
                idx = [i for i, s in enumerate(schemes) if s == scheme]
                if idx:
                    pred = predict_grade(out["grade_" + scheme][idx], self.grading_method).cpu().numpy()
                    grade_pred[idx] = pred
        bach4_pred = out["cls_bach4"].argmax(1).cpu().numpy() if "cls_bach4" in out else np.full(len(scores), -1)
        for i in range(len(scores)):
            self._eval_records.append(
                {
                    "sample_id": batch["sample_id"][i],
                    "patient_id": batch["patient_id"][i],
                    "parent_id": batch["meta"]["parent_id"][i],
                    "modality": modality,
                    "domain": batch["domain"][i],
                    "role": batch["role"][i],
                    "label": int(batch["label"][i]),
                    "score": float(scores[i]),
                    "grade_true": int(batch["grade"][i]),
                    "grade_pred": int(grade_pred[i]),
                    "grade_scheme": schemes[i],
                    "bach4_pred": int(bach4_pred[i]),
                    "pointing_hit": float(pointing[i]),
                }
            )
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        modality = self.batch_modality(batch)
        out = self(batch["image"], modality)
        return {
            "sample_id": list(batch["sample_id"]),
            "modality": modality,
            "score": torch.sigmoid(out["cls_logit"]).cpu(),
            "heatmap": out["loc_heatmap"].cpu(),
            "features": out["features"].cpu(),
        }

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    def on_test_epoch_start(self) -> None:
        self._eval_records = []

    def _gathered_records(self) -> pd.DataFrame:
        records = self._eval_records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        frame = pd.DataFrame(records)
        if not frame.empty:  # samples padded in by a distributed sampler appear twice
            frame = frame.drop_duplicates("sample_id").reset_index(drop=True)
        self._eval_records = []
        return frame

    def _log_epoch(self, stage: str) -> pd.DataFrame:
        frame = self._gathered_records()
        if frame.empty:
            return frame
        table = metrics_table(frame, n_boot=200 if stage == "test" else 0)  # CIs at test time only
        for _, row in table.iterrows():
            for metric in ("auroc", "accuracy", "balanced_accuracy", "sens_at_spec", "ece", "qwk", "pointing_game"):
                if metric in row and pd.notna(row[metric]):
                    self.log(f"{stage}/{row['domain']}/{metric}", float(row[metric]), rank_zero_only=True)
        source = table[table["role"] == "source"]
        per_modality = source.groupby("modality")["auroc"].mean().dropna()
        # undefined (one class everywhere) is logged as 0 so that model selection never prefers it
        mean_auroc = float(per_modality.mean()) if len(per_modality) else 0.0
        self.log(f"{stage}/auroc", mean_auroc, prog_bar=True, rank_zero_only=True)
        self.results[stage] = table
        self.results[f"{stage}_predictions"] = frame
        return table

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- optimization ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}

    def parameter_rows(self) -> list[tuple[str, int, int]]:
        """(component, total, trainable) parameters of encoder parts and heads."""
        rows = list(self.encoder.parameter_table())
        heads: list[tuple[str, nn.Module | None]] = [
            ("head/classification", self.classifier),
            ("head/localization", self.localizer),
            ("head/grading", self.grader),
        ]
        for name, module in heads:
            if module is not None:
                params = list(module.parameters())
                rows.append((name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
        return rows

    def on_fit_start(self) -> None:
        rows = self.parameter_rows()
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if self.trainer.is_global_zero:
            table = Table(title="Parameters")
            for column in ("component", "total", "trainable", "trainable %"):
                table.add_column(column, justify="left" if column == "component" else "right")
            for name, n_total, n_train in rows:
                table.add_row(name, f"{n_total:,}", f"{n_train:,}", f"{100 * n_train / max(n_total, 1):.2f}")
            table.add_row("all", f"{total:,}", f"{trainable:,}", f"{100 * trainable / max(total, 1):.2f}", style="bold")
            Console().print(table)
        log.info("trainable fraction %.4f (%d / %d)", trainable / max(total, 1), trainable, total)
        for logger in self.loggers:
            logger.log_metrics({"params/trainable_fraction": trainable / max(total, 1)}, step=0)
