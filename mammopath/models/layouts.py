"""Vendor key layouts of ViT weight files, and their conversion to timm's ``VisionTransformer`` keys.

Four layouts cover the shipped presets (:mod:`mammopath.models.presets`):

- ``timm``: timm's own state dict (UNI, UNI2-h, Virchow2, Prov-GigaPath, H-optimus-0, timm hub files).
- ``hf_vit``: Hugging Face ``transformers`` ``ViTModel`` (``embeddings.*``, ``encoder.layer.<i>.*`` with
  separate ``query``/``key``/``value`` and ``layernorm_before/after``).
- ``hf_dinov2``: ``transformers`` ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (Phikon-v2): as ``hf_vit``
  plus ``layer_scale{1,2}.lambda1``, ``norm1/2``, ``mlp.fc1/fc2`` or the SwiGLU ``mlp.weights_in/out``.
- ``meta_dinov2``: the facebookresearch/dinov2 layout (MaMA): timm-like names plus ``mask_token``,
  ``register_tokens``, optional block chunks (``blocks.<chunk>.<i>.*``) and SwiGLU ``w12``/``w3``.

Conversions rename (fusing ``query``/``key``/``value`` into ``qkv`` in that order, as timm's attention
splits its fused projection), drop what a feature extractor does not use (``mask_token``, the pooler)
and, for models whose position embeddings exclude the prefix tokens (timm ``no_embed_class``: the
DINOv2-with-registers models), fold the class token's position embedding into the class token, as
timm's own DINOv2 conversion does. Shapes are never changed here; the strict check in
:mod:`mammopath.models.weights` decides whether the result fits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

LAYOUTS = ("timm", "hf_vit", "hf_dinov2", "meta_dinov2")
#: The key every layout has exactly once; wrapper prefixes are found in front of it.
ANCHORS = {
    "timm": "patch_embed.proj.weight",
    "meta_dinov2": "patch_embed.proj.weight",
    "hf_vit": "embeddings.patch_embeddings.projection.weight",
    "hf_dinov2": "embeddings.patch_embeddings.projection.weight",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# per-layer module renames (suffixes .weight / .bias kept)
_HF_VIT_LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_DINOV2_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",  # SwiGLU: silu(first half) * second half, as timm's SwiGLUPacked
    "mlp.weights_out": "mlp.fc2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_HF_QKV = re.compile(r"^attention\.attention\.(query|key|value)$")
_META_CHUNK = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_META_SWIGLU = {"mlp.w12.": "mlp.fc1.", "mlp.w3.": "mlp.fc2."}


@dataclass
class Converted:
    """A state dict in timm's names, with what was dropped on purpose and what was changed."""

    state: dict[str, Tensor]
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def detect_layout(keys: Iterable[str]) -> str:
    """Which layout a state dict's keys are in (wrapper prefixes allowed); ``timm`` when nothing else fits."""
    keys = list(keys)
    if any(".attention.attention.query." in k or k.startswith("attention.attention.query.") for k in keys):
        hf_dinov2 = any(".layer_scale1." in k or re.search(r"encoder\.layer\.\d+\.norm1\.", k) for k in keys)
        return "hf_dinov2" if hf_dinov2 else "hf_vit"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf_dinov2" if any(".layer_scale1." in k for k in keys) else "hf_vit"
    if any(k.endswith(("mask_token", "register_tokens")) for k in keys) or any(_META_CHUNK.match(k) for k in keys):
        return "meta_dinov2"
    return "timm"


def _fold_class_position(sd: dict[str, Tensor], vit: VisionTransformer, notes: list[str]) -> None:
    """Vendor files embed the class token's position with the patches; timm ``no_embed_class`` models do not."""
    pos, cls = sd.get("pos_embed"), sd.get("cls_token")
    if pos is None or cls is None or pos.ndim != 3 or not vit.no_embed_class or vit.cls_token is None:
        return
    n = pos.shape[1]
    if math.isqrt(n) ** 2 != n and math.isqrt(n - 1) ** 2 == n - 1:
        sd["cls_token"] = cls + pos[:, :1]
        sd["pos_embed"] = pos[:, 1:]
        notes.append("class-token position embedding folded into cls_token (no_embed_class model)")


def _from_hf(sd: dict[str, Tensor], layer_map: dict[str, str]) -> Converted:
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        if key == "embeddings.mask_token" or key.startswith("pooler."):
            ignored.append(key)
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = value  # unknown: kept under its own name, so the strict check lists it
            continue
        i, module, param = int(m.group(1)), m.group(2), m.group(3)
        q = _HF_QKV.match(module)
        if q is not None and param != "lambda1":
            qkv.setdefault((i, param), {})[q.group(1)] = value
        elif module in layer_map and (param == "lambda1") == module.startswith("layer_scale"):
            out[f"blocks.{i}.{layer_map[module]}.{'gamma' if param == 'lambda1' else param}"] = value
        else:
            out[key] = value
    for (i, param), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        else:  # incomplete: keep the originals so the strict check names them
            for name, value in parts.items():
                out[f"encoder.layer.{i}.attention.attention.{name}.{param}"] = value
    notes = ["query/key/value projections fused into qkv"] if qkv else []
    return Converted(out, ignored, notes)


def _from_meta_dinov2(sd: dict[str, Tensor]) -> Converted:
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in sd.items():
        if key == "mask_token":
            ignored.append(key)
            continue
        if key == "register_tokens":
            out["reg_token"] = value
            continue
        m = _META_CHUNK.match(key)
        if m is not None:
            key = f"blocks.{m.group(1)}.{m.group(2)}"
        for old, new in _META_SWIGLU.items():
            key = key.replace(old, new)
        out[key] = value
    return Converted(out, ignored)


def to_timm(sd: dict[str, Tensor], layout: str, vit: VisionTransformer) -> Converted:
    """Convert a state dict (wrapper prefixes already stripped) from ``layout`` to ``vit``'s timm keys."""
    if layout == "timm":
        return Converted(dict(sd))
    if layout == "hf_vit":
        converted = _from_hf(sd, _HF_VIT_LAYER)
    elif layout == "hf_dinov2":
        converted = _from_hf(sd, _HF_DINOV2_LAYER)
    elif layout == "meta_dinov2":
        converted = _from_meta_dinov2(sd)
    else:
        raise ValueError(f"unknown layout {layout!r}; one of {list(LAYOUTS)}")
    _fold_class_position(converted.state, vit, converted.notes)
    return converted
