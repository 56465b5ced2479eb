"""Adapters: initialisation, placement inside timm blocks, LoRA algebra and modality routing."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from mammopath.errors import ConfigError
from mammopath.models.adapters import (
    AdaptedBlock,
    AdaptFormerAdapter,
    HoulsbyAdapter,
    LoRAQKV,
    adapter_modalities,
    get_active_modality,
    inject_adapters,
    set_active_modality,
    use_modality,
)

DIM = 32


class _TinyViT(nn.Module):
    """The two attributes inject_adapters relies on, around real timm blocks."""

    def __init__(self, *blocks: Block) -> None:
        super().__init__()
        self.embed_dim = DIM
        self.blocks = nn.Sequential(*blocks)


def _block(**kw) -> Block:
    torch.manual_seed(0)
    return Block(dim=DIM, num_heads=2, qkv_bias=True, **kw).eval()


def _randomize(module: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_adaptformer_init_is_exact_zero_and_formula():
    a = AdaptFormerAdapter(DIM, bottleneck=8, scale=0.1)
    x = torch.randn(3, 5, DIM)
    assert torch.equal(a(x), torch.zeros_like(x))
    assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
    assert torch.count_nonzero(a.down.bias) == 0
    # kaiming-uniform(a=sqrt(5)) bound is 1/sqrt(fan_in)
    assert a.down.weight.abs().max() <= 1 / math.sqrt(DIM) + 1e-7
    assert a.down.weight.std() > 0.3 / math.sqrt(DIM)
    _randomize(a)
    expected = 0.1 * (torch.relu(x @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(a(x), expected)


def test_houlsby_init_is_near_identity_and_formula():
    a = HoulsbyAdapter(DIM, bottleneck=8)
    for lin in (a.down, a.up):
        assert lin.weight.abs().max() <= 2e-3
        assert 3e-4 < lin.weight.std() < 1.5e-3
        assert torch.count_nonzero(lin.bias) == 0
    h = torch.randn(4, DIM)
    assert (a(h) - h).abs().max() < 1e-4
    _randomize(a)
    expected = h + F.gelu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    torch.testing.assert_close(a(h), expected)


def test_lora_qkv_matches_merged_weight_on_q_and_v_only():
    base = nn.Linear(DIM, 3 * DIM)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    lora = LoRAQKV(base, ["mammo", "patho"], rank=4, alpha=8)
    assert lora.weight is base.weight and lora.bias is base.bias
    x = torch.randn(2, 7, DIM)
    set_active_modality(lora, "mammo")
    torch.testing.assert_close(lora(x), F.linear(x, w0, b0), rtol=0, atol=0)  # B = 0 at start
    _randomize(lora.lora["mammo"])
    upd = lora.lora["mammo"]
    delta = torch.zeros(3 * DIM, DIM)
    delta[:DIM] = (8 / 4) * upd.lora_B[0] @ upd.lora_A[0]  # q
    delta[2 * DIM :] = (8 / 4) * upd.lora_B[1] @ upd.lora_A[1]  # v
    torch.testing.assert_close(lora(x), F.linear(x, w0 + delta, b0), atol=1e-5, rtol=1e-5)
    # the other modality still sees the bare projection; k slice never changes
    set_active_modality(lora, "patho")
    torch.testing.assert_close(lora(x), F.linear(x, w0, b0), rtol=0, atol=0)
    assert set(lora.state_dict()) == {
        "weight",
        "bias",
        "lora.mammo.lora_A",
        "lora.mammo.lora_B",
        "lora.patho.lora_A",
        "lora.patho.lora_B",
    }


def test_lora_rejects_bad_targets_and_non_qkv():
    with pytest.raises(ConfigError, match="subset"):
        LoRAQKV(nn.Linear(DIM, 3 * DIM), ["m"], targets=("q", "x"))
    with pytest.raises(ConfigError, match="fused qkv"):
        LoRAQKV(nn.Linear(DIM, DIM), ["m"])


@pytest.mark.parametrize("init_values", [None, 0.5])
def test_adaptformer_placement_in_timm_block(init_values):
    orig = _block(init_values=init_values)
    reference = copy.deepcopy(orig)
    vit = _TinyViT(orig)
    view = inject_adapters(vit, ["mammo", "patho"], "adaptformer", bottleneck=8)
    blk = vit.blocks[0]
    assert isinstance(blk, AdaptedBlock) and blk.attn is orig.attn
    adapter = view["mammo"][0]
    _randomize(adapter)
    x = torch.randn(2, 5, DIM)
    with torch.no_grad(), use_modality(vit, "mammo"):
        out = vit.blocks(x)
        x_mid = x + reference.ls1(reference.attn(reference.norm1(x)))
        expected = reference(x) + adapter(x_mid)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    with torch.no_grad(), use_modality(vit, "patho"):  # patho adapters are still zero
        torch.testing.assert_close(vit.blocks(x), reference(x), atol=0, rtol=0)


def test_houlsby_placement_in_timm_block_with_layerscale():
    orig = _block(init_values=0.5)
    ref = copy.deepcopy(orig)
    vit = _TinyViT(orig)
    view = inject_adapters(vit, ["mammo"], "houlsby", bottleneck=8)
    pair = view["mammo"][0]
    _randomize(pair)
    x = torch.randn(2, 5, DIM)
    with torch.no_grad(), use_modality(vit, "mammo"):
        out = vit.blocks(x)
        x1 = x + ref.ls1(pair["attn"](ref.attn(ref.norm1(x))))
        expected = x1 + ref.ls2(pair["mlp"](ref.mlp(ref.norm2(x1))))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_drop_path_applies_to_block_branches_not_to_adaptformer():
    # drop_path=1 drops both residual branches in train mode; the parallel adapter is kept.
    vit = _TinyViT(_block(drop_path=1.0))
    view = inject_adapters(vit, ["mammo"], "adaptformer", bottleneck=8)
    _randomize(view["mammo"][0])
    vit.train()
    x = torch.randn(2, 5, DIM)
    with torch.no_grad(), use_modality(vit, "mammo"):
        torch.testing.assert_close(vit.blocks(x), x + view["mammo"][0](x))


def test_attention_stays_hookable_and_fused_attn_togglable():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=2).eval()
    inject_adapters(vit, ["mammo"], "adaptformer")
    x = torch.randn(1, 3, 32, 32)
    seen: list[torch.Size] = []
    handle = vit.blocks[1].attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad(), use_modality(vit, "mammo"):
        fused = vit.forward_features(x)
        assert seen == []  # fused attention never materialises probabilities
        for blk in vit.blocks:
            blk.attn.fused_attn = False
        explicit = vit.forward_features(x)
    handle.remove()
    assert seen == [torch.Size([1, 3, 5, 5])]  # (B, heads, 1 + 4 tokens, 1 + 4 tokens)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["adaptformer", "houlsby", "lora", "none"])
def test_backbone_state_dict_keys_unchanged(kind):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=2)
    before = set(vit.state_dict())
    view = inject_adapters(vit, ["mammo", "patho"], kind)
    after = set(vit.state_dict())
    adapter_keys = {k for k in after if ".adapters." in k or ".lora." in k}
    assert after - adapter_keys == before
    n_view = sum(p.numel() for p in view.parameters())
    n_keys = sum(vit.state_dict()[k].numel() for k in adapter_keys)
    assert n_view == n_keys and (n_view > 0) == (kind != "none")
    assert adapter_modalities(vit) == ([] if kind == "none" else ["mammo", "patho"])


def test_routing_errors_and_context_restore():
    vit = _TinyViT(_block(), _block())
    inject_adapters(vit, ["mammo", "patho"], "lora", rank=2)
    x = torch.randn(1, 3, DIM)
    with pytest.raises(ConfigError, match="no active modality"):
        vit.blocks(x)
    with pytest.raises(ConfigError, match="unknown modality 'ct'"):
        set_active_modality(vit, "ct")
    set_active_modality(vit, "patho")
    with use_modality(vit, "mammo"):
        assert get_active_modality(vit) == "mammo"
    assert get_active_modality(vit) == "patho"
    with pytest.raises(RuntimeError), use_modality(vit, "mammo"):
        raise RuntimeError("boom")
    assert get_active_modality(vit) == "patho"


def test_inject_rejects_bad_requests():
    with pytest.raises(ConfigError, match="unknown adapter kind"):
        inject_adapters(_TinyViT(_block()), ["m"], "prefix")
    with pytest.raises(ConfigError, match=r"unknown options \['rank'\]"):
        inject_adapters(_TinyViT(_block()), ["m"], "adaptformer", rank=4)
    with pytest.raises(ConfigError, match="identifiers"):
        inject_adapters(_TinyViT(_block()), ["mam.mo"], "adaptformer")
    vit = _TinyViT(_block())
    inject_adapters(vit, ["m"], "houlsby")
    with pytest.raises(ConfigError, match="already injected"):
        inject_adapters(vit, ["m"], "adaptformer")
