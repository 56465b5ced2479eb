"""Activation checkpointing and torch.compile of the encoder: the same numbers as the plain model, less memory."""

from __future__ import annotations

import pytest
import torch

from mammopath.errors import ConfigError
from mammopath.models.encoders import ViTEncoder
from mammopath.models.scaling import CheckpointedBlocks

TINY = {"patch_size": 8, "depth": 3, "embed_dim": 48, "num_heads": 3}


def encoder(adapter: str = "adaptformer", **kwargs) -> ViTEncoder:
    torch.manual_seed(0)
    enc = ViTEncoder("vit_tiny_patch16_224", img_size=32, model_kwargs=TINY, adapter=adapter, freeze="full", **kwargs)
    for p in enc.adapter_parameters():  # adapters start at zero: make them matter
        torch.nn.init.normal_(p, std=0.05)
    return enc


def two_modality_grads(enc: ViTEncoder) -> dict[str, torch.Tensor]:
    """Gradients of one step that, like training, runs mammo then patho forward and then one backward."""
    torch.manual_seed(1)
    mammo, patho = torch.rand(3, 1, 32, 32), torch.rand(3, 3, 32, 32)
    enc.zero_grad()
    loss = enc(mammo, "mammo")["tokens"].square().mean() + enc(patho, "patho")["features"].sin().sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("adapter", ["adaptformer", "houlsby", "lora", "none"])
def test_checkpointed_blocks_give_the_same_gradients(adapter: str) -> None:
    plain, ckpt = encoder(adapter), encoder(adapter, grad_checkpointing=True)
    assert isinstance(ckpt.vit.blocks, CheckpointedBlocks) and not ckpt.vit.grad_checkpointing
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # names and checkpoints unchanged
    a, b = two_modality_grads(plain), two_modality_grads(ckpt)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    if adapter != "none":  # each modality's adapters got their own, non-zero gradient
        assert any(n for n in a if ".mammo." in n and a[n].abs().sum() > 0)
        assert any(n for n in a if ".patho." in n and a[n].abs().sum() > 0)


@pytest.mark.parametrize("adapter", ["adaptformer", "none"])
def test_block_hooks_see_the_modality_while_recomputing(adapter: str) -> None:
    """A block hook that reads ``encoder.active_modality`` (MixStyle, the style bank) acts the same in the
    recomputation as in the forward, so checkpointing does not silently change the gradients."""
    grads, seen = [], []
    for enable in (False, True):
        enc = encoder(adapter, grad_checkpointing=enable)

        def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor, enc: ViTEncoder = enc) -> torch.Tensor:
            seen.append(enc.active_modality)
            scale = {"mammo": 2.0, "patho": 0.5}.get(enc.active_modality or "", 0.0)
            noise = torch.randn_like(output) * 0.1  # replayed with checkpoint's saved RNG state
            return output * scale + output.square() * noise  # square saves its input: the recompute runs the hook

        enc.blocks[0].register_forward_hook(hook)
        grads.append(two_modality_grads(enc))
    assert None not in seen and len(seen) > 4  # plain: 2 forwards; checkpointed: 2 forwards + the recomputes
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_keeps_fewer_activations() -> None:
    counts = []
    for enable in (False, True):
        enc = encoder(grad_checkpointing=enable)
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = enc(torch.rand(4, 3, 32, 32), "patho")["tokens"].sum()
        out.backward()
        counts.append(sum(saved))
    assert counts[1] < counts[0] / 2, counts


def test_timms_own_switch_would_lose_the_adapter_routing() -> None:
    # why mammopath does not call vit.set_grad_checkpointing(): the recomputation runs outside use_modality
    enc = encoder()
    enc.vit.set_grad_checkpointing(True)
    loss = enc(torch.rand(2, 3, 32, 32), "patho")["features"].sum()
    with pytest.raises(ConfigError, match="no active modality"):
        loss.backward()
    enc.set_grad_checkpointing(True)  # ours switches timm's off
    assert not enc.vit.grad_checkpointing
    enc(torch.rand(2, 3, 32, 32), "patho")["features"].sum().backward()


def test_compiled_encoder_equals_eager_and_survives_copies() -> None:
    import copy
    import pickle

    eager = encoder()
    fast = encoder(compile={"backend": "aot_eager", "dynamic": False})
    x = torch.rand(2, 3, 32, 32)
    for modality in ("mammo", "patho", "mammo"):  # one graph per modality (the routing is guarded)
        torch.testing.assert_close(fast(x, modality)["tokens"], eager(x, modality)["tokens"])
    a, b = two_modality_grads(eager), two_modality_grads(fast)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    assert list(fast.state_dict()) == list(eager.state_dict())
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):  # ddp_spawn pickles the model
        torch.testing.assert_close(clone(x, "patho")["tokens"], eager(x, "patho")["tokens"])


@pytest.mark.slow
def test_inductor_compile_on_cpu() -> None:
    # the default backend generates C++ on CPU: needs a compiler, minutes on 2 cores
    eager, fast = encoder(), encoder(compile=True)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(fast(x, "patho")["tokens"], eager(x, "patho")["tokens"], atol=1e-5, rtol=1e-4)
