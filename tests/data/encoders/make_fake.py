"""Fake pretrained-encoder weight files in each vendor's own key layout, at toy size (random values).

``write_weights(preset, path)`` builds a depth-reduced, narrow twin of the preset's architecture in
timm, writes its state dict in the layout the vendor ships (timm; Hugging Face ``transformers``
``ViTModel``/``Dinov2Model``; facebookresearch DINOv2 inside a MaMA Lightning checkpoint) and returns
the timm state dict the loader must reproduce. The conversion here goes timm → vendor, written from the
vendors' module names (``transformers`` ``modeling_vit.py``/``modeling_dinov2.py``, facebookresearch
``dinov2/models/vision_transformer.py``), independently of ``mammopath.models.layouts`` (vendor → timm):
the two must agree. ``to_vendor`` also works on ``meta`` tensors, for full-size key/shape checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from torch import Tensor

#: A 2-block, 32-wide twin: keeps patch size, registers, SwiGLU, layer scale and position-embedding rules.
TWIN = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def twin_size(preset: Any) -> int:
    """An input side giving a 2x2 patch grid."""
    patch = int(preset.model_kwargs.get("patch_size", _patch_of(preset.timm_name)))
    return 2 * patch


def _patch_of(timm_name: str) -> int:
    return int(timm_name.split("patch")[1].split("_")[0])


def timm_twin(preset: Any, img_size: int, seed: int = 0, model_kwargs: dict[str, Any] | None = None) -> Any:
    """The preset's architecture with ``model_kwargs`` (default :data:`TWIN`) merged over its own, random values."""
    torch.manual_seed(seed)
    kwargs = {**preset.model_kwargs, **(TWIN if model_kwargs is None else model_kwargs)}
    vit = timm.create_model(preset.timm_name, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
    with torch.no_grad():
        for p in vit.parameters():  # layer scales, tokens and norms too: nothing left at a constant init
            p.copy_(torch.randn_like(p) * 0.2)
    return vit


def _uses_swiglu(vit: Any) -> bool:
    """timm's packed SwiGLU: ``fc1`` produces both halves (value and gate), ``fc2`` takes one."""
    return bool(vit.blocks[0].mlp.fc1.out_features == 2 * vit.blocks[0].mlp.fc2.in_features)


def _split_class_position(sd: dict[str, Tensor], out: dict[str, Tensor], cls_key: str, pos_key: str) -> None:
    """Vendors keep a position for the class token; a timm ``no_embed_class`` model has it folded in."""
    cls, pos = sd["cls_token"], sd["pos_embed"]
    p0 = torch.empty_like(cls) if cls.is_meta else torch.randn(cls.shape, generator=torch.Generator().manual_seed(1))
    out[cls_key] = cls - p0
    out[pos_key] = torch.cat([p0, pos], dim=1)


def to_vendor(sd: dict[str, Tensor], layout: str, no_embed_class: bool, swiglu: bool = False) -> dict[str, Tensor]:
    """A timm state dict in ``layout``'s keys (``timm``, ``hf_vit``, ``hf_dinov2``, ``meta_dinov2``)."""
    if layout == "timm":
        return dict(sd)
    out: dict[str, Tensor] = {}
    dim = sd["cls_token"].shape[-1]
    meta = sd["cls_token"].is_meta
    zeros = torch.empty(1, dim, device="meta") if meta else torch.zeros(1, dim)
    if layout == "meta_dinov2":
        for key, value in sd.items():
            if key in ("cls_token", "pos_embed"):
                continue
            key = "register_tokens" if key == "reg_token" else key
            if swiglu:
                key = key.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
            out[key] = value
        out["mask_token"] = zeros
        if no_embed_class:
            _split_class_position(sd, out, "cls_token", "pos_embed")
        else:
            out["cls_token"], out["pos_embed"] = sd["cls_token"], sd["pos_embed"]
        return out
    dinov2 = layout == "hf_dinov2"
    names = (
        {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.weights_in" if swiglu else "mlp.fc1"}
        | {"mlp.fc2": "mlp.weights_out" if swiglu else "mlp.fc2", "attn.proj": "attention.output.dense"}
        if dinov2
        else {
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense",
            "attn.proj": "attention.output.dense",
        }
    )
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            prefix = f"encoder.layer.{i}."
            if module == "attn.qkv":
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}attention.attention.{part}.{param}"] = chunk.clone()
            elif module in ("ls1", "ls2"):
                out[f"{prefix}layer_scale{module[-1]}.lambda1"] = value
            else:
                out[f"{prefix}{names[module]}.{param}"] = value
        elif key.startswith("patch_embed.proj."):
            out[f"embeddings.patch_embeddings.projection.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith("norm."):
            out[f"layernorm.{key.rsplit('.', 1)[1]}"] = value
        elif key == "reg_token":
            out["embeddings.register_tokens"] = value
    if no_embed_class:
        _split_class_position(sd, out, "embeddings.cls_token", "embeddings.position_embeddings")
    else:
        out["embeddings.cls_token"], out["embeddings.position_embeddings"] = sd["cls_token"], sd["pos_embed"]
    if dinov2:
        out["embeddings.mask_token"] = zeros
    else:  # ViTModel(add_pooling_layer=True)
        out["pooler.dense.weight"] = torch.randn(dim, dim) if not meta else torch.empty(dim, dim, device="meta")
        out["pooler.dense.bias"] = torch.zeros(dim) if not meta else torch.empty(dim, device="meta")
    return out


def vendor_layout(preset: Any) -> str:
    """The layout the vendor ships (the first of the preset's)."""
    return str(preset.layouts[0])


def vendor_file(preset: Any, vit: Any, sd: dict[str, Tensor], layout: str | None = None) -> tuple[Any, int]:
    """What the vendor's file holds for ``vit``'s state dict ``sd`` and how many of its tensors a loader drops."""
    layout = layout or vendor_layout(preset)
    vendor = to_vendor(sd, layout, bool(vit.no_embed_class), swiglu=_uses_swiglu(vit))
    split = 2 * sum(1 for k in sd if ".attn.qkv." in k) if layout.startswith("hf_") else 0  # qkv = 3 tensors there
    dropped = len(vendor) - split - len(sd)
    if preset.key_prefix:  # MaMA: a Lightning checkpoint of the whole CLIP model
        dim = sd["cls_token"].shape[-1]
        others = {
            "img_encoder_q.global_embed.weight": torch.randn(16, dim),
            "img_encoder_q.global_embed.bias": torch.zeros(16),
            "text_encoder_q.model.wte.weight": torch.randn(10, 8),
            "logit_scale": torch.tensor(2.66),
        }
        state = {**{preset.key_prefix + k: v for k, v in vendor.items()}, **others}
        return {"epoch": 3, "global_step": 120, "state_dict": state}, dropped + len(others)
    return vendor, dropped


def save(obj: Any, path: Path) -> Path:
    """``.safetensors`` with safetensors, anything else with ``torch.save``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def write_weights(
    preset: Any,
    path: str | Path,
    img_size: int | None = None,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    layout: str | None = None,
) -> tuple[Path, dict[str, Tensor], int]:
    """Write a twin of ``preset`` in its vendor's layout; returns the file, the timm reference and the dropped count.

    ``img_size`` defaults to the preset's own (the vendor's position-embedding grid).
    """
    vit = timm_twin(preset, img_size or preset.img_size, seed, model_kwargs)
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    obj, dropped = vendor_file(preset, vit, sd, layout)
    return save(obj, Path(path)), sd, dropped
