"""ViTEncoder: equivalence with plain timm, routing, freezing, grayscale, checkpoints, input sizes."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from mammopath.errors import CheckpointError, ConfigError
from mammopath.models.encoders import ViTEncoder

NAME = "vit_tiny_patch16_224"
C = 64
TINY = {"depth": 2, "embed_dim": C, "num_heads": 2}  # a 2-block, 32-px, 64-wide ViT


def _plain(img_size=32, seed=0, **kw):
    torch.manual_seed(seed)
    args = {"pretrained": False, "num_classes": 0, "img_size": img_size, **TINY, **kw}
    return timm.create_model(NAME, **args).eval()


def _encoder(**kw) -> ViTEncoder:
    args = {"name": NAME, "img_size": 32, "model_kwargs": dict(TINY)}
    args.update(kw)
    return ViTEncoder(**args).eval()


def _pooled(vit, x):
    with torch.no_grad():
        return vit.forward_head(vit.forward_features(x), pre_logits=True)


def _backbone_sd(enc: ViTEncoder) -> dict[str, torch.Tensor]:
    return {k: v for k, v in enc.vit.state_dict().items() if ".adapters." not in k and ".lora." not in k}


def _perturb(params, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kind", ["adaptformer", "lora", "none"])
def test_zero_init_adapters_equal_plain_timm(kind):
    enc = _encoder(adapter=kind)
    plain = _plain()
    plain.load_state_dict(_backbone_sd(enc))  # strict: backbone keys are timm's keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x, "mammo")
        feats = plain.forward_features(x)
    assert out["features"].shape == (2, C) and out["tokens"].shape == (2, 4, C)
    assert out["grid"].tolist() == [2, 2]
    torch.testing.assert_close(out["features"], _pooled(plain, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["features"], feats[:, 0], atol=1e-6, rtol=0)  # CLS after final norm
    torch.testing.assert_close(out["tokens"], feats[:, 1:], atol=1e-6, rtol=0)


def test_houlsby_starts_close_to_plain_timm():
    enc = _encoder(adapter="houlsby")
    plain = _plain()
    plain.load_state_dict(_backbone_sd(enc))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (enc(x, "patho")["features"] - _pooled(plain, x)).abs().max()
    assert 0 < diff < 5e-2


@pytest.mark.parametrize("kind", ["adaptformer", "houlsby", "lora"])
def test_routing_by_modality(kind):
    enc = _encoder(adapter=kind)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = {m: enc(x, m)["features"] for m in ("mammo", "patho")}
        _perturb(enc.adapter_parameters("mammo"))
        after = {m: enc(x, m)["features"] for m in ("mammo", "patho")}
    torch.testing.assert_close(after["patho"], before["patho"], atol=0, rtol=0)
    assert (after["mammo"] - before["mammo"]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="unknown modality 'ct'"):
        enc(x, "ct")


def test_gradients_reach_only_the_active_modality_adapters():
    enc = _encoder()
    enc(torch.randn(2, 3, 32, 32), "mammo")["features"].pow(2).sum().backward()
    mammo_up = enc.adapters["mammo"][0].up.weight
    assert mammo_up.grad is not None and mammo_up.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.adapter_parameters("patho"))
    assert all(p.grad is None for p in enc.vit.patch_embed.parameters())


def test_freeze_policies():
    enc = _encoder(freeze="adapters")
    adapter_ids = {id(p) for p in enc.adapter_parameters()}
    for name, p in enc.vit.named_parameters():
        assert p.requires_grad == (id(p) in adapter_ids), name
    assert not enc.vit.norm.weight.requires_grad

    enc = _encoder(freeze="last_k", trainable_blocks=1)
    assert all(p.requires_grad for p in enc.blocks[1].parameters())
    assert all(p.requires_grad == (id(p) in adapter_ids_of(enc)) for p in enc.blocks[0].parameters())
    assert enc.vit.norm.weight.requires_grad and enc.vit.norm.bias.requires_grad
    assert not enc.vit.pos_embed.requires_grad and not enc.vit.patch_embed.proj.weight.requires_grad
    assert not enc.vit.cls_token.requires_grad

    enc = _encoder(freeze="full")
    assert all(p.requires_grad for p in enc.parameters())
    assert enc.trainable_fraction() == 1.0

    with pytest.raises(ConfigError, match=r"trainable_blocks must be in \[0, 2\]"):
        _encoder(freeze="last_k", trainable_blocks=3)
    with pytest.raises(ConfigError, match="only applies to freeze='last_k'"):
        _encoder(freeze="adapters", trainable_blocks=1)


def adapter_ids_of(enc: ViTEncoder) -> set[int]:
    return {id(p) for p in enc.adapter_parameters()}


def test_parameter_table_and_fraction():
    enc = _encoder(adapter="adaptformer", adapter_kwargs={"bottleneck": 8})
    table = dict((c, (tot, tr)) for c, tot, tr in enc.parameter_table())
    per_mod = 2 * (2 * C * 8 + 8 + C)  # 2 blocks x (down + up weights, both biases)
    assert table["adapters/mammo"] == (per_mod, per_mod) and table["adapters/patho"] == (per_mod, per_mod)
    n_backbone = sum(p.numel() for p in _plain().parameters())
    assert table["backbone"] == (n_backbone, 0)
    assert enc.trainable_fraction() == pytest.approx(2 * per_mod / (n_backbone + 2 * per_mod))


def test_vit_base_two_adaptformer_sets_are_lightweight():
    enc = ViTEncoder("vit_base_patch16_224", img_size=224, adapter="adaptformer", adapter_kwargs={"bottleneck": 64})
    rows = {c: (tot, tr) for c, tot, tr in enc.parameter_table()}
    per_mod = 12 * (2 * 768 * 64 + 64 + 768)
    assert rows["adapters/mammo"] == (per_mod, per_mod) and rows["adapters/patho"] == (per_mod, per_mod)
    assert rows["backbone"][1] == 0
    assert 0.02 < enc.trainable_fraction() <= 0.03


def test_grayscale_sum_equals_replicate_equals_rgb_copy():
    gray = torch.rand(2, 1, 32, 32)
    enc = _encoder(grayscale="sum")
    _perturb(enc.adapter_parameters())  # non-trivial adapters too
    twin = _encoder(grayscale="replicate")
    twin.load_state_dict(enc.state_dict())
    with torch.no_grad():
        outs = {"sum": enc(gray, "mammo"), "replicate": twin(gray, "mammo")}
        rgb = enc(gray.repeat(1, 3, 1, 1), "mammo")
    torch.testing.assert_close(outs["sum"]["features"], outs["replicate"]["features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["sum"]["tokens"], outs["replicate"]["tokens"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["sum"]["features"], rgb["features"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="input has 2 channels"):
        enc(torch.rand(1, 2, 32, 32), "mammo")


def test_grayscale_sum_backpropagates_to_patch_kernel():
    enc = _encoder(freeze="full")
    enc(torch.rand(1, 1, 32, 32), "mammo")["features"].pow(2).sum().backward()
    g = enc.vit.patch_embed.proj.weight.grad
    assert g is not None and g.abs().sum() > 0
    torch.testing.assert_close(g[:, 0], g[:, 1])  # every RGB channel gets the gradient of the summed kernel


def test_dynamic_img_size_non_square_matches_static_resampled_model(tmp_path):
    plain = _plain()
    ckpt = tmp_path / "tiny.pth"
    torch.save(plain.state_dict(), ckpt)
    x = torch.randn(2, 3, 32, 48)
    dyn = _encoder(checkpoint_path=str(ckpt), dynamic_img_size=True)
    static = _encoder(checkpoint_path=str(ckpt), img_size=(32, 48))
    with torch.no_grad():
        a, b = dyn(x, "mammo"), static(x, "mammo")
    assert a["grid"].tolist() == [2, 3] and a["tokens"].shape == (2, 6, C)
    assert b["grid"].tolist() == [2, 3]
    torch.testing.assert_close(a["features"], b["features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["tokens"], b["tokens"], atol=1e-5, rtol=1e-5)


def test_models_without_class_token_and_with_registers():
    enc = _encoder(model_kwargs={**TINY, "class_token": False, "global_pool": "avg"})
    plain = _plain(class_token=False, global_pool="avg")
    plain.load_state_dict(_backbone_sd(enc))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x, "patho")
    assert enc.num_prefix_tokens == 0 and out["tokens"].shape == (2, 4, C)
    torch.testing.assert_close(out["features"], _pooled(plain, x), atol=1e-6, rtol=0)
    feats = plain.forward_features(x)  # norm is the identity for fc_norm models; tokens get fc_norm
    torch.testing.assert_close(out["tokens"], plain.fc_norm(feats), atol=1e-6, rtol=0)

    enc = _encoder(model_kwargs={**TINY, "reg_tokens": 2})
    out = enc(x, "mammo")
    assert enc.num_prefix_tokens == 3 and out["tokens"].shape == (2, 4, C)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_checkpoint_round_trip(tmp_path, fmt):
    plain = _plain(seed=7, num_classes=5)  # with a classifier head the loader must drop
    sd = {k: v.contiguous() for k, v in plain.state_dict().items()}
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    enc = _encoder(checkpoint_path=str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, "mammo")["features"], _pooled(plain, x), atol=1e-6, rtol=0)


def test_checkpoint_nested_and_prefixed(tmp_path):
    plain = _plain(seed=5)
    lightning_like = {
        "epoch": 3,
        "state_dict": {
            **{f"model.encoder.vit.{k}": v for k, v in plain.state_dict().items()},
            "model.cls_head.fc.weight": torch.zeros(1, C),
        },
    }
    path = tmp_path / "last.ckpt"
    torch.save(lightning_like, path)
    enc = _encoder(checkpoint_path=str(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, "patho")["features"], _pooled(plain, x), atol=1e-6, rtol=0)


def test_checkpoint_of_trained_encoder_restores_adapters(tmp_path):
    enc = _encoder(adapter="lora")
    _perturb(enc.parameters())
    path = tmp_path / "encoder.pt"
    torch.save(enc.state_dict(), path)  # keys "vit.blocks.0.attn.qkv.lora.mammo.lora_A", ...
    again = _encoder(adapter="lora", checkpoint_path=str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for m in ("mammo", "patho"):
            torch.testing.assert_close(again(x, m)["features"], enc(x, m)["features"], atol=0, rtol=0)


def test_checkpoint_pos_embed_resampled_and_channels_summed(tmp_path):
    plain = _plain()
    path = tmp_path / "w.pth"
    torch.save(plain.state_dict(), path)
    enc = _encoder(checkpoint_path=str(path), img_size=48, in_chans=1)
    expected_pos = resample_abs_pos_embed(plain.pos_embed.detach(), new_size=[3, 3], old_size=[2, 2])
    torch.testing.assert_close(enc.vit.pos_embed.detach(), expected_pos)
    torch.testing.assert_close(
        enc.vit.patch_embed.proj.weight.detach(), plain.patch_embed.proj.weight.detach().sum(1, keepdim=True)
    )
    out = enc(torch.rand(1, 1, 48, 48), "mammo")
    assert out["grid"].tolist() == [3, 3]


def test_checkpoint_errors_name_file_and_keys(tmp_path):
    missing_path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"{missing_path}: file not found"):
        _encoder(checkpoint_path=str(missing_path))

    sd = _plain().state_dict()
    sd["blocks.0.attn.qkv_renamed.weight"] = sd.pop("blocks.0.attn.qkv.weight")
    sd["norm.weight"] = torch.ones(100)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as err:
        _encoder(checkpoint_path=str(bad))
    msg = str(err.value)
    assert str(bad) in msg and "1 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "missing in file: blocks.0.attn.qkv.weight" in msg
    assert "unexpected in file: blocks.0.attn.qkv_renamed.weight" in msg
    assert "norm.weight file (100,) vs model (64,)" in msg

    # a deeper model: 12 keys of block 2 missing, the first ten listed
    good = tmp_path / "w.pth"
    torch.save(_plain().state_dict(), good)
    with pytest.raises(CheckpointError, match=r"(?s)12 missing.*blocks\.2\.mlp\.fc1\.bias, \.\.\. \(\+2 more\)"):
        _encoder(model_kwargs={**TINY, "depth": 3}, checkpoint_path=str(good))

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=f"{junk}: cannot read weights"):
        _encoder(checkpoint_path=str(junk))


def test_deepcopy_keeps_adapter_view_on_the_copy():
    enc = _encoder()
    twin = copy.deepcopy(enc)
    assert twin.adapters["mammo"][0] is twin.blocks[0].adapters["mammo"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = enc(x, "mammo")["features"]
        _perturb(twin.adapter_parameters("mammo"))
        assert (twin(x, "mammo")["features"] - ref).abs().max() > 1e-3
        torch.testing.assert_close(enc(x, "mammo")["features"], ref, atol=0, rtol=0)


def test_use_modality_for_direct_vit_calls():
    enc = _encoder()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="no active modality"):
        enc.vit.forward_intermediates(x)
    with torch.no_grad(), enc.use_modality("patho"):
        inter = enc.vit.forward_intermediates(x, intermediates_only=True)
    assert len(inter) == 2 and inter[-1].shape == (1, C, 2, 2)


def test_bad_construction_arguments():
    with pytest.raises(ConfigError, match="grayscale"):
        _encoder(grayscale="mean")
    with pytest.raises(ConfigError, match="model_kwargs must not set"):
        _encoder(model_kwargs={"num_classes": 3})
    with pytest.raises(ConfigError, match="model.backbone 'not_a_model' is neither an encoder preset nor a timm model"):
        _encoder(name="not_a_model")


FAMILIES = {
    "class_token": {},
    "no_class_token": {"class_token": False, "global_pool": "avg"},
    "registers": {"reg_tokens": 4},
    "registers_no_class_token": {"reg_tokens": 2, "class_token": False, "global_pool": "avg"},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("channels", [3, 1])
def test_zero_init_encoder_equals_timm_forward_features_on_every_family(family: str, channels: int) -> None:
    extra = FAMILIES[family]
    enc = _encoder(model_kwargs={**TINY, **extra})
    plain = _plain(**extra)
    plain.load_state_dict(_backbone_sd(enc))
    x = torch.randn(2, channels, 32, 32)
    rgb = x.expand(-1, 3, -1, -1)  # a grayscale image is its 3-fold copy for an RGB backbone
    with torch.no_grad():
        out = enc(x, "mammo")
        feats = plain.forward_features(rgb)
        pooled = plain.forward_head(feats, pre_logits=True)
    prefix = plain.num_prefix_tokens
    assert enc.num_prefix_tokens == prefix and out["grid"].tolist() == [2, 2]
    torch.testing.assert_close(out["features"], pooled, atol=1e-5, rtol=1e-5)
    tokens = feats[:, prefix:]
    if extra.get("global_pool") == "avg":  # norm is the identity for fc_norm models: tokens get fc_norm
        tokens = plain.fc_norm(tokens)
    torch.testing.assert_close(out["tokens"], tokens, atol=1e-5, rtol=1e-5)


def test_encoder_uses_only_timm_public_methods() -> None:
    import inspect
    import re

    import mammopath.models.encoders as encoders

    private = re.findall(r"vit\._[a-z]\w*", inspect.getsource(encoders))
    assert not private, f"private timm methods used: {private}"
