"""Memory and speed options of the encoder: activation checkpointing of its blocks and ``torch.compile``.

Activation (gradient) checkpointing keeps only each block's input during the forward pass and recomputes the
block during the backward pass. timm's own switch (``vit.set_grad_checkpointing()``) cannot be used here: the
recomputation runs inside ``loss.backward()``, after :func:`~mammopath.models.adapters.use_modality` has restored
the routing, so the adapters would either fail (no active modality) or, worse, recompute a mammography block with
the pathology adapters of the last forward. :class:`CheckpointedBlocks` checkpoints each block with a
recomputation context (``torch.utils.checkpoint``'s ``context_fn``) that routes the adapters to the modality the
forward used. It replaces the class of ``vit.blocks`` only (an ``nn.Sequential`` subclass), so timm's
``forward_features`` still runs the model, and module names and state-dict keys are unchanged.

The same reason rules out FSDP's ``activation_checkpointing_policy`` (its checkpoint wrapper recomputes without
the routing): with FSDP, checkpoint through ``model.grad_checkpointing`` (``experiments/strategies/fsdp.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mammopath.errors import ConfigError
from mammopath.models.adapters import get_active_modality, use_modality


class CheckpointedBlocks(nn.Sequential):
    """``vit.blocks`` with every block checkpointed, recomputed with the adapters of the modality of its forward."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not torch.is_grad_enabled():
            return super().forward(x)
        modality = get_active_modality(self)
        routed = modality is not None  # adapters present: they are routed again while recomputing
        owner = getattr(self, "owner", None)
        if owner is not None and modality is None:  # no adapters (kind "none"): the encoder knows the modality
            modality = owner.active_modality

        def contexts() -> tuple[AbstractContextManager[Any], AbstractContextManager[Any]]:
            return nullcontext(), _recompute_as(self, owner, modality, routed)

        for block in self:
            x = checkpoint(block, x, use_reentrant=False, context_fn=contexts)
        return x


@contextmanager
def _recompute_as(blocks: nn.Module, owner: Any, modality: str | None, routed: bool) -> Iterator[None]:
    """The routing of the original forward during a recomputation: the adapters' modality, and the owning
    encoder's ``active_modality`` (read by block forward hooks: MixStyle mixes again, with the RNG state that
    ``checkpoint`` restores, so the recomputed activations equal the forward's)."""
    previous = None if owner is None else owner.active_modality
    route = use_modality(blocks, modality) if routed and modality is not None else None
    try:
        if owner is not None:
            owner.active_modality = modality
        with route if route is not None else nullcontext():
            yield
    finally:
        if owner is not None:
            owner.active_modality = previous


def set_block_checkpointing(vit: nn.Module, enable: bool = True, owner: Any = None) -> None:
    """Switch activation checkpointing of the blocks of a timm ViT on or off (in place; see the module docstring).

    ``owner``: the encoder whose ``active_modality`` block hooks read; restored during recomputation too.
    """
    blocks = getattr(vit, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ConfigError(f"grad_checkpointing needs a timm VisionTransformer with `blocks`; got {type(vit).__name__}")
    if getattr(vit, "grad_checkpointing", False):
        vit.grad_checkpointing = False  # type: ignore[assignment]  # timm's own recomputation loses the routing
    blocks.__class__ = CheckpointedBlocks if enable else nn.Sequential
    if owner is not None:
        blocks.__dict__["owner"] = owner  # a plain attribute, not a sub-module (no cycle in the module tree)


def compiled(fn: Callable[..., Tensor], options: bool | dict[str, Any]) -> Callable[..., Tensor]:
    """``fn`` through ``torch.compile(**options)`` (``True``: default options), or ``fn`` itself when off.

    Compiling a bound method (``vit.forward_features``) leaves the module, its names and its checkpoints as they are.
    The adapter routing is Python state that dynamo guards on, so each modality gets its own graph. The default
    ``inductor`` backend needs a C++ compiler on CPU (and Triton on GPU); ``{"backend": "aot_eager"}`` needs none.
    """
    if options is False or options is None:
        return fn
    kwargs = {} if options is True else dict(options)
    return torch.compile(fn, **kwargs)
