"""Test-time adaptation at an unseen hospital: `CausalTTA` and the `TENT` baseline.

Both plug into the module's one documented hook for inference-time callbacks,
``register_prediction_transform``: for every test (or predict) batch they

1. **predict first**, with the state adapted on past batches only (the stream is causal in time: a
   batch never influences its own prediction or an earlier one);
2. then optionally **adapt** on it, with their own small optimizer over declared parameters only
   (LayerNorm affine of the lower blocks, optionally the modality's adapters), under
   ``torch.enable_grad()``;
3. **reset** to the source weights whenever the target domain (or the modality) of the stream changes
   (``reset: domain``, the default: episodic per domain), so no adaptation crosses from one hospital to
   the next. Evaluation batches never straddle two domains (the datamodule groups them).

The source weights are snapshotted when test starts and restored when it ends: a test run leaves the
model exactly as it found it. Both need ``trainer.inference_mode: false`` (gradients, and interventions
on tokens, need tensors that are not inference tensors) and refuse to start otherwise.

**CausalTTA** (algorithms.md §4.6): the prediction is the backdoor-adjusted
``p(y | do(x)) ≈ β · p(y | h) + (1 − β) · mean_k p(y | h re-styled with source style k)``: the tokens
after the style-bank layer are re-rendered with K source styles from the module's style bank (domains
drawn uniformly, the source style prior) and only the later blocks are re-run. The guarded update uses
binary entropy on reliable samples only (entropy < 0.4·ln 2 and a prediction drop > 0.2 when the image
is patch-shuffled: DeYO's PLPD), optional sharpness-aware steps (SAM), and resets to the source weights
when the running mean entropy collapses below ``collapse_entropy``.

**TENT** (Wang et al. 2021): entropy minimization on every sample, LayerNorm affine of every block,
online, with the same reset rules; the prediction is the plain one (before the step), as in TENT's code.

The marginalization and TENT change the malignancy score; heatmaps and grades stay the factual ones.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammopath.dg.mixstyle import restyle
from mammopath.errors import ConfigError

log = logging.getLogger(__name__)

INFERENCE_MODE_MESSAGE = (
    "{name} adapts at test time and needs gradients: set `trainer.inference_mode: false` "
    "(e.g. --trainer.inference_mode=false, or experiments/baselines/{config}.yaml)"
)


def binary_entropy(logit: Tensor) -> Tensor:
    """Entropy (nats) of a Bernoulli with the given logit, per sample."""
    p = torch.sigmoid(logit)
    return -(p * F.logsigmoid(logit) + (1 - p) * F.logsigmoid(-logit))


def patch_shuffle(images: Tensor, grid: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Cut every image into grid × grid tiles and permute them (destroys shape, keeps local style)."""
    b, c, h, w = images.shape
    th, tw = h // grid, w // grid
    crop = images[:, :, : th * grid, : tw * grid]
    tiles = crop.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    perm = torch.randperm(grid * grid, generator=generator)
    tiles = (
        tiles[:, perm].reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, th * grid, tw * grid)
    )
    out = images.clone()
    out[:, :, : th * grid, : tw * grid] = tiles
    return out


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
    ) -> None:
        super().__init__()
        if reset not in ("domain", "batch", "never"):
            raise ConfigError(f"{type(self).__name__}.reset must be 'domain', 'batch' or 'never'; got {reset!r}")
        self.update, self.lr, self.steps = update, lr, steps
        self.update_blocks, self.update_adapters, self.reset_mode = update_blocks, update_adapters, reset
        self.stages = tuple(stages or ("test", "predict"))
        self._source: dict[str, Tensor] | None = None
        self._stream: tuple[str, str] | None = None
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
        self._stream, self.resets, self.adapted_batches = None, 0, 0

    def _end(self, pl_module: Any) -> None:
        if self._source is not None:
            pl_module.load_state_dict(self._source)  # the source weights, exactly
            self._source = None
        pl_module.requires_grad_(False)
        for p, flag in getattr(self, "_grad_flags", {}).items():
            p.requires_grad_(flag)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._grad_flags = {p: p.requires_grad for p in pl_module.parameters()}
        self._start(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(pl_module)
        log.info("%s: %d adapted batches, %d resets", type(self).__name__, self.adapted_batches, self.resets)

    on_predict_start = on_test_start
    on_predict_end = on_test_end

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
    """TENT baseline: entropy minimization of the malignancy output, LayerNorm affine of every block, online.

    Args: those of :class:`TestTimeAdaptation`.
    """

    config = "tent"

    def adapt(self, pl_module: Any, batch: dict[str, Any], modality: str) -> None:
        assert self._optimizer is not None
        images = batch["image"].to(pl_module.device)
        loss = binary_entropy(pl_module(images, modality)["cls_logit"]).mean()
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()


class CausalTTA(TestTimeAdaptation):
    """Style-intervention marginalization over the source style bank, with an optional guarded update.

    Args:
        k: source styles per prediction (0 = no intervention).
        beta: weight of the factual prediction.
        entropy_margin: reliable samples have entropy < ``entropy_margin · ln 2`` (SAR's E₀ = 0.4 ln C).
        plpd_threshold: reliable samples lose more than this much predicted-class probability when
            patch-shuffled (DeYO).
        sam_rho: radius of a sharpness-aware step (0 = plain step).
        collapse_entropy: reset to the source weights when the running mean entropy falls below this.
        seed: seed of the style draw and of the patch shuffles.
        update, lr, steps, update_blocks, update_adapters, reset, stages: see :class:`TestTimeAdaptation`
            (``update`` is off by default here: the marginalization alone is gradient-free).
    """

    config = "causal_tta"

    def __init__(
        self,
        k: int = 4,
        beta: float = 0.25,
        entropy_margin: float = 0.4,
        plpd_threshold: float = 0.2,
        sam_rho: float = 0.0,
        collapse_entropy: float = 0.2,
        seed: int = 0,
        update: bool = False,
        lr: float = 1e-3,
        steps: int = 1,
        update_blocks: int | None = None,
        update_adapters: bool = False,
        reset: str = "domain",
        stages: list[str] | None = None,
    ) -> None:
        super().__init__(update, lr, steps, update_blocks, update_adapters, reset, stages)
        if k < 0 or not 0.0 <= beta <= 1.0:
            raise ConfigError(f"CausalTTA needs k >= 0 and 0 <= beta <= 1; got k={k}, beta={beta}")
        self.k, self.beta, self.seed = k, beta, seed
        self.entropy_margin, self.plpd_threshold = entropy_margin, plpd_threshold
        self.sam_rho, self.collapse_entropy = sam_rho, collapse_entropy
        self._captured: Tensor | None = None
        self._styles: dict[str, tuple[Tensor, Tensor]] = {}
        self._entropy_ema: float | None = None
        self._hook: Any = None
        self.filtered = 0

    def check(self, pl_module: Any) -> None:
        if self.k > 0 and self.beta < 1.0:
            for modality in pl_module.encoder.modalities:
                if len(pl_module.style_bank.styles(modality)[0]) == 0:
                    log.warning("CausalTTA: the %s style bank is empty (train with the StyleBank callback): "
                                "%s predictions are not marginalized", modality, modality)  # fmt: skip

    def _start(self, pl_module: Any) -> None:
        super()._start(pl_module)
        self._styles = {}
        generator = torch.Generator().manual_seed(self.seed)
        for modality in pl_module.encoder.modalities:
            mu, sigma, domains = pl_module.style_bank.styles(modality)
            if len(mu) == 0 or self.k == 0:
                continue
            names = sorted(set(domains))
            picks = []
            for _ in range(self.k):  # domains uniformly (the source style prior), then a style of that domain
                domain = names[int(torch.randint(len(names), (1,), generator=generator))]
                rows = [i for i, d in enumerate(domains) if d == domain]
                picks.append(rows[int(torch.randint(len(rows), (1,), generator=generator))])
            self._styles[modality] = (mu[picks].clone(), sigma[picks].clone())
        layer = pl_module.encoder.blocks[pl_module.style_bank.layer]
        self._hook = layer.register_forward_hook(self._capture)
        self._shuffle_gen = torch.Generator().manual_seed(self.seed + 1)

    def _end(self, pl_module: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        super()._end(pl_module)

    def _capture(self, module: Any, inputs: Any, output: Tensor) -> None:
        self._captured = output

    def _reset(self, pl_module: Any, modality: str) -> None:
        super()._reset(pl_module, modality)
        self._entropy_ema = None

    def predict(
        self, pl_module: Any, batch: dict[str, Any], out: dict[str, Tensor], modality: str
    ) -> dict[str, Tensor]:
        styles = self._styles.get(modality)
        if styles is None or self.k == 0 or self.beta >= 1.0 or self._captured is None:
            return out
        tokens = self._captured
        grid = (int(out["grid"][0]), int(out["grid"][1]))
        image_size = (int(batch["image"].shape[-2]), int(batch["image"].shape[-1]))
        prefix = pl_module.encoder.num_prefix_tokens
        p = self.beta * torch.sigmoid(out["cls_logit"])
        for mu, sigma in zip(*styles, strict=True):
            styled = restyle(tokens, mu, sigma, prefix)
            p = p + (1 - self.beta) / self.k * torch.sigmoid(
                pl_module.forward_from(styled, modality, grid, image_size)["cls_logit"]
            )
        p = p.clamp(1e-7, 1 - 1e-7)
        return {**out, "cls_logit": torch.log(p) - torch.log1p(-p)}

    def _loss(self, pl_module: Any, images: Tensor, modality: str) -> Tensor | None:
        logit = pl_module(images, modality)["cls_logit"]
        entropy = binary_entropy(logit)
        with torch.no_grad():
            shuffled = pl_module(patch_shuffle(images, generator=self._shuffle_gen), modality)["cls_logit"]
            p, q = torch.sigmoid(logit), torch.sigmoid(shuffled)
            confident = torch.where(p >= 0.5, p, 1 - p)
            shuffled_same = torch.where(p >= 0.5, q, 1 - q)
            plpd = confident - shuffled_same
        reliable = (entropy.detach() < self.entropy_margin * math.log(2)) & (plpd > self.plpd_threshold)
        self.filtered += int((~reliable).sum())
        if not bool(reliable.any()):
            return None
        return entropy[reliable].mean()

    def adapt(self, pl_module: Any, batch: dict[str, Any], modality: str) -> None:
        assert self._optimizer is not None
        images = batch["image"].to(pl_module.device)
        loss = self._loss(pl_module, images, modality)
        if loss is None:
            return
        self._optimizer.zero_grad()
        loss.backward()
        if self.sam_rho > 0:  # sharpness-aware: step from the worst point of a rho-ball
            params = [p for g in self._optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
            shifts = [self.sam_rho * p.grad / norm for p in params]
            with torch.no_grad():
                for p, e in zip(params, shifts, strict=True):
                    p.add_(e)
            self._optimizer.zero_grad()
            second = self._loss(pl_module, images, modality)
            with torch.no_grad():
                for p, e in zip(params, shifts, strict=True):
                    p.sub_(e)
            if second is None:
                return
            second.backward()
            loss = second
        self._optimizer.step()
        value = float(loss.detach())
        self._entropy_ema = value if self._entropy_ema is None else 0.9 * self._entropy_ema + 0.1 * value
        if self._entropy_ema < self.collapse_entropy:
            log.info("CausalTTA: running entropy %.3f collapsed; reset to the source weights", self._entropy_ema)
            self._reset(pl_module, modality)
