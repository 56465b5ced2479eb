"""The guarded LayerNorm update of `CausalTTA` (algorithms.md §4.6 step 3: SAR + DeYO, label-free).

One step on a test batch, after it has been predicted:

1. entropy H of every sample and DeYO's PLPD against a copy with its 4 × 4 patches shuffled (each image its own
   permutation). The malignancy output is binary, so its entropy is at most ln 2 and the thresholds are computed
   for C = 2 (:mod:`mammopath.tta.guard`'s functions take any C; a larger C here would only switch the filter off);
2. reliable samples: H < E₀ = ``entropy_margin`` · ln C (SAR; 0.277 for C = 2) **and** PLPD >
   ``plpd_threshold`` (DeYO, 0.2);
3. loss = mean over reliable samples of w · H with DeYO's weights w = 1/exp(H − E₀) + 1/exp(−PLPD)
   (``deyo_weighting``; else w = 1);
4. sharpness-aware (SAM, ρ = ``sam_rho``, 0.05): perturb the declared parameters by ρ · g/‖g‖, recompute the
   entropy there, keep the samples still under E₀ (SAR re-filters on entropy; the PLPD of the first pass is
   reused), take the gradient there, restore the parameters, step;
5. collapse guard: an exponential moving average (0.9) of the reliable samples' mean entropy; below
   ``collapse_margin`` · ln C (SAR's 0.2 on ImageNet is 0.2 / ln 1000 of ln C: 0.0201 for C = 2) the
   weights go back to the source and the moving average starts again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mammopath.errors import ConfigError
from mammopath.tta.guard import binary_entropy, collapse_threshold, deyo_weights, entropy_threshold, patch_shuffle, plpd

log = logging.getLogger(__name__)


#: C of the malignancy output: its entropy is binary (≤ ln 2), so the thresholds are fractions of ln 2.
BINARY = 2


class GuardedUpdate:
    """State and step of the guarded update (the thresholds are in nats, fractions of ln 2).

    Args:
        entropy_margin: E₀ = entropy_margin · ln C.
        plpd_threshold: DeYO's PLPD bound.
        sam_rho: SAM radius (0: a plain step).
        collapse_margin: the collapse bound as a fraction of ln C.
        deyo_weighting: weight reliable samples by DeYO's weights.
    """

    def __init__(
        self,
        *,
        entropy_margin: float,
        plpd_threshold: float,
        sam_rho: float,
        collapse_margin: float,
        deyo_weighting: bool,
    ) -> None:
        problems = self.problems(entropy_margin=entropy_margin, plpd_threshold=plpd_threshold, sam_rho=sam_rho,
                                 collapse_margin=collapse_margin, deyo_weighting=deyo_weighting)  # fmt: skip
        if problems:
            raise ConfigError("GuardedUpdate: " + "; ".join(problems))
        self.e0 = entropy_threshold(entropy_margin, BINARY)
        self.collapse = collapse_threshold(collapse_margin, BINARY)
        self.plpd_threshold, self.sam_rho, self.deyo_weighting = plpd_threshold, sam_rho, deyo_weighting
        self.ema: float | None = None
        self.filtered = 0  # samples left out by the reliability filter
        self.steps = 0  # optimizer steps taken
        self.collapses = 0  # resets to the source weights on collapse

    @staticmethod
    def problems(
        *, entropy_margin: float, plpd_threshold: float, sam_rho: float, collapse_margin: float, deyo_weighting: bool
    ) -> list[str]:
        """What is wrong with these arguments (an empty list: nothing), each naming the argument."""
        checks = {
            f"entropy_margin must be > 0 (got {entropy_margin})": entropy_margin <= 0,
            f"plpd_threshold must be in [-1, 1] (a probability difference; got {plpd_threshold})":
                not -1.0 <= plpd_threshold <= 1.0,
            f"sam_rho must be >= 0 (got {sam_rho})": sam_rho < 0,
            f"collapse_margin must be >= 0 (got {collapse_margin})": collapse_margin < 0,
        }  # fmt: skip
        return [message for message, bad in checks.items() if bad]

    def counters(self) -> dict[str, float]:
        """What the guard did, and its thresholds (nats), logged as ``tta/*``."""
        return {"collapse_resets": float(self.collapses), "update_steps": float(self.steps),
                "filtered_samples": float(self.filtered), "entropy_threshold": self.e0,
                "collapse_threshold": self.collapse}  # fmt: skip

    def describe(self) -> str:
        """The thresholds in words (logged at test start)."""
        return (f"reliable below E0 = {self.e0:.4f} nats (C = {BINARY}), PLPD > {self.plpd_threshold:.2f}, "
                f"SAM rho {self.sam_rho:.3f}, collapse below {self.collapse:.4f} nats")  # fmt: skip

    def restart(self) -> None:
        """A new episode (the weights were reset): the moving average starts again."""
        self.ema = None

    def _loss(self, entropy: Tensor, gap: Tensor, reliable: Tensor) -> Tensor:
        if not self.deyo_weighting:
            return entropy[reliable].mean()
        return (entropy * deyo_weights(entropy, gap, self.e0))[reliable].mean()

    def step(
        self,
        pl_module: Any,
        optimizer: torch.optim.Optimizer,
        images: Tensor,
        modality: str,
        generators: Sequence[torch.Generator],
    ) -> bool:
        """One guarded step on ``images`` (``generators``: one per image, for its patch shuffle); True when the running
        entropy collapsed (the caller resets)."""
        logit = pl_module(images, modality)["cls_logit"]
        entropy = binary_entropy(logit)
        with torch.no_grad():
            shuffled = pl_module(patch_shuffle(images, generator=generators), modality)["cls_logit"]
            gap = plpd(logit.detach(), shuffled)
        reliable = (entropy.detach() < self.e0) & (gap > self.plpd_threshold)
        self.filtered += int((~reliable).sum())
        if not bool(reliable.any()):
            return False
        optimizer.zero_grad()
        self._loss(entropy, gap, reliable).backward()
        tracked = entropy.detach()[reliable].mean()
        if self.sam_rho > 0:  # sharpness-aware: the gradient at the worst point of a rho-ball
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
            shifts = [self.sam_rho * p.grad / norm for p in params]
            with torch.no_grad():
                for p, e in zip(params, shifts, strict=True):
                    p.add_(e)
            optimizer.zero_grad()
            entropy = binary_entropy(pl_module(images, modality)["cls_logit"])
            reliable = reliable & (entropy.detach() < self.e0)
            if bool(reliable.any()):
                self._loss(entropy, gap, reliable).backward()  # before the restore: autograd saved these weights
            with torch.no_grad():
                for p, e in zip(params, shifts, strict=True):
                    p.sub_(e)
            if not bool(reliable.any()):
                optimizer.zero_grad()
                return False
            tracked = entropy.detach()[reliable].mean()
        optimizer.step()
        self.steps += 1
        value = float(tracked)
        self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
        if self.ema < self.collapse:
            log.info("CausalTTA: running entropy %.4f below %.4f (collapse); reset to the source weights",
                     self.ema, self.collapse)  # fmt: skip
            self.collapses += 1
            return True
        return False
