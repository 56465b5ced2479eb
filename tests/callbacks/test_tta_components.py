"""CausalTTA's three components: thresholds on the ln C scale, a guarded update that stays in effect, causal
trimming that removes planted nuisance directions, and the causal-in-time / reset-per-domain guarantees for every
component alone and together."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammopath.callbacks.tta import AUGMENT, CausalTTA
from mammopath.errors import ConfigError
from mammopath.models.module import MammoPathModule
from mammopath.tta import hed_jitter, mammo_style_jitter, nuisance_directions, style_augment, trim

TINY = {"patch_size": 8, "depth": 3, "embed_dim": 48}


def _module() -> MammoPathModule:
    torch.manual_seed(0)
    module = MammoPathModule(img_size=32, model_kwargs=TINY, freeze="full", style_bank_size=8).eval()
    g = torch.Generator().manual_seed(1)
    for m in ("mammo", "patho"):
        mu, sigma = torch.randn(2, 48, generator=g) * 0.3, 0.5 + torch.rand(2, 48, generator=g)
        module.style_bank.fill(m, mu, sigma, ["a", "b"], torch.rand(2, 48, generator=g) * 0.1,
                               torch.rand(2, 48, generator=g) * 0.1)  # fmt: skip
    return module


def _stream(n: int, domains: list[str], seed: int = 2) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(4, 1, 32, 32, generator=g), "domain": [domains[i]] * 4, "modality": ["mammo"] * 4}
        for i in range(n)
    ]


def _run(module: MammoPathModule, tta: CausalTTA, stream: list[dict[str, Any]]) -> list[torch.Tensor]:
    tta._start(module)
    scores = []
    for batch in stream:
        with torch.no_grad():
            out = module(batch["image"], "mammo")
        scores.append(tta.transform(module, batch, out, "test")["cls_logit"].detach().clone())
    tta._end(module)
    return scores


def _layernorms(module: MammoPathModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if "norm" in n and "encoder" in n}


# -- thresholds -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
def test_reliability_and_collapse_thresholds_are_fractions_of_ln_c(classes: int) -> None:
    tta = CausalTTA(num_classes=classes, update=True)
    ln_c = float(np.log(classes))
    assert tta.guard.e0 == pytest.approx(0.4 * ln_c, rel=1e-12)  # SAR's E0
    assert tta.guard.collapse == pytest.approx(0.2 * ln_c / float(np.log(1000)), rel=1e-12)
    assert tta.counters()["entropy_threshold"] == tta.guard.e0  # the values logged as tta/*
    assert tta.counters()["collapse_threshold"] == tta.guard.collapse
    if classes == 1000:  # SAR's own numbers on ImageNet
        assert tta.guard.collapse == pytest.approx(0.2) and tta.guard.e0 == pytest.approx(2.763, abs=1e-3)
    if classes == 2:  # binary: E0 0.277, collapse 0.020 (not 0.2, which sat below E0)
        assert tta.guard.e0 == pytest.approx(0.2773, abs=1e-4) and tta.guard.collapse == pytest.approx(
            0.02007, abs=1e-5
        )


def test_defaults_are_the_algorithm_s_sam_and_deyo_and_bad_arguments_are_named() -> None:
    tta = CausalTTA()
    assert tta.guard.sam_rho == 0.05 and tta.guard.deyo_weighting and tta.guard.plpd_threshold == 0.2
    assert (tta.marginalize, tta.trim, tta.update) == (True, True, False)
    for kwargs, name in [({"trim_directions": 9, "trim_augmentations": 8}, "trim_directions"),
                         ({"num_classes": 1}, "num_classes"), ({"sam_rho": -0.1}, "sam_rho"),
                         ({"style_spread": -1.0}, "style_spread"), ({"trim_augmentations": 0}, "trim_augmentations"),
                         ({"collapse_margin": -1.0}, "collapse_margin"), ({"beta": 2.0}, "beta")]:  # fmt: skip
        with pytest.raises(ConfigError, match=name):
            CausalTTA(**kwargs)


# -- the guarded update -------------------------------------------------------------------------------------------
def _square_images(n: int, g: torch.Generator, contrast: float = 1.0) -> torch.Tensor:
    """A bright 8 x 8 square, aligned with the patch grid, on faint noise."""
    images = 0.1 * torch.rand(n, 1, 32, 32, generator=g)
    for i in range(n):
        row, col = (int(v) * 8 for v in torch.randint(0, 4, (2,), generator=g))
        images[i, 0, row : row + 8, col : col + 8] += 0.9 * contrast
    return images


@pytest.fixture(scope="module")
def confident() -> MammoPathModule:
    """A module whose score depends on where the square is, with logits of spread 4: some samples are confident
    (entropy < E0) and lose confidence when patch-shuffled (PLPD > 0.2), as a trained model's reliable samples do.
    (Strong position and patch embeddings and a rescaled head stand in for training, which this tiny ViT does
    slowly.)"""
    torch.manual_seed(0)
    module = MammoPathModule(img_size=32, model_kwargs=TINY, freeze="full", style_bank_size=8).eval()
    vit, fc = module.encoder.vit, module.classifier.fc
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        vit.pos_embed.copy_(3.0 * torch.randn(vit.pos_embed.shape, generator=g))
        vit.patch_embed.proj.weight.mul_(10.0)
        logit = module(_square_images(64, g), "mammo")["cls_logit"]
        scale = 4.0 / logit.std()
        fc.bias.copy_((fc.bias - logit.mean()) * scale)
        fc.weight.mul_(scale)
    return module


def _shifted_stream(n: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(7)  # the target hospital: lower contrast
    return [{"image": _square_images(16, g, 0.8), "domain": ["t"] * 16, "modality": ["mammo"] * 16} for _ in range(n)]


def test_the_guarded_update_steps_on_reliable_samples_and_is_not_reset_after_every_step(confident) -> None:
    module, stream = confident, _shifted_stream(6)
    source = _layernorms(module)
    tta = CausalTTA(marginalize=False, trim=False, update=True, update_blocks=2)  # the guard's defaults
    tta._start(module)
    for batch in stream:
        with torch.no_grad():
            out = module(batch["image"], "mammo")
        tta.transform(module, batch, out, "test")
    adapted = _layernorms(module)
    tta._end(module)
    assert tta.guard.steps >= 4  # reliable samples existed in (almost) every batch
    assert tta.guard.collapses == 0 and tta.resets == 1  # one reset: the start of the domain, none on collapse
    assert any(not torch.equal(adapted[n], source[n]) for n in source)  # the LayerNorms did move
    assert all(torch.equal(v, source[n]) for n, v in _layernorms(module).items())  # and are restored at the end
    # the old absolute bound (0.2 nats with C = 2, below E0 = 0.277) undid nearly every step
    old = CausalTTA(marginalize=False, trim=False, update=True, update_blocks=2, collapse_margin=0.2 / math.log(2))
    _run(module, old, stream)
    assert old.guard.steps >= 4 and old.guard.collapses >= old.guard.steps - 1


# -- trimming -------------------------------------------------------------------------------------------------------
def test_trimming_removes_a_planted_nuisance_direction_as_an_independent_svd_finds_it() -> None:
    g = torch.Generator().manual_seed(3)
    b, a, d = 5, 8, 16
    nuisance = F.normalize(torch.randn(d, generator=g), dim=0).double()
    z = torch.randn(b, d, generator=g).double()
    shifts = 3.0 * torch.randn(b, a, 1, generator=g).double()
    augmented = z[:, None] + shifts * nuisance + 1e-3 * torch.randn(b, a, d, generator=g).double()
    directions = nuisance_directions(z, augmented, m=1)
    trimmed = trim(z, directions)
    # independent: numpy SVD of every sample's deltas, the first right singular vector, the projection removed
    for i in range(b):
        _, _, vt = np.linalg.svd((augmented[i] - z[i]).numpy(), full_matrices=False)
        v = vt[0]
        expected = z[i].numpy() - (z[i].numpy() @ v) * v
        np.testing.assert_allclose(trimmed[i].numpy(), expected, atol=1e-9)
        assert abs(float(directions[i, 0] @ nuisance)) == pytest.approx(1.0, abs=1e-5)  # the planted direction
    assert float((trimmed @ nuisance).abs().max()) < 1e-2  # nothing of it is left (up to the 1e-3 noise)
    assert torch.allclose(trim(z, nuisance_directions(z, augmented, m=0)), z)  # m = 0 trims nothing
    still = nuisance_directions(z, z[:, None].expand(b, a, d).clone(), m=2)  # augmentations that change nothing
    assert torch.equal(trim(z, still), z)


def test_the_callback_trims_features_and_prototype_as_numpy_computes_it() -> None:
    module = _module()
    batch = _stream(1, ["a"])[0]
    tta = CausalTTA(marginalize=False, trim_directions=2, trim_augmentations=4, seed=3)
    tta._start(module)
    with torch.no_grad():
        out = module(batch["image"], "mammo")
        got = tta.transform(module, batch, out, "test")["cls_logit"].double().numpy()
        generator = CausalTTA(seed=3).generator(AUGMENT)  # position 0: the same draws
        views = [module(style_augment(batch["image"], "mammo", generator), "mammo")["features"] for _ in range(4)]
    tta._end(module)
    z = out["features"].double().numpy()
    w, bias = module.classifier.fc.weight[0].double().numpy(), float(module.classifier.fc.bias[0])
    for i in range(len(z)):
        deltas = np.stack([v[i].double().numpy() for v in views]) - z[i]
        _, _, vt = np.linalg.svd(deltas, full_matrices=False)
        project = np.eye(len(w)) - vt[:2].T @ vt[:2]
        expected = (project @ z[i]) @ (project @ w) + bias  # first batch: the sample's own trimmed prototype
        assert got[i] == pytest.approx(expected, abs=1e-4)
    assert not np.allclose(got, out["cls_logit"].double().numpy(), atol=1e-4)


def test_trimming_with_m_0_is_exactly_what_the_other_components_give_without_it() -> None:
    module = _module()
    stream = _stream(3, ["a", "a", "b"])
    for kwargs in ({"k": 3, "seed": 2}, {"marginalize": False}):
        without = _run(module, CausalTTA(trim=False, **kwargs), stream)
        zero = _run(module, CausalTTA(trim_directions=0, **kwargs), stream)
        assert all(torch.equal(x, y) for x, y in zip(without, zero, strict=True))


def test_style_augmentations_change_acquisition_only_and_are_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = 0.2 + 0.7 * torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(hed_jitter(rgb, torch.Generator().manual_seed(1), sigma=0.0), rgb, atol=1e-5)
    jittered = hed_jitter(rgb, torch.Generator().manual_seed(1))
    assert (
        jittered.shape == rgb.shape and not torch.allclose(jittered, rgb) and bool((jittered - rgb).abs().max() < 0.3)
    )
    gray = torch.rand(2, 1, 16, 16, generator=g)
    first = mammo_style_jitter(gray, torch.Generator().manual_seed(5))
    assert torch.equal(first, mammo_style_jitter(gray, torch.Generator().manual_seed(5)))
    assert float(first.min()) >= 0 and float(first.max()) <= 1 and not torch.allclose(first, gray)
    with pytest.raises(ConfigError, match="RGB"):
        style_augment(gray, "patho", g)


# -- causal in time and reset per domain, every component alone and together -------------------------------------
ADAPTING = {"update": True, "entropy_margin": 10.0, "plpd_threshold": -1.0, "collapse_margin": 0.0, "lr": 0.05}
COMPONENTS = {
    "marginalize": {"marginalize": True, "trim": False, "update": False},
    "trim": {"marginalize": False, "trim": True, "update": False},
    "update": {"marginalize": False, "trim": False, **ADAPTING},
    "all_three": {"marginalize": True, "trim": True, **ADAPTING},
}


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_every_component_is_causal_in_time_predicts_before_adapting_and_resets_per_domain(name: str) -> None:
    module = _module()
    before = {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    make = lambda: CausalTTA(k=3, seed=4, trim_directions=2, trim_augmentations=3, **COMPONENTS[name])  # noqa: E731
    stream = _stream(5, ["a", "a", "a", "b", "b"])
    first = _run(module, make(), stream)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items() if k in before)  # source restored
    # a later batch cannot change an earlier prediction: other suffixes, other orders
    other = _run(module, make(), [*stream[:2], *_stream(3, ["a", "b", "b"], seed=9)])
    reordered = _run(module, make(), [*stream[:2], stream[4], stream[2]])
    for a, b, c in zip(first[:2], other[:2], reordered[:2], strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # a batch is predicted before adapting on it: replay batch 0, then predict batch 1 without adapting
    replay = make()
    replay._start(module)
    with torch.no_grad():
        replay.transform(module, stream[0], module(stream[0]["image"], "mammo"), "test")
        out1 = module(stream[1]["image"], "mammo")
        expected = replay.predict(module, stream[1], out1, "mammo")["cls_logit"]
    replay._end(module)
    torch.testing.assert_close(first[1], expected, atol=1e-6, rtol=0)
    # the state did carry over within a domain (batch 1 differs from batch 1 predicted first)
    alone = _run(module, make(), [stream[1]])[0]
    if name != "marginalize":  # the marginalization carries no state (its styles are keyed by stream position)
        assert not torch.allclose(first[1], alone, atol=1e-6)
    # reset per domain: domain b starts from the source state, whatever came before it
    torch.testing.assert_close(first[3:], _run(module, make(), stream[3:]), atol=1e-6, rtol=0)
