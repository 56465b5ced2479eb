"""`MammoPathModule`: one shared ViT with modality adapters and three heads.

``forward(images, modality)`` returns a dict (features, patch tokens, per-head outputs) that the
losses, callbacks and writers all consume. Training batches are ``{"mammo": batch, "patho": batch}``;
each modality goes through its own adapter set and the task losses of both are summed.

The contract with callbacks (``docs/architecture.md``):

- every step returns a dict (:mod:`mammopath.models.outputs`) that callbacks read in ``on_*_batch_end``;
- :meth:`MammoPathModule.register_loss_term` adds a named term to the training objective
  (:class:`~mammopath.losses.Objective`), with a weight read at every step so it can be scheduled;
- :meth:`MammoPathModule.register_prediction_transform` is the one way an inference-time callback
  (test-time adaptation) replaces the predictions that evaluation records;
- evaluation results live in :attr:`MammoPathModule.evaluation` (:class:`~mammopath.metrics.evaluation.Evaluation`).

The module never knows which callback is attached. It holds no per-dataset constant: the input
normalization comes from the datamodule (linked by the CLI) and is saved in every checkpoint. A
pretrained-encoder preset (``backbone: uni``...) brings the normalization its weights were trained
with; for the modalities the preset applies to it wins over the datamodule's (logged), unless
``preset_normalization: false``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from mammopath.datamodules.pairing import LabelMap
from mammopath.errors import ConfigError, NonFiniteLossError
from mammopath.losses import Objective, TermFn, task_losses
from mammopath.losses.contrastive import (
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    CrossModalContrastiveLoss,
    scale_grad,
)
from mammopath.losses.objective import Weight
from mammopath.metrics.evaluation import Evaluation
from mammopath.models.encoders import ViTEncoder, check_pretrained
from mammopath.models.heads import ClassificationHead, GradingHead, LocalizationHead
from mammopath.models.outputs import eval_step_output, predict_step_output
from mammopath.models.style_bank import TokenStyleBank

log = logging.getLogger(__name__)
# Evaluation metrics are computed from predictions gathered from every rank, so every rank logs the same value and
# Lightning's advice to all-reduce epoch-level logs (`sync_dist=True`) does not apply to them.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True", category=PossibleUserWarning
)

#: fn(module, batch, outputs, stage) -> outputs: replaces the forward dict an evaluation step records
PredictionTransform = Callable[["MammoPathModule", dict[str, Any], dict[str, Tensor], str], dict[str, Tensor]]
#: modality -> {"mean": [...], "std": [...]} (one value per channel)
Normalization = dict[str, dict[str, list[float]]]
EVAL_STAGES = ("val", "test", "predict")


def _check_normalization(normalization: Mapping[str, Mapping[str, Sequence[float]]] | None) -> Normalization:
    result: Normalization = {}
    for modality, stats in (normalization or {}).items():
        if set(stats) != {"mean", "std"}:
            raise ConfigError(f"normalization.{modality} needs exactly 'mean' and 'std'; got {sorted(stats)}")
        mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
        if len(mean) != len(std) or not mean or min(std) <= 0:
            raise ConfigError(f"normalization.{modality}: mean {mean} and std {std} need equal lengths and std > 0")
        result[str(modality)] = {"mean": mean, "std": std}
    return result


def rng_states() -> dict[str, Any]:
    """The torch, NumPy and Python random states as tensors and ints (loadable with ``weights_only=True``)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64),
                   "gauss": python_gauss},
    }  # fmt: skip


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` stored."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"].cpu())
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))


class MammoPathModule(L.LightningModule):
    """Multi-task cross-modal model (classification, localization, grading).

    Args:
        backbone: a pretrained-encoder preset (``uni``, ``uni2``, ``phikon_v2``, ``virchow2``, ``gigapath``,
            ``h_optimus_0``, ``mama``, ``vit_small``/``vit_base``/``vit_large``: ``docs/encoders.md``) or a timm
            ViT name (``vit_tiny_patch16_224`` ... ``vit_large_patch16_224``, DeiT, EVA).
        img_size: input size the position embeddings are built for.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth``, ``patch_size``), merged over a
            preset's own.
        checkpoint_path: local pretrained weights (timm/safetensors/state dict, or the preset vendor's layout;
            a folder holding the preset's file). Nothing downloads; what was loaded is shown at fit start.
        dynamic_img_size: accept any input size (None: the preset's setting, else False).
        pooling: image feature of the heads: ``token`` or ``cls_mean`` (None: the preset's recommendation).
        grayscale: ``sum`` (patch-embed kernels summed) or ``replicate`` for 1-channel mammograms.
        adapter: ``adaptformer`` (default), ``houlsby``, ``lora`` or ``none``.
        adapter_kwargs: adapter options (bottleneck, scale, rank...).
        freeze: ``adapters`` (frozen backbone), ``last_k`` or ``full``.
        trainable_blocks: blocks left trainable with ``freeze=last_k``.
        drop_path_rate: stochastic depth of the backbone.
        grad_checkpointing: activation checkpointing of the encoder blocks (less memory, more compute;
            :mod:`mammopath.models.scaling`).
        compile_encoder: ``torch.compile`` the encoder's ``forward_features`` (``True`` or compile options).
        grade_schemes: grade scheme → number of levels (linked from the datamodule).
        grading_method: ``corn`` or ``coral``.
        localization_pooling: ``topk`` or ``attention`` MIL pooling of patch scores.
        topk_ratio: fraction of patches averaged by top-k pooling.
        loss_weights: weights of the task terms ``cls``, ``bach4``, ``loc``, ``grade``; for terms registered by
            callbacks a multiplier on the callback's (scheduled) weight (:mod:`mammopath.losses.objective`).
        normalization: per modality ``{"mean": [...], "std": [...]}`` applied to the [0, 1] images; linked from
            the datamodule by the CLI (None = images enter unnormalized). Saved in the checkpoint.
        preset_normalization: with a preset backbone, use the normalization its weights were trained with for
            the modalities it applies to (replacing ``normalization`` there, logged); false keeps ``normalization``.
        test_bootstrap: patient-bootstrap resamples of the test AUROC CIs (validation computes none).
        alignment: train the cross-modal contrastive term ``align`` (one projector per modality into a shared
            L2-normalized space and a learnable temperature, both on the module and in every checkpoint).
        projection_dim: width of the shared alignment space.
        align_label_map: label-level positives: ``malignancy`` or ``{scheme: [class per grade]}``
            (:class:`~mammopath.datamodules.pairing.LabelMap`); patients with both modalities pair by patient.
        align_intra_modal: weight of the optional intra-modal SupCon term.
        align_label_level_weight: weight of the label-level term (samples of unpaired patients) against the
            patient-level term (truly paired patients) when a step holds both; 1 = their mean. Label-level
            positives ask every sample of a class to look alike, which works against telling paired patients
            apart (docs/alignment.md); a step with only one kind uses that term alone, whatever the weight.
        align_encoder_grad: scale of the alignment gradient that reaches the encoder (1 = joint training; 0 =
            the alignment trains only the projectors and the temperature on the encoder's features, as LiT
            locks its image tower, while the task heads keep training the encoder). The forward pass is the same.
        style_bank_size: style rows kept per modality for test-time adaptation (0 = none): the ``StyleBank``
            callback writes one class-balanced row (a Gaussian over styles) per source domain, so it must be at
            least the number of source domains of a modality; saved in every checkpoint.
        style_layer: the block after which styles are recorded and intervened on at test time (default the
            second block, the first MixStyle layer).
        optimizer: injected optimizer (YAML ``class_path``).
        scheduler: injected LR scheduler, stepped per epoch.
    """

    def __init__(
        self,
        backbone: str = "vit_tiny_patch16_224",
        img_size: int | list[int] = 224,
        model_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        dynamic_img_size: bool | None = None,
        pooling: str | None = None,
        grayscale: str = "sum",
        adapter: str = "adaptformer",
        adapter_kwargs: dict[str, Any] | None = None,
        freeze: str = "adapters",
        trainable_blocks: int = 0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        compile_encoder: bool | dict[str, Any] = False,
        grade_schemes: dict[str, int] | None = None,
        grading_method: str = "corn",
        localization_pooling: str = "topk",
        topk_ratio: float = 0.1,
        loss_weights: dict[str, float] | None = None,
        normalization: dict[str, dict[str, list[float]]] | None = None,
        preset_normalization: bool = True,
        test_bootstrap: int = 200,
        alignment: bool = False,
        projection_dim: int = 128,
        align_label_map: str | dict[str, list[int]] = "malignancy",
        align_intra_modal: float = 0.0,
        align_label_level_weight: float = 1.0,
        align_encoder_grad: float = 1.0,
        style_bank_size: int = 64,
        style_layer: int | None = None,
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
            dynamic_img_size=dynamic_img_size,
            pooling=pooling,
            adapter=adapter,
            adapter_kwargs=adapter_kwargs,
            freeze=freeze,
            trainable_blocks=trainable_blocks,
            drop_path_rate=drop_path_rate,
            grad_checkpointing=grad_checkpointing,
            compile=compile_encoder,
        )
        dim = self.encoder.embed_dim  # token width; image features are feature_dim wide (2x with cls_mean pooling)
        features = self.encoder.feature_dim
        self.grade_schemes = dict(grade_schemes or {})
        extra = {"bach4": 4} if "bach4" in self.grade_schemes else {}
        self.classifier = ClassificationHead(features, extra_outputs=extra)
        self.localizer = LocalizationHead(dim, pooling=localization_pooling, topk_ratio=topk_ratio)
        self.grader = GradingHead(features, self.grade_schemes, method=grading_method) if self.grade_schemes else None
        self.grading_method = grading_method
        self.objective = Objective(loss_weights)
        self.normalization = _check_normalization(normalization)
        if preset_normalization:
            self._adopt_preset_normalization()
        for modality in self.encoder.modalities:
            stats = self.normalization.get(modality, {"mean": [0.0], "std": [1.0]})
            self.register_buffer(f"norm_mean_{modality}", torch.tensor(stats["mean"]).view(1, -1, 1, 1))
            self.register_buffer(f"norm_std_{modality}", torch.tensor(stats["std"]).view(1, -1, 1, 1))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.evaluation = Evaluation(n_boot=test_bootstrap)
        depth = len(self.encoder.blocks)
        if style_layer is None:  # the second block, or the first of a 2-block test model
            style_layer = max(0, min(1, depth - 2))
        if not 0 <= style_layer < depth:
            raise ConfigError(f"style_layer must be a block index, 0..{depth - 1}; got {style_layer}")
        self.style_bank = TokenStyleBank(self.encoder.modalities, style_bank_size, self.encoder.embed_dim, style_layer)
        self.alignment = alignment
        self.label_map = LabelMap.parse(align_label_map)
        self.align_loss = CrossModalContrastiveLoss(
            intra_modal=align_intra_modal, label_level_weight=align_label_level_weight
        )
        if not 0.0 <= align_encoder_grad <= 1.0:
            raise ConfigError(f"align_encoder_grad must be in [0, 1]; got {align_encoder_grad}")
        self.align_encoder_grad = float(align_encoder_grad)
        if alignment:
            self.projectors = nn.ModuleDict(
                {
                    m: nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, projection_dim))
                    for m in self.encoder.modalities
                }
            )
            # stored as its log (CLIP / open_clip): init ln(1/0.07), the scale clamped at 100
            self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self._prediction_transforms: dict[str, tuple[PredictionTransform, tuple[str, ...]]] = {}

    # -- hooks for callbacks ---------------------------------------------------------------------
    def register_loss_term(self, name: str, fn: TermFn, weight: Weight = 1.0) -> None:
        """Add ``weight · fn(module, batch, outputs)`` to the training loss, logged as ``loss/<name>``.

        ``batch`` and ``outputs`` are dicts keyed by modality. ``weight`` is a number or a schedule
        ``weight(global_step) -> float``, read at every step (its value is logged as ``loss_weight/<name>``);
        a YAML ``model.loss_weights.<name>`` multiplies it. Registering a name again replaces the term.
        """
        self.objective.register(name, fn, weight)

    def set_loss_weight(self, name: str, weight: Weight) -> None:
        """Change a registered term's weight (a number or a schedule) from the next step on."""
        self.objective.set_weight(name, weight)

    def unregister_loss_term(self, name: str) -> None:
        """Remove a registered loss term (no-op when absent)."""
        self.objective.unregister(name)

    def register_prediction_transform(
        self, name: str, fn: PredictionTransform, stages: Sequence[str] = ("test", "predict")
    ) -> None:
        """Let ``fn(module, batch, outputs, stage)`` replace the forward dict of evaluation steps of ``stages``.

        This is how an inference-time callback (test-time adaptation) supplies the predictions the
        evaluation records: the step runs the model, passes its forward dict through every registered
        transform in registration order, and derives scores, grades and pointing hits from what comes
        back (:func:`~mammopath.models.outputs.eval_step_output`). ``fn`` runs inside the step, under
        ``torch.no_grad`` (or ``inference_mode`` unless ``trainer.inference_mode: false``).
        """
        bad = sorted(set(stages) - set(EVAL_STAGES))
        if bad:
            raise ConfigError(f"prediction transform '{name}': unknown stage(s) {bad}; use {list(EVAL_STAGES)}")
        self._prediction_transforms[name] = (fn, tuple(stages))

    def unregister_prediction_transform(self, name: str) -> None:
        """Remove a prediction transform (no-op when absent)."""
        self._prediction_transforms.pop(name, None)

    def _adopt_preset_normalization(self) -> None:
        """The preset's normalization replaces the datamodule's for the modalities the preset applies to."""
        preset = self.encoder.preset
        if preset is None:
            return
        stats = preset.normalization_stats()
        for modality in preset.normalization_modalities:
            if modality not in self.encoder.modalities:
                continue
            given = self.normalization.get(modality)
            if given != stats:
                log.info(
                    "normalization %s: preset '%s' was trained with mean %s std %s; using it instead of %s "
                    "(model.preset_normalization=false keeps the datamodule's)",
                    modality,
                    preset.name,
                    stats["mean"],
                    stats["std"],
                    "no normalization" if given is None else f"mean {given['mean']} std {given['std']}",
                )
            self.normalization[modality] = {"mean": list(stats["mean"]), "std": list(stats["std"])}

    # -- model -----------------------------------------------------------------------------------
    def normalize(self, images: Tensor, modality: str) -> Tensor:
        """[0, 1] images → the normalized input of this modality (one-channel input uses the channel mean)."""
        mean, std = getattr(self, f"norm_mean_{modality}"), getattr(self, f"norm_std_{modality}")
        if images.shape[1] != mean.shape[1]:
            mean, std = mean.mean().view(1, 1, 1, 1), std.mean().view(1, 1, 1, 1)
        return (images - mean) / std

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store this process's random states (plain tensors and ints), so a resumed run draws what the run would."""
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the checkpoint's normalization (what the weights were trained with), whatever the config says.

        A checkpoint of a run being resumed (``fit --ckpt_path``) also restores the random states it stored.
        """
        if "rng_states" in checkpoint and self._trainer is not None and self._trainer.state.fn == "fit":
            set_rng_states(checkpoint["rng_states"])
        state = checkpoint.get("state_dict", {})
        for modality in self.encoder.modalities:
            for kind in ("mean", "std"):
                key = f"norm_{kind}_{modality}"
                saved = state.get(key)
                if saved is None:
                    continue
                current = getattr(self, key)
                if saved.shape != current.shape or not torch.equal(saved.to(current.device), current):
                    log.info("normalization %s %s: using the checkpoint's %s", modality, kind, saved.flatten().tolist())
                    setattr(self, key, saved.clone().to(current.device))

    def forward(self, images: Tensor, modality: str) -> dict[str, Tensor]:
        """Encode one single-modality batch of [0, 1] images and run the three heads."""
        enc = self.encoder(self.normalize(images, modality), modality)
        return self.heads(enc, modality, (int(images.shape[-2]), int(images.shape[-1])))

    def forward_from(
        self, tokens: Tensor, modality: str, grid: tuple[int, int], image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """The forward dict from the tokens after the style-bank layer (only the later blocks run)."""
        enc = self.encoder.forward_from(tokens, modality, self.style_bank.layer, grid)
        return self.heads(enc, modality, image_size)

    def heads(self, enc: dict[str, Tensor], modality: str, image_size: tuple[int, int]) -> dict[str, Tensor]:
        """Run the heads (and the projector) on the encoder's outputs."""
        grid = (int(enc["grid"][0]), int(enc["grid"][1]))
        out: dict[str, Tensor] = {"features": enc["features"], "tokens": enc["tokens"], "grid": enc["grid"]}
        for key, value in self.classifier(enc["features"]).items():
            out["cls_" + key] = value
        for key, value in self.localizer(enc["tokens"], grid, image_size).items():
            out["loc_" + key] = value
        if self.grader is not None:
            for scheme, logits in self.grader(enc["features"]).items():
                out["grade_" + scheme] = logits
        if self.alignment:  # from the mean patch token: content everywhere in the image, not only the class token
            pooled = scale_grad(enc["tokens"].mean(dim=1), self.align_encoder_grad)
            out["embedding"] = F.normalize(self.projectors[modality](pooled), dim=1)
        return out

    # -- alignment -------------------------------------------------------------------------------
    def scale(self) -> Tensor:
        """The contrastive logit scale, ``exp(logit_scale)`` clamped at 100 (the temperature is its inverse)."""
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def pairing_keys(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """``patient`` code, cross-modal ``cls`` (label map) and ``paired`` flag of every sample of a batch."""
        label, grade = batch["label"].to(self.device), batch["grade"].to(self.device)
        return {
            "patient": torch.as_tensor(batch["patient_code"], device=self.device).long(),
            "cls": self.label_map.classes(label, grade, list(batch["grade_scheme"])).to(self.device),
            "paired": torch.as_tensor(batch["paired"], device=self.device).bool(),
        }

    def alignment_loss(self, batch: dict[str, dict[str, Any]], outputs: dict[str, dict[str, Tensor]]) -> Tensor:
        """The ``align`` term of a training step, on the batch gathered across ranks (with gradients)."""
        z = {m: outputs[m]["embedding"] for m in ("mammo", "patho")}
        keys = {m: self.pairing_keys(batch[m]) for m in ("mammo", "patho")}
        return self.align_loss(z, keys, self.scale(), gather=self._gather_with_grad)

    def _gather_with_grad(self, t: Tensor) -> Tensor:
        gathered = self.all_gather(t, sync_grads=True)  # (world_size, *t.shape) under a distributed strategy
        assert isinstance(gathered, Tensor)
        return gathered

    @staticmethod
    def batch_modality(batch: dict[str, Any]) -> str:
        modalities = set(batch["modality"])
        if len(modalities) != 1:
            raise ValueError(f"a batch must hold one modality, got {sorted(modalities)}")
        return modalities.pop()

    def training_step(self, batch: dict[str, dict[str, Any]], batch_idx: int) -> dict[str, Any]:
        outputs: dict[str, dict[str, Tensor]] = {}
        terms: dict[str, Tensor] = {}
        for modality, sub in batch.items():
            if sub is None:
                continue
            outputs[modality] = self(sub["image"], modality)
            for name, value in task_losses(sub, outputs[modality], self.grading_method).items():
                terms[name] = terms[name] + value if name in terms else value
        if self.alignment and {"mammo", "patho"} <= set(outputs):
            terms["align"] = self.alignment_loss(batch, outputs)
        for name, term in self.objective.registered.items():
            terms[name] = term.fn(self, batch, outputs)
        total, weights = self.objective.combine(terms, self.global_step)
        self._check_finite(total, terms)
        size = sum(len(sub["label"]) for sub in batch.values() if sub is not None)
        for name, value in terms.items():
            self.log(f"loss/{name}", value, batch_size=size)
        for name in self.objective.registered:
            self.log(f"loss_weight/{name}", weights[name], batch_size=size)
        self.log("loss/total", total, prog_bar=True, batch_size=size)
        return {"loss": total, "terms": {k: v.detach() for k, v in terms.items()}, "weights": weights}

    def _check_finite(self, total: Tensor, terms: dict[str, Tensor]) -> None:
        """Stop the run on a NaN/infinite loss, before it reaches the weights (every rank stops together)."""
        bad = not bool(torch.isfinite(total.detach()).all())
        trainer = self._trainer
        if trainer is not None:
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if not bad:
            return
        values = ", ".join(f"{k}={float(v.detach().float().mean()):.4g}" for k, v in terms.items())
        where = f"epoch {self.current_epoch}, step {self.global_step}" if trainer is not None else "this step"
        folder = getattr(trainer, "default_root_dir", None)
        raise NonFiniteLossError(
            f"the training loss is not finite at {where} ({values}); the run stops before this step updates the "
            f"weights, and the checkpoints already saved{f' under {folder}' if folder else ''} are kept (resume "
            "from the last one with --ckpt_path). Usual causes: a learning rate too high, fp16 overflow (use "
            "bf16-mixed or trainer.gradient_clip_val), or input values that are not finite"
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.alignment:  # open_clip clamps the parameter after each step, so it never drifts past the clamp
            with torch.no_grad():
                self.logit_scale.clamp_(0.0, math.log(LOGIT_SCALE_MAX))

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        modality = self.batch_modality(batch)
        out = self(batch["image"], modality)
        for fn, stages in list(self._prediction_transforms.values()):
            if stage in stages:
                out = fn(self, batch, out, stage)
        return eval_step_output(batch, out, modality, self.grading_method)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        step = self._evaluation_step(batch, "val")
        self.evaluation.update(step)
        return step

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        step = self._evaluation_step(batch, "test")
        self.evaluation.update(step)
        return step

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return predict_step_output(self._evaluation_step(batch, "predict"))

    def on_validation_epoch_start(self) -> None:
        self.evaluation.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluation.reset()

    def _sample_table(self) -> pd.DataFrame:
        table = getattr(getattr(self.trainer, "datamodule", None), "sample_table", None)
        if table is None:
            raise ConfigError(
                "MammoPathModule evaluation needs a mammopath datamodule (CrossModalDataModule or a benchmark "
                "datamodule): its sample_table maps the sample index of each step to ids, patients and domains"
            )
        return table

    def _finish_evaluation(self, stage: str, n_boot: int) -> None:
        # every rank gathers the same samples and computes the same numbers, so nothing is logged rank-only
        result = self.evaluation.compute(stage, self._sample_table(), n_boot=n_boot)
        if result.predictions.empty:
            return
        for name, value in self.evaluation.logged(result).items():
            self.log(name, value, prog_bar=name == f"{stage}/auroc")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val", n_boot=0)  # CIs at test time only

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test", n_boot=self.evaluation.n_boot)

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
            ("alignment/projectors", getattr(self, "projectors", None)),
        ]
        for name, module in heads:
            if module is not None:
                params = list(module.parameters())
                rows.append((name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
        return rows

    def _check_alignment_setup(self) -> None:
        if not self.alignment:
            return
        modalities = getattr(getattr(self.trainer, "datamodule", None), "modalities", ["mammo", "patho"])
        if len(modalities) < 2:
            raise ConfigError(f"model.alignment needs both modalities; the data loads only {modalities}")
        if self.trainer.accumulate_grad_batches > 1:
            warnings.warn(
                "accumulate_grad_batches > 1 with model.alignment: each micro-batch's contrastive loss sees only its "
                "own negatives, so accumulation is not a larger contrastive batch (docs/alignment.md)",
                stacklevel=2,
            )

    def on_fit_start(self) -> None:
        self._check_alignment_setup()
        rows = self.parameter_rows()
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        report = self.encoder.load_report
        if report is not None:
            log.info("pretrained weights: %s", report.summary())
        else:
            check_pretrained(self.encoder.name, self.encoder.freeze, None)
            log.warning("%s starts from random initialization (no model.checkpoint_path)", self.encoder.name)
        if self.trainer.is_global_zero:
            weights = Table(title="Pretrained weights", show_header=False)
            weights.add_column("field")
            weights.add_column("value", overflow="fold")
            for key, value in report.rows() if report is not None else [("none", "random initialization")]:
                weights.add_row(key, value)
            Console().print(weights)
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
