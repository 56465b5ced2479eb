"""Test-time adaptation at an unseen hospital: `CausalTTA` and the `TENT` baseline.

Both plug into the module's hook ``register_prediction_transform``: for every test (or predict) batch they
1. **predict first**, with the state adapted on past batches only (causal in time);
2. then optionally **adapt** on it, with their own small optimizer over declared parameters only (LayerNorm
   affine of the lower blocks, optionally the modality's adapters), under ``torch.enable_grad()``;
3. **reset** to the source weights whenever the target domain (or the modality) of the stream changes
   (``reset: domain``, the default), so no adaptation crosses from one hospital to the next.

The source weights are snapshotted at test start and restored at the end. Both need
``trainer.inference_mode: false`` and refuse to start otherwise. Random draws come from generators keyed by
(``seed``, purpose, domain, position in the domain's stream[, sample]) (:mod:`mammopath.tta.seeding`).

**CausalTTA** (algorithms.md §4.6) has three components, each switched by an init argument:

- ``marginalize``: the backdoor adjustment over K source styles drawn afresh for every batch from the
  class-balanced style bank (:mod:`mammopath.tta.marginalize`);
- ``trim`` (off by default): causal trimming (TACT, :mod:`mammopath.callbacks.tta_trim`);
- ``update``: the guarded LayerNorm update (SAR + DeYO, :mod:`mammopath.callbacks.tta_guard`).

**TENT** (Wang et al. 2021): entropy minimization, LayerNorm affine of every block, online, the same reset
rules; the prediction is the one before the step. Only the malignancy score changes; heatmaps and grades don't.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mammopath.callbacks.tta_guard import GuardedUpdate
from mammopath.callbacks.tta_trim import Trimmer
from mammopath.errors import ConfigError, MammopathError
from mammopath.tta.guard import SAR_COLLAPSE_MARGIN, SAR_ENTROPY_MARGIN, binary_entropy, patch_shuffle
from mammopath.tta.marginalize import marginalized_logit
from mammopath.tta.seeding import sample_keys, seeded_generator

__all__ = ["TENT", "CausalTTA", "TestTimeAdaptation", "binary_entropy", "patch_shuffle"]

log = logging.getLogger(__name__)

INFERENCE_MODE_MESSAGE = (
    "{name} adapts at test time and needs gradients: set `trainer.inference_mode: false` "
    "(e.g. --trainer.inference_mode=false, or experiments/baselines/{config}.yaml)"
)

#: purposes of the seeded generators (one stream of draws each)
STYLES, SHUFFLE, AUGMENT = 0, 1, 2


class TestTimeAdaptation(L.Callback):
    """Shared machinery: source snapshot, prediction-then-adaptation, per-domain reset, declared parameters.

    Args:
        update: take gradient steps on the test stream (else prediction only).
        lr: learning rate of the adaptation optimizer (Adam).
        steps: gradient steps per batch.
        update_blocks: LayerNorms of blocks ``[0, update_blocks)`` adapt (None: every block).
        update_adapters: the modality's adapters adapt too.
        reset: ``domain`` (episodic per target domain), ``batch`` (episodic per batch) or ``never``.
        stages: where it applies (``test``, ``predict``).
        seed: seed of every random draw (generators keyed by purpose and stream position).
    """

    config = "tta"

    def __init__(
        self,
        update: bool = True,
        lr: float = 1e-3,
        steps: int = 1,
        update_blocks: int | None = None,
        update_adapters: bool = False,
        reset: str = "domain",
        stages: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if reset not in ("domain", "batch", "never"):
            raise ConfigError(f"{name}.reset must be 'domain', 'batch' or 'never'; got {reset!r}")
        if lr <= 0 or steps < 1:
            raise ConfigError(f"{name} needs lr > 0 and steps >= 1; got lr={lr}, steps={steps}")
        if update_blocks is not None and update_blocks < 0:
            raise ConfigError(f"{name}.update_blocks must be >= 0 or null (every block); got {update_blocks}")
        if seed < 0:
            raise ConfigError(f"{name}.seed must be >= 0 (it seeds numpy's SeedSequence); got {seed}")
        self.update, self.lr, self.steps = update, lr, steps
        self.update_blocks, self.update_adapters, self.reset_mode = update_blocks, update_adapters, reset
        self.stages = tuple(stages or ("test", "predict"))
        self.seed = seed
        self._source: dict[str, Tensor] | None = None
        self._stream: tuple[str, str] | None = None
        self._domain = ""  # the current stream's domain (part of every generator's key)
        self._position = 0  # batches of the current (modality, domain) stream seen so far
        self._optimizer: torch.optim.Optimizer | None = None
        self.resets = 0
        self.adapted_batches = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("test", "predict"):
            return
        loop = trainer.test_loop if stage == "test" else trainer.predict_loop
        if getattr(loop, "inference_mode", False):
            raise ConfigError(INFERENCE_MODE_MESSAGE.format(name=type(self).__name__, config=self.config))
        self.check(pl_module)
        pl_module.register_prediction_transform(type(self).__name__, self.transform, stages=self.stages)  # type: ignore[operator]

    def check(self, pl_module: Any) -> None:
        """Raise if the module lacks what this method needs."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage in ("test", "predict"):
            pl_module.unregister_prediction_transform(type(self).__name__)  # type: ignore[operator]

    def _start(self, pl_module: Any) -> None:
        self._source = copy.deepcopy(pl_module.state_dict())
        self._stream, self._position, self.resets, self.adapted_batches = None, 0, 0, 0

    def _end(self, pl_module: Any) -> None:
        if self._source is not None:
            pl_module.load_state_dict(self._source)  # the source weights, exactly
            self._source = None
        pl_module.requires_grad_(False)
        for p, flag in getattr(self, "_grad_flags", {}).items():
            p.requires_grad_(flag)

    def counters(self) -> dict[str, float]:
        """What the run did (logged as ``tta/<name>`` at the end of a test epoch)."""
        return {"resets": float(self.resets), "adapted_batches": float(self.adapted_batches)}

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._grad_flags = {p: p.requires_grad for p in pl_module.parameters()}
        self._start(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in self.counters().items():
            pl_module.log(f"tta/{name}", value)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(pl_module)
        extra = ", ".join(f"{k} {v:g}" for k, v in self.counters().items() if k not in ("resets", "adapted_batches"))
        log.info("%s: %d adapted batches, %d resets%s", type(self).__name__, self.adapted_batches, self.resets,
                 f" ({extra})" if extra else "")  # fmt: skip

    on_predict_start = on_test_start
    on_predict_end = on_test_end

    def generator(self, purpose: int, sample: int | None = None) -> torch.Generator:
        """This batch's generator for ``purpose`` (:func:`~mammopath.tta.seeding.seeded_generator`)."""
        return seeded_generator(self.seed, purpose, self._domain, self._position, sample)

    def sample_generators(self, purpose: int, batch: dict[str, Any]) -> list[torch.Generator]:
        """One generator per image of the batch (keyed by :func:`~mammopath.tta.seeding.sample_keys`)."""
        return [self.generator(purpose, key) for key in sample_keys(batch)]

    # -- parameters ------------------------------------------------------------------------------
    def parameters(self, pl_module: Any, modality: str) -> list[nn.Parameter]:
        """The declared parameters: LayerNorm affine of the adapted blocks (+ the modality's adapters)."""
        blocks = list(pl_module.encoder.blocks)
        limit = len(blocks) if self.update_blocks is None else self.update_blocks
        params: list[nn.Parameter] = []
        for block in blocks[:limit]:
            for module in block.modules():
                if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                    params += [module.weight, module.bias]
        if self.update_adapters:
            params += pl_module.encoder.adapter_parameters(modality)
        return params

    def _reset(self, pl_module: Any, modality: str) -> None:
        if self._source is not None:
            pl_module.load_state_dict(self._source)
        self._optimizer = None
        if self.update:
            params = self.parameters(pl_module, modality)
            pl_module.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            self._optimizer = torch.optim.Adam(params, lr=self.lr)
        self.resets += 1

    # -- the hook ----------------------------------------------------------------------------------
    def transform(self, pl_module: Any, batch: dict[str, Any], out: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        """Predict this batch with the current state, then adapt on it (the module's prediction transform)."""
        modality = pl_module.batch_modality(batch)
        stream = (modality, str(batch["domain"][0]))
        if len(set(batch["domain"])) > 1:
            raise ConfigError(f"{type(self).__name__}: a test batch straddles domains {sorted(set(batch['domain']))}")
        if self._source is None:  # used outside trainer.test (a direct call)
            self._start(pl_module)
        if stream != self._stream:
            self._position = 0
        self._domain = stream[1]
        if (
            self._stream is None
            or self.reset_mode == "batch"
            or (self.reset_mode == "domain" and stream != self._stream)
        ):
            changed = self.adapted_batches > 0 and self._optimizer is not None
            self._reset(pl_module, modality)
            if changed:  # the step's forward ran with the previous stream's weights: predict again from the source
                with torch.no_grad():
                    out = pl_module(batch["image"].to(pl_module.device), modality)
        self._stream = stream
        predicted = self.predict(pl_module, batch, out, modality)
        if self.update and self._optimizer is not None:
            with torch.enable_grad():
                for _ in range(self.steps):
                    self.adapt(pl_module, batch, modality)
            self.adapted_batches += 1
        self._position += 1
        return predicted

    def predict(
        self, pl_module: Any, batch: dict[str, Any], out: dict[str, Tensor], modality: str
    ) -> dict[str, Tensor]:
        """The prediction of this batch (default: the module's own)."""
        return out

    def adapt(self, pl_module: Any, batch: dict[str, Any], modality: str) -> None:
        """One adaptation step on this batch (the abstract hook: TENT and CausalTTA implement it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt() to use update=True")


class TENT(TestTimeAdaptation):
    """TENT: entropy minimization of the malignancy output, LayerNorm affine of every block (the base's args)."""

    config = "tent"

    def adapt(self, pl_module: Any, batch: dict[str, Any], modality: str) -> None:
        assert self._optimizer is not None
        images = batch["image"].to(pl_module.device)
        loss = binary_entropy(pl_module(images, modality)["cls_logit"]).mean()
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()


class CausalTTA(TestTimeAdaptation):
    """Style marginalization, causal trimming and a guarded update; each component switched by an argument.

    Arguments are keyword-only (an old positional call fails instead of changing meaning).

    Args:
        marginalize: average the prediction over K source styles (the backdoor adjustment).
        k: source styles per batch, drawn afresh for every batch (0 = no marginalization).
        beta: weight of the factual prediction.
        style_spread: scale of the bank rows' spreads when drawing styles (0: the rows' centres).
        trim: causal trimming (TACT); off by default (m and A are not yet chosen on leave-one-source-out folds,
            and it costs 1 + A forwards per batch).
        trim_directions: m, the principal directions of each sample's augmented feature set trimmed (0 = none).
            Choose it on leave-one-source-out folds only.
        trim_augmentations: style-only augmentations per sample (m ≤ this). Same rule.
        update: the guarded LayerNorm update (off by default: the other two are gradient-free).
        entropy_margin: reliable samples have entropy < ``entropy_margin · ln 2`` (SAR's E₀ = 0.4 ln C; the
            malignancy output is binary).
        plpd_threshold: reliable samples lose more than this much predicted-class probability when
            patch-shuffled (DeYO), in [−1, 1].
        deyo_weighting: weight reliable samples by 1/exp(H − E₀) + 1/exp(−PLPD) (DeYO).
        sam_rho: radius of the sharpness-aware step (SAR: 0.05; 0 = plain step).
        collapse_margin: reset the weights to the source when the running mean entropy of reliable samples falls
            below ``collapse_margin · ln 2`` (SAR's 0.2 at C = 1000, i.e. 0.2 / ln 1000 of ln C).
        seed, lr, steps, update_blocks, update_adapters, reset, stages: see :class:`TestTimeAdaptation`.
    """

    config = "causal_tta"

    def __init__(
        self,
        *,
        marginalize: bool = True,
        k: int = 4,
        beta: float = 0.25,
        style_spread: float = 1.0,
        trim: bool = False,
        trim_directions: int = 2,
        trim_augmentations: int = 8,
        update: bool = False,
        entropy_margin: float = SAR_ENTROPY_MARGIN,
        plpd_threshold: float = 0.2,
        deyo_weighting: bool = True,
        sam_rho: float = 0.05,
        collapse_margin: float = SAR_COLLAPSE_MARGIN,
        seed: int = 0,
        lr: float = 1e-3,
        steps: int = 1,
        update_blocks: int | None = None,
        update_adapters: bool = False,
        reset: str = "domain",
        stages: list[str] | None = None,
    ) -> None:
        super().__init__(update=update, lr=lr, steps=steps, update_blocks=update_blocks,
                         update_adapters=update_adapters, reset=reset, stages=stages, seed=seed)  # fmt: skip
        checks = {
            f"k must be >= 0 (got {k})": k < 0,
            f"beta must be in [0, 1] (got {beta})": not 0.0 <= beta <= 1.0,
            f"style_spread must be >= 0 (got {style_spread})": style_spread < 0,
        }
        self._guard_config: dict[str, Any] = {"entropy_margin": entropy_margin, "plpd_threshold": plpd_threshold,
                                              "sam_rho": sam_rho, "collapse_margin": collapse_margin,
                                              "deyo_weighting": deyo_weighting}  # fmt: skip
        problems = [message for message, bad in checks.items() if bad]
        problems += Trimmer.problems(trim_directions, trim_augmentations) + GuardedUpdate.problems(**self._guard_config)
        if problems:
            raise ConfigError("CausalTTA: " + "; ".join(problems))
        self.marginalize, self.k, self.beta, self.style_spread = marginalize, k, beta, style_spread
        self.trim, self.trim_directions, self.trim_augmentations = trim, trim_directions, trim_augmentations
        self.guard = GuardedUpdate(**self._guard_config)
        self.trimmer = Trimmer(trim_directions, trim_augmentations)
        self._captured: Tensor | None = None  # the current batch's tokens at the style layer (detached)
        self._styles: dict[str, tuple[Tensor, Tensor]] = {}  # the styles of the latest batch, per modality
        self._hook: Any = None

    @property
    def marginalizing(self) -> bool:
        return self.marginalize and self.k > 0 and self.beta < 1.0

    @property
    def trimming(self) -> bool:
        return self.trim and self.trim_directions > 0

    def check(self, pl_module: Any) -> None:
        if self.trimming:
            self.trimmer.check(pl_module)
        for modality in pl_module.encoder.modalities if self.marginalizing else ():
            pl_module.style_bank.warn_if_unusable(modality, "CausalTTA")

    def counters(self) -> dict[str, float]:
        return {**super().counters(), **self.guard.counters()}

    def _start(self, pl_module: Any) -> None:
        super()._start(pl_module)
        self._styles, self._captured = {}, None
        self.guard = GuardedUpdate(**self._guard_config)
        self.trimmer.reset()
        if self.update:
            log.info("CausalTTA guard: %s", self.guard.describe())
        if self._hook is None:
            self._hook = pl_module.encoder.blocks[pl_module.style_bank.layer].register_forward_hook(self._capture)

    def _end(self, pl_module: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._captured = None, None
        super()._end(pl_module)

    def _capture(self, module: Any, inputs: Any, output: Tensor) -> None:
        self._captured = output.detach()

    def _reset(self, pl_module: Any, modality: str) -> None:
        """A new episode (domain start, or every batch with ``reset: batch``): weights, guard and trimming."""
        super()._reset(pl_module, modality)
        self.guard.restart()
        self.trimmer.reset()

    def predict(
        self, pl_module: Any, batch: dict[str, Any], out: dict[str, Tensor], modality: str
    ) -> dict[str, Tensor]:
        tokens, self._captured = self._captured, None  # this batch's tokens at the style layer, read once
        styles = None
        if self.marginalizing:
            styles = pl_module.style_bank.sample(modality, self.k, self.generator(STYLES), self.style_spread)
        if styles is not None and (tokens is None or tokens.shape[0] != len(batch["image"])):
            rows = None if tokens is None else tokens.shape[0]
            raise MammopathError(
                f"CausalTTA: the captured style-layer tokens ({rows} rows) are not this batch's "
                f"({len(batch['image'])}): run the module on the batch just before predict()"
            )
        if styles is None and not self.trimming:
            return out
        score = None
        if self.trimming:  # scores any feature vector of this batch's samples with trimming (and the prototypes)
            score = self.trimmer.logit_fn(pl_module, batch, out["features"], modality,
                                          self.sample_generators(AUGMENT, batch))  # fmt: skip
            self._captured = None  # the views' forwards captured their own tokens
        factual = out["cls_logit"] if score is None else score(out["features"])
        if styles is None:
            return {**out, "cls_logit": factual}
        assert tokens is not None
        self._styles[modality] = styles
        size = (int(batch["image"].shape[-2]), int(batch["image"].shape[-1]))
        logit = marginalized_logit(pl_module, tokens, styles, factual, self.beta, modality, out["grid"], size, score)
        return {**out, "cls_logit": logit}

    def adapt(self, pl_module: Any, batch: dict[str, Any], modality: str) -> None:
        assert self._optimizer is not None
        shuffles = self.sample_generators(SHUFFLE, batch)  # one per image
        collapsed = self.guard.step(pl_module, self._optimizer, batch["image"].to(pl_module.device), modality, shuffles)
        self._captured = None  # the step's forwards captured their own tokens: never read by the next batch
        if collapsed:  # weights, optimizer and guard back to the source; the trimming's prototypes are kept
            super()._reset(pl_module, modality)
            self.guard.restart()
