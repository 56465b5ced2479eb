"""Encoder presets without the real weights: architectures on ``meta``, vendor-layout files of tiny twins.

For every preset: the full-size architecture (built on the ``meta`` device, no memory) has the width,
depth, token layout and size its vendor states; every key and shape of the vendor's layout maps onto
it; a tiny twin's file in the vendor's own layout loads value for value, and one renamed key or one
changed shape is rejected naming the file, the preset and the key; the token layout (class and
register tokens) reaches the heads as it should.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from conftest import load_fake

from mammopath.errors import CheckpointError, ConfigError
from mammopath.models.encoders import ViTEncoder
from mammopath.models.layouts import detect_layout, to_timm
from mammopath.models.module import MammoPathModule
from mammopath.models.presets import ENCODER_PRESETS, IMAGENET, EncoderPreset

fake = load_fake("encoders")
NAMES = sorted(ENCODER_PRESETS)

# What the vendors state (model cards, the vendors' loading code): token width, blocks, patch, registers, and
# parameter counts where published (UNI 303.4M; Virchow2 632M; Prov-GigaPath and H-optimus-0 1.1B; ViT-B 86M).
CARDS: dict[str, tuple[int, int, int, int, float | None]] = {
    "uni": (1024, 24, 16, 0, 303.4e6),
    "uni2": (1536, 24, 14, 8, None),
    "phikon_v2": (1024, 24, 16, 0, None),
    "virchow2": (1280, 32, 14, 4, 632e6),
    "gigapath": (1536, 40, 16, 0, 1.13e9),
    "h_optimus_0": (1536, 40, 14, 4, 1.13e9),
    "mama": (768, 12, 14, 4, 86.6e6),
    "vit_small": (384, 12, 16, 0, 22e6),
    "vit_base": (768, 12, 16, 0, 86e6),
    "vit_large": (1024, 24, 16, 0, 304e6),
}


def _meta_model(preset: EncoderPreset):
    with torch.device("meta"):
        return timm.create_model(
            preset.timm_name, pretrained=False, num_classes=0, img_size=preset.img_size, **preset.model_kwargs
        )


def _file(preset: EncoderPreset, tmp_path: Path, **kwargs) -> tuple[Path, dict[str, torch.Tensor], int]:
    return fake.write_weights(preset, tmp_path / preset.name / preset.files[0], **kwargs)


def _encoder(preset: EncoderPreset, path: Path | None = None, **kwargs) -> ViTEncoder:
    args = {"img_size": fake.twin_size(preset), "model_kwargs": dict(fake.TWIN), "adapter": "adaptformer"}
    return ViTEncoder(preset.name, checkpoint_path=None if path is None else str(path), **{**args, **kwargs}).eval()


def test_every_preset_is_complete() -> None:
    assert set(CARDS) == set(ENCODER_PRESETS)
    for name, p in ENCODER_PRESETS.items():
        assert p.name == name and p.files and p.layouts and p.source.startswith("https://")
        assert p.licence and p.obtain and set(p.normalization_modalities) <= {"mammo", "patho"}
        assert len(p.normalization["mean"]) == len(p.normalization["std"]) == 3


@pytest.mark.parametrize("name", NAMES)
def test_full_size_architecture_matches_the_vendor(name: str) -> None:
    preset = ENCODER_PRESETS[name]
    vit = _meta_model(preset)
    width, depth, patch, registers, params = CARDS[name]
    assert (vit.embed_dim, len(vit.blocks), vit.patch_embed.patch_size[0]) == (width, depth, patch)
    assert vit.num_reg_tokens == registers == preset.register_tokens
    assert vit.num_prefix_tokens == preset.prefix_tokens == 1 + registers and preset.embed_dim == width
    assert next(vit.parameters()).is_meta
    if params is not None:
        assert sum(p.numel() for p in vit.parameters()) == pytest.approx(params, rel=0.02)
    if "init_values" in preset.model_kwargs:  # layer scale exists, so the vendors' gamma/lambda1 keys have a place
        assert "blocks.0.ls1.gamma" in vit.state_dict()


@pytest.mark.parametrize("name", NAMES)
def test_vendor_layout_maps_every_key_and_shape_at_full_size(name: str) -> None:
    preset = ENCODER_PRESETS[name]
    vit = _meta_model(preset)
    sd = vit.state_dict()
    for layout in preset.layouts:
        vendor, _ = fake.vendor_file(preset, vit, sd, layout)
        keys = vendor["state_dict"] if preset.key_prefix else vendor
        inner = {k.removeprefix(preset.key_prefix): v for k, v in keys.items() if k.startswith(preset.key_prefix)}
        assert detect_layout(inner) == layout
        mapped = to_timm(inner, layout, vit).state
        assert sorted(mapped) == sorted(sd), layout
        assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("name", NAMES)
def test_vendor_file_of_a_twin_loads_value_for_value(name: str, tmp_path: Path) -> None:
    preset = ENCODER_PRESETS[name]
    path, reference, dropped = _file(preset, tmp_path, img_size=fake.twin_size(preset))
    enc = _encoder(preset, path)
    loaded = {k: v for k, v in enc.vit.state_dict().items() if ".adapters." not in k}
    assert sorted(loaded) == sorted(reference)
    for key, value in reference.items():
        torch.testing.assert_close(loaded[key], value, atol=1e-6, rtol=0, msg=key)
    report = enc.load_report
    assert report is not None and report.path == str(path) and f"preset '{name}'" in report.target
    assert (report.layout, report.matched, report.unexpected) == (fake.vendor_layout(preset), len(reference), 0)
    assert report.missing == len(enc.vit.state_dict()) - len(reference) > 0  # the adapters, kept at init
    assert report.ignored == dropped


@pytest.mark.parametrize("name", NAMES)
def test_position_embeddings_of_the_vendor_grid_are_resampled(name: str, tmp_path: Path) -> None:
    preset = ENCODER_PRESETS[name]
    path, reference, _ = _file(preset, tmp_path)  # at the vendor's own image size
    enc = _encoder(preset, path)
    grid = preset.img_size // (fake.twin_size(preset) // 2)
    assert enc.load_report is not None and f"resampled from {grid}x{grid} to 2x2" in " ".join(enc.load_report.notes)
    torch.testing.assert_close(enc.vit.cls_token.detach(), reference["cls_token"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mutation", ["renamed", "reshaped"])
@pytest.mark.parametrize("name", NAMES)
def test_one_renamed_key_or_changed_shape_is_rejected(name: str, mutation: str, tmp_path: Path) -> None:
    preset = ENCODER_PRESETS[name]
    vit = fake.timm_twin(preset, fake.twin_size(preset))
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    obj, _ = fake.vendor_file(preset, vit, sd)
    state = obj["state_dict"] if preset.key_prefix else obj
    victim = next(k for k in state if "norm" in k and k.endswith("weight") and ("1." in k or "layer.1" in k))
    if mutation == "renamed":
        state[victim + "_renamed"] = state.pop(victim)
    else:
        state[victim] = state[victim][:-1]
    path = fake.save(obj, tmp_path / preset.files[0])
    with pytest.raises(CheckpointError) as err:
        _encoder(preset, path)
    msg = str(err.value)
    assert str(path) in msg and f"preset '{name}'" in msg and preset.source in msg
    if mutation == "renamed":
        renamed = victim.removeprefix(preset.key_prefix) + "_renamed"
        assert "1 missing, 1 unexpected, 0 shape mismatches" in msg and f"unexpected in file: {renamed}" in msg
    else:
        assert "0 missing, 0 unexpected, 1 shape mismatches" in msg and "file (31,) vs model (32,)" in msg


def test_a_file_for_another_preset_is_rejected(tmp_path: Path) -> None:
    uni = ENCODER_PRESETS["uni"]
    path, _, _ = _file(uni, tmp_path, img_size=32, model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2})
    with pytest.raises(CheckpointError) as err:
        _encoder(ENCODER_PRESETS["uni2"], path)  # UNI2-h twin: patch 14, 8 registers, SwiGLU
    msg = str(err.value)
    assert str(path) in msg and "preset 'uni2'" in msg and "another model" in msg
    assert "missing in file: reg_token" in msg and "patch_embed.proj.weight file (48, 3, 16, 16)" in msg


def test_truncated_missing_and_folder_files(tmp_path: Path) -> None:
    preset = ENCODER_PRESETS["phikon_v2"]
    path, reference, _ = _file(preset, tmp_path, img_size=32)
    cut = tmp_path / "cut" / "model.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{cut}: cannot read weights for preset 'phikon_v2'.*truncated"):
        _encoder(preset, cut)
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(CheckpointError) as err:
        _encoder(preset, missing)
    msg = str(err.value)
    assert f"{missing}: file not found" in msg and "weights/phikon_v2/model.safetensors" in msg
    assert "https://huggingface.co/owkin/phikon-v2" in msg and "never downloaded" in msg
    enc = _encoder(preset, path.parent)  # a Hugging Face snapshot folder
    assert enc.load_report is not None and enc.load_report.path == str(path)
    torch.testing.assert_close(enc.vit.norm.weight.detach(), reference["norm.weight"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="sharded checkpoints"):
        _encoder(preset, tmp_path / "empty")


def test_a_timm_layout_file_of_the_same_architecture_is_accepted(tmp_path: Path) -> None:
    preset = ENCODER_PRESETS["phikon_v2"]  # the vendor ships transformers keys; timm keys load as well
    path, reference, _ = _file(preset, tmp_path, img_size=32, layout="timm")
    enc = _encoder(preset, path)
    assert enc.load_report is not None and enc.load_report.layout == "timm"
    torch.testing.assert_close(enc.vit.blocks[1].attn.qkv.weight.detach(), reference["blocks.1.attn.qkv.weight"])


@pytest.mark.parametrize("name", NAMES)
def test_token_layout_reaches_the_heads(name: str) -> None:
    preset = ENCODER_PRESETS[name]
    side = fake.twin_size(preset)
    module = MammoPathModule(
        backbone=name, img_size=[side, side + side // 2], model_kwargs=dict(fake.TWIN), freeze="full"
    ).eval()
    enc = module.encoder
    patch = side // 2
    x = torch.rand(2, 3, side, side + patch)  # a 2x3 grid
    with torch.no_grad():
        out = module(x, "patho")
        with enc.use_modality("patho"):
            t = enc.vit.forward_features(module.normalize(x, "patho"))
    assert t.shape[1] == preset.prefix_tokens + 6  # class + registers + patches, in that order
    patches = t[:, preset.prefix_tokens :]
    torch.testing.assert_close(out["tokens"], patches)
    expected = torch.cat([t[:, 0], patches.mean(1)], -1) if preset.pooling == "cls_mean" else t[:, 0]
    torch.testing.assert_close(out["features"], expected)
    width = fake.TWIN["embed_dim"] * (2 if preset.pooling == "cls_mean" else 1)
    assert out["features"].shape == (2, width) and enc.feature_dim == width
    assert out["grid"].tolist() == [2, 3] and out["loc_patch_logits"].shape[-2:] == (2, 3)
    torch.testing.assert_close(out["cls_logit"], module.classifier(expected)["logit"])


def test_alignment_projects_the_patch_tokens_whatever_the_pooling() -> None:
    side = fake.twin_size(ENCODER_PRESETS["virchow2"])
    module = MammoPathModule(backbone="virchow2", img_size=side, model_kwargs=dict(fake.TWIN), alignment=True)
    with torch.no_grad():
        out = module(torch.rand(2, 1, side, side), "mammo")
    assert out["features"].shape == (2, 2 * fake.TWIN["embed_dim"]) and out["embedding"].shape == (2, 128)


@pytest.mark.parametrize("name", NAMES)
def test_both_modalities_share_the_encoder_with_their_own_adapters(name: str) -> None:
    preset = ENCODER_PRESETS[name]
    side = fake.twin_size(preset)
    enc = _encoder(preset)
    twin = _encoder(preset, grayscale="replicate")
    twin.load_state_dict(enc.state_dict())
    gray = torch.rand(2, 1, side, side)
    with torch.no_grad():
        before = {m: enc(gray, m)["features"] for m in ("mammo", "patho")}
        for p in enc.adapter_parameters("mammo"):
            p.add_(torch.randn_like(p) * 0.5)
        after = {m: enc(gray, m)["features"] for m in ("mammo", "patho")}
        for p, q in zip(enc.adapter_parameters("mammo"), twin.adapter_parameters("mammo"), strict=True):
            q.copy_(p)
        replicated = twin(gray, "mammo")["features"]
    torch.testing.assert_close(after["patho"], before["patho"], atol=0, rtol=0)
    assert (after["mammo"] - before["mammo"]).abs().max() > 1e-4
    torch.testing.assert_close(replicated, after["mammo"], atol=1e-5, rtol=1e-5)  # grayscale sum == replicate


def test_preset_normalization_wins_for_its_modalities(caplog: pytest.LogCaptureFixture) -> None:
    data = {"mammo": {"mean": [0.5], "std": [0.25]}, "patho": dict(IMAGENET)}
    kwargs = {"img_size": 28, "model_kwargs": dict(fake.TWIN)}
    with caplog.at_level(logging.INFO, logger="mammopath.models.module"):
        module = MammoPathModule(backbone="h_optimus_0", normalization=data, **kwargs)
    h0 = ENCODER_PRESETS["h_optimus_0"].normalization
    assert module.norm_mean_patho.flatten().tolist() == pytest.approx(h0["mean"])
    assert module.norm_std_patho.flatten().tolist() == pytest.approx(h0["std"])
    assert module.norm_mean_mammo.flatten().tolist() == pytest.approx([0.5])  # not a pathology statistic
    assert (
        "preset 'h_optimus_0' was trained with mean [0.707223" in caplog.text and "preset_normalization" in caplog.text
    )

    kept = MammoPathModule(backbone="h_optimus_0", normalization=data, preset_normalization=False, **kwargs)
    assert kept.norm_mean_patho.flatten().tolist() == pytest.approx(IMAGENET["mean"])
    mama = MammoPathModule(backbone="mama", normalization=data, **kwargs)
    assert mama.norm_std_mammo.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert mama.norm_mean_patho.flatten().tolist() == pytest.approx(IMAGENET["mean"])
    vit = MammoPathModule(backbone="vit_small", normalization=None, img_size=32, model_kwargs=dict(fake.TWIN))
    assert vit.norm_mean_mammo.flatten().tolist() == vit.norm_mean_patho.flatten().tolist() == [0.5] * 3
    plain = MammoPathModule(backbone="vit_tiny_patch16_224", normalization=data, img_size=32, model_kwargs=fake.TWIN)
    assert plain.norm_mean_patho.flatten().tolist() == pytest.approx(IMAGENET["mean"])


def test_preset_normalization_travels_in_the_checkpoint(tmp_path: Path) -> None:
    kwargs = {"img_size": 28, "model_kwargs": dict(fake.TWIN)}
    trained = MammoPathModule(backbone="h_optimus_0", **kwargs)
    ckpt = tmp_path / "trained.ckpt"
    state = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    torch.save({**state, "pytorch-lightning_version": L.__version__}, ckpt)
    other = {"patho": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.4, 0.4]}}  # what a predict config's data would link
    fresh = MammoPathModule.load_from_checkpoint(ckpt, normalization=other, preset_normalization=False)
    h0 = ENCODER_PRESETS["h_optimus_0"].normalization
    assert fresh.norm_mean_patho.flatten().tolist() == pytest.approx(h0["mean"])
    images = torch.rand(2, 3, 28, 28)
    expected = (images - torch.tensor(h0["mean"]).view(1, 3, 1, 1)) / torch.tensor(h0["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(fresh.normalize(images, "patho"), expected)


def test_pooling_and_unknown_presets() -> None:
    with pytest.raises(ConfigError, match="pooling must be one of"):
        _encoder(ENCODER_PRESETS["uni"], pooling="max")
    with pytest.raises(ConfigError, match="needs a class token"):
        ViTEncoder(
            "vit_tiny_patch16_224",
            img_size=32,
            pooling="cls_mean",
            model_kwargs={"class_token": False, "global_pool": "avg"},
        )
    with pytest.raises(ConfigError, match=r"cannot build preset 'uni2' \(timm 'vit_giant_patch14_224'\)"):
        _encoder(ENCODER_PRESETS["uni2"], model_kwargs={"embed_dim": 30, "num_heads": 4, "depth": 1})
    assert _encoder(ENCODER_PRESETS["virchow2"], pooling="token").feature_dim == fake.TWIN["embed_dim"]
