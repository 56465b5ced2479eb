"""Attention maps of the shared ViT: attention rollout and class-specific gradient-weighted relevance.

- :func:`record_attention` switches timm's fused attention off on every block only while it records
  (fused attention never materializes the weights; timm's ``AttentionExtract`` does the same), captures
  the attention probabilities where timm's ``Attention`` applies ``attn_drop`` (so LoRA on ``qkv`` and the
  modality's adapters are in effect), and restores each block's flag afterwards. Outputs are unchanged
  beyond float tolerance (tested).
- :func:`attention_rollout` (Abnar & Zuidema 2020): per layer the head mean, plus the identity for the
  residual path, rows renormalized; the product over layers; the map is the class token's row over the
  patch tokens (the mean over patch rows for models without a class token). Register tokens are dropped.
- :func:`gradient_relevance` (Chefer et al. 2021, the gradient-weighted rule): per layer
  Ā = mean_heads(∇A ⊙ A)⁺ for the chosen output, R ← R + Ā R from R = I; the map is read like the rollout.
  It needs gradients: a predict run that computes it needs ``trainer.inference_mode: false``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from mammopath.errors import ConfigError


@contextmanager
def record_attention(encoder: Any, grad: bool = False) -> Iterator[list[Tensor]]:
    """Collect the attention probabilities ``[B, heads, T, T]`` of every block during the enclosed forward.

    Args:
        encoder: the :class:`~mammopath.models.encoders.ViTEncoder`.
        grad: keep each map's gradient after ``backward()`` (``map.grad``), for :func:`gradient_relevance`.
    """
    maps: list[Tensor] = []
    attns = [block.attn for block in encoder.blocks]
    flags = [getattr(a, "fused_attn", False) for a in attns]

    def hook(module: Any, inputs: Any, output: Tensor) -> None:
        if grad and output.requires_grad:
            output.retain_grad()
        maps.append(output)

    handles = []
    try:
        for attn in attns:
            if not hasattr(attn, "attn_drop"):
                raise ConfigError(f"{type(attn).__name__} has no attn_drop: attention cannot be recorded")
            attn.fused_attn = False
            handles.append(attn.attn_drop.register_forward_hook(hook))
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for attn, flag in zip(attns, flags, strict=True):
            attn.fused_attn = flag


def _read_map(joint: Tensor, num_prefix: int, has_class_token: bool) -> Tensor:
    """The map over patch tokens ``[B, N]`` from a joint ``[B, T, T]`` token-to-token matrix."""
    if has_class_token:
        return joint[:, 0, num_prefix:]
    return joint[:, num_prefix:, num_prefix:].mean(dim=1)


def rollout_matrices(maps: list[Tensor]) -> Tensor:
    """The rolled-out token-to-token matrix ``[B, T, T]``: ∏ normalize(mean_heads(A) + I); rows sum to 1."""
    joint: Tensor | None = None
    for attn in maps:
        a = attn.detach().float().mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    if joint is None:
        raise ConfigError("no attention was recorded (was the forward run inside record_attention?)")
    return joint


def attention_rollout(maps: list[Tensor], num_prefix: int, has_class_token: bool, grid: tuple[int, int]) -> Tensor:
    """Rollout maps ``[B, h, w]``, each normalized to sum to 1 over the patch grid."""
    patch = _read_map(rollout_matrices(maps), num_prefix, has_class_token)
    patch = patch / patch.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return patch.view(-1, *grid)


def gradient_relevance(maps: list[Tensor], num_prefix: int, has_class_token: bool, grid: tuple[int, int]) -> Tensor:
    """Class-specific relevance ``[B, h, w]`` (≥ 0, normalized to sum to 1) from maps whose ``.grad`` is set."""
    relevance: Tensor | None = None
    for attn in maps:
        if attn.grad is None:
            raise ConfigError("attention maps have no gradient: record with grad=True and call backward() first")
        cam = (attn.grad * attn).clamp_min(0).mean(dim=1).detach().float()
        if relevance is None:
            relevance = torch.eye(cam.shape[-1], device=cam.device).expand_as(cam).clone()
        relevance = relevance + cam @ relevance
    assert relevance is not None
    patch = _read_map(relevance, num_prefix, has_class_token).clamp_min(0)
    patch = patch / patch.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return patch.view(-1, *grid)


def explain_batch(module: Any, images: Tensor, modality: str, relevance: bool = True) -> dict[str, Tensor]:
    """Forward one batch recording attention: the outputs, the rollout and (optionally) the relevance maps.

    The relevance is that of the malignancy logit (each sample's own output, summed over the batch, since
    samples do not interact). Returns the forward dict plus ``rollout`` and ``relevance`` ``[B, h, w]``.
    """
    encoder = module.encoder
    prefix = encoder.num_prefix_tokens
    has_cls = getattr(encoder.vit, "cls_token", None) is not None
    if relevance:  # the maps need a graph even when every weight is frozen
        images = images.detach().clone().requires_grad_(True)
    with torch.enable_grad() if relevance else torch.no_grad(), record_attention(encoder, grad=relevance) as maps:
        out = module(images, modality)
        if relevance:
            if torch.is_inference_mode_enabled():
                raise ConfigError("relevance maps need gradients: run predict with trainer.inference_mode: false")
            out["cls_logit"].sum().backward(inputs=[m for m in maps if m.requires_grad])
    grid = (int(out["grid"][0]), int(out["grid"][1]))
    result = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in out.items()}
    result["rollout"] = attention_rollout(maps, prefix, has_cls, grid)
    if relevance:
        result["relevance"] = gradient_relevance(maps, prefix, has_cls, grid)
    return result
