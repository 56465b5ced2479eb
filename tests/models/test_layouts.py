"""Vendor layouts → timm: a vendor file runs, in the vendor's own forward, exactly as the loaded timm model.

The reference forwards below are written from the vendors' modules (``transformers`` ``ViTLayer`` /
``Dinov2Layer`` / ``Dinov2WithRegistersEmbeddings``, facebookresearch ``DinoVisionTransformer``) and read
the vendor-named tensors directly, so a wrong fusion order (query/key/value, SwiGLU halves), a wrong
register position or a lost class-token position would show as different tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_fake
from torch import Tensor

from mammopath.errors import CheckpointError
from mammopath.models.encoders import ViTEncoder
from mammopath.models.layouts import detect_layout, to_timm
from mammopath.models.presets import ENCODER_PRESETS

fake = load_fake("encoders")
HEADS = fake.TWIN["num_heads"]


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    b, n, c = q.shape
    q, k, v = (t.view(b, n, HEADS, c // HEADS).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (c // HEADS) ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def _ln(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-6)


def _lin(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


def _mlp(x: Tensor, w: dict[str, Tensor], fc1: str, fc2: str, swiglu: bool) -> Tensor:
    h = _lin(x, w, fc1)
    if swiglu:  # transformers Dinov2SwiGLUFFN / dinov2 SwiGLUFFNFused: silu(first half) * second half
        x1, x2 = h.chunk(2, dim=-1)
        return _lin(F.silu(x1) * x2, w, fc2)
    return _lin(F.gelu(h), w, fc2)


def hf_forward(w: dict[str, Tensor], x: Tensor, patch: int, depth: int, layout: str, swiglu: bool) -> Tensor:
    """``ViTModel`` / ``Dinov2Model`` / ``Dinov2WithRegistersModel`` last hidden state, on the native grid."""
    e = "embeddings."
    proj = e + "patch_embeddings.projection"
    h = F.conv2d(x, w[proj + ".weight"], w[proj + ".bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([w[e + "cls_token"].expand(len(x), -1, -1), h], dim=1) + w[e + "position_embeddings"]
    if e + "register_tokens" in w:  # after the position embeddings, between the class token and the patches
        h = torch.cat([h[:, :1], w[e + "register_tokens"].expand(len(x), -1, -1), h[:, 1:]], dim=1)
    dinov2 = layout == "hf_dinov2"
    for i in range(depth):
        p = f"encoder.layer.{i}."
        a = _ln(h, w, p + ("norm1" if dinov2 else "layernorm_before"))
        q, k, v = (_lin(a, w, f"{p}attention.attention.{n}") for n in ("query", "key", "value"))
        a = _lin(_attention(q, k, v), w, p + "attention.output.dense")
        h = h + (a * w[p + "layer_scale1.lambda1"] if dinov2 else a)
        m = _ln(h, w, p + ("norm2" if dinov2 else "layernorm_after"))
        if dinov2:
            fc1, fc2 = ("mlp.weights_in", "mlp.weights_out") if swiglu else ("mlp.fc1", "mlp.fc2")
            h = h + _mlp(m, w, p + fc1, p + fc2, swiglu) * w[p + "layer_scale2.lambda1"]
        else:
            h = h + _mlp(m, w, p + "intermediate.dense", p + "output.dense", False)
    return _ln(h, w, "layernorm")


def meta_forward(w: dict[str, Tensor], x: Tensor, patch: int, depth: int) -> Tensor:
    """facebookresearch ``DinoVisionTransformer.forward_features`` (``x_norm`` of every token)."""
    h = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    h = torch.cat([w["cls_token"].expand(len(x), -1, -1), h], dim=1) + w["pos_embed"]
    if "register_tokens" in w:
        h = torch.cat([h[:, :1], w["register_tokens"].expand(len(x), -1, -1), h[:, 1:]], dim=1)
    for i in range(depth):
        p = f"blocks.{i}."
        qkv = _lin(_ln(h, w, p + "norm1"), w, p + "attn.qkv")
        q, k, v = qkv.chunk(3, dim=-1)  # dinov2 Attention: reshape(B, N, 3, heads, head_dim)
        h = h + _lin(_attention(q, k, v), w, p + "attn.proj") * w[p + "ls1.gamma"]
        h = h + _mlp(_ln(h, w, p + "norm2"), w, p + "mlp.fc1", p + "mlp.fc2", False) * w[p + "ls2.gamma"]
    return _ln(h, w, "norm")


CASES = [  # (preset, vendor layout): every shipped vendor layout, plus registers/SwiGLU variants of each
    ("phikon_v2", "hf_dinov2"),
    ("h_optimus_0", "hf_dinov2"),  # Dinov2WithRegisters + SwiGLU, into a no_embed_class timm model
    ("vit_base", "hf_vit"),
    ("mama", "meta_dinov2"),
]


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_vendor_forward_equals_loaded_timm_forward(name: str, layout: str, tmp_path: Path) -> None:
    preset = ENCODER_PRESETS[name]
    side = fake.twin_size(preset)
    path, _, _ = fake.write_weights(preset, tmp_path / preset.files[0], img_size=side, layout=layout)
    obj = torch.load(path, weights_only=True) if path.suffix != ".safetensors" else None
    if obj is None:
        from safetensors.torch import load_file

        obj = load_file(str(path))
    vendor = obj["state_dict"] if preset.key_prefix else obj
    vendor = {k.removeprefix(preset.key_prefix): v for k, v in vendor.items()}
    enc = ViTEncoder(name, img_size=side, model_kwargs=dict(fake.TWIN), adapter="none", checkpoint_path=str(path))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        ours = enc.vit.forward_features(x)
        patch, depth = side // 2, fake.TWIN["depth"]
        swiglu = enc.vit.blocks[0].mlp.fc1.out_features == 2 * enc.vit.blocks[0].mlp.fc2.in_features
        if layout == "meta_dinov2":
            theirs = meta_forward(vendor, x, patch, depth)
        else:
            theirs = hf_forward(vendor, x, patch, depth, layout, swiglu)
    assert ours.shape == theirs.shape == (2, preset.prefix_tokens + 4, fake.TWIN["embed_dim"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_detection_and_wrapper_prefixes(tmp_path: Path) -> None:
    preset = ENCODER_PRESETS["phikon_v2"]
    vit = fake.timm_twin(preset, 32)
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    hf = fake.to_vendor(sd, "hf_dinov2", no_embed_class=False)
    assert detect_layout(sd) == "timm" and detect_layout(hf) == "hf_dinov2"
    plain = {k: v.detach() for k, v in fake.timm_twin(ENCODER_PRESETS["vit_base"], 32).state_dict().items()}
    assert detect_layout(fake.to_vendor(plain, "hf_vit", no_embed_class=False)) == "hf_vit"
    assert detect_layout(fake.to_vendor(sd, "meta_dinov2", no_embed_class=False)) == "meta_dinov2"
    # a transformers task model: the backbone under "dinov2.", a classifier outside it
    task = {**{f"dinov2.{k}": v for k, v in hf.items()}, "classifier.weight": torch.zeros(2, 64)}
    path = fake.save(task, tmp_path / "task.safetensors")
    enc = ViTEncoder("phikon_v2", img_size=32, model_kwargs=dict(fake.TWIN), checkpoint_path=str(path))
    assert enc.load_report is not None and enc.load_report.ignored == 2  # classifier + mask token
    torch.testing.assert_close(enc.vit.blocks[1].attn.qkv.bias.detach(), sd["blocks.1.attn.qkv.bias"])


def test_meta_block_chunks_and_swiglu_names() -> None:
    preset = ENCODER_PRESETS["gigapath"]  # SwiGLU; the facebookresearch layout names its halves w12 / w3
    vit = fake.timm_twin(preset, 32)
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    meta = fake.to_vendor(sd, "meta_dinov2", no_embed_class=False, swiglu=True)
    assert "blocks.1.mlp.w12.weight" in meta
    chunked = {(f"blocks.0.{k[7:]}" if k.startswith("blocks.") else k): v for k, v in meta.items()}  # 1 chunk
    for variant in (meta, chunked):
        converted = to_timm(variant, "meta_dinov2", vit)
        assert converted.ignored == ["mask_token"] and sorted(converted.state) == sorted(sd)


def test_incomplete_attention_projections_are_named(tmp_path: Path) -> None:
    preset = ENCODER_PRESETS["phikon_v2"]
    vit = fake.timm_twin(preset, 32)
    hf = fake.to_vendor({k: v.detach() for k, v in vit.state_dict().items()}, "hf_dinov2", no_embed_class=False)
    del hf["encoder.layer.1.attention.attention.key.weight"]
    path = fake.save(hf, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        ViTEncoder("phikon_v2", img_size=32, model_kwargs=dict(fake.TWIN), checkpoint_path=str(path))
    msg = str(err.value)
    assert "missing in file: blocks.1.attn.qkv.weight" in msg and "file layout: hf_dinov2" in msg
    assert "encoder.layer.1.attention.attention.query.weight" in msg  # the unpaired halves, under their own names
