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
from helpers import TTA_TINY, tta_module, tta_run, tta_stream

from mammopath.callbacks.tta import AUGMENT, CausalTTA
from mammopath.errors import ConfigError
from mammopath.models.module import MammoPathModule
from mammopath.tta import (
    SAR_COLLAPSE_MARGIN,
    SAR_ENTROPY_MARGIN,
    collapse_threshold,
    entropy_threshold,
    hed_jitter,
    mammo_style_jitter,
    nuisance_directions,
    seeded_generator,
    style_augment,
    trim,
)

TINY = TTA_TINY


def _module() -> MammoPathModule:
    return tta_module(rows_per_domain=1, spreads=True)


_stream, _run = tta_stream, tta_run


def _layernorms(module: MammoPathModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if "norm" in n and "encoder" in n}


# -- thresholds -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
def test_reliability_and_collapse_thresholds_are_fractions_of_ln_c(classes: int) -> None:
    ln_c = float(np.log(classes))
    assert entropy_threshold(SAR_ENTROPY_MARGIN, classes) == pytest.approx(0.4 * ln_c, rel=1e-12)  # SAR's E0
    assert collapse_threshold(SAR_COLLAPSE_MARGIN, classes) == pytest.approx(0.2 * ln_c / np.log(1000), rel=1e-12)
    if classes == 1000:  # SAR's own numbers on ImageNet
        assert entropy_threshold(SAR_ENTROPY_MARGIN, classes) == pytest.approx(2.763, abs=1e-3)
        assert collapse_threshold(SAR_COLLAPSE_MARGIN, classes) == pytest.approx(0.2)


def test_the_callback_s_thresholds_are_binary_since_its_entropy_is_the_malignancy_output_s() -> None:
    """The entropy is the binary entropy of the malignancy logit (<= ln 2): the thresholds are for C = 2, and there
    is no num_classes to set (with C >= 6, E0 = 0.4 ln C >= ln 2 would have let every sample through)."""
    tta = CausalTTA(update=True)
    assert tta.guard.e0 == pytest.approx(0.2773, abs=1e-4) and tta.guard.collapse == pytest.approx(0.02007, abs=1e-5)
    assert tta.guard.e0 < math.log(2)
    assert tta.counters()["entropy_threshold"] == tta.guard.e0  # the values logged as tta/*
    assert tta.counters()["collapse_threshold"] == tta.guard.collapse
    with pytest.raises(TypeError, match="num_classes"):
        CausalTTA(num_classes=10)  # type: ignore[call-arg]


def test_defaults_are_the_algorithm_s_sam_and_deyo_and_bad_arguments_are_named() -> None:
    tta = CausalTTA()
    assert tta.guard.sam_rho == 0.05 and tta.guard.deyo_weighting and tta.guard.plpd_threshold == 0.2
    assert (tta.marginalize, tta.trim, tta.update) == (True, False, False)  # trimming: off until chosen on folds
    for kwargs, name in [({"trim_directions": 9, "trim_augmentations": 8}, "trim_directions"),
                         ({"plpd_threshold": 1.5}, r"plpd_threshold must be in \[-1, 1\]"),
                         ({"plpd_threshold": -1.01}, "plpd_threshold"), ({"seed": -1}, "seed must be >= 0"),
                         ({"entropy_margin": 0.0}, "entropy_margin"), ({"sam_rho": -0.1}, "sam_rho"),
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
    # independent: numpy SVD of every sample's centred set {z, augmentations}, the first direction removed
    for i in range(b):
        points = np.concatenate([z[i].numpy()[None], augmented[i].numpy()])
        _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
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
    tta = CausalTTA(marginalize=False, trim=True, trim_directions=2, trim_augmentations=4, seed=3)
    tta._start(module)
    with torch.no_grad():
        out = module(batch["image"], "mammo")
        got = tta.transform(module, batch, out, "test")["cls_logit"].double().numpy()
        generators = [seeded_generator(3, AUGMENT, "a", 0, i) for i in range(4)]  # position 0 of domain a, per image
        views = [module(style_augment(batch["image"], "mammo", generators), "mammo")["features"] for _ in range(4)]
    tta._end(module)
    z = out["features"].double().numpy()
    w, bias = module.classifier.fc.weight[0].double().numpy(), float(module.classifier.fc.bias[0])
    for i in range(len(z)):
        points = np.stack([z[i], *(v[i].double().numpy() for v in views)])
        _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
        project = np.eye(len(w)) - vt[:2].T @ vt[:2]
        expected = (project @ z[i]) @ (project @ w) + bias  # first batch: the sample's own trimmed prototype
        assert got[i] == pytest.approx(expected, abs=1e-4)
    assert not np.allclose(got, out["cls_logit"].double().numpy(), atol=1e-4)


def test_trimming_with_m_0_is_exactly_what_the_other_components_give_without_it() -> None:
    module = _module()
    stream = _stream(3, ["a", "a", "b"])
    for kwargs in ({"k": 3, "seed": 2}, {"marginalize": False}):
        without = _run(module, CausalTTA(trim=False, **kwargs), stream)
        zero = _run(module, CausalTTA(trim=True, trim_directions=0, **kwargs), stream)
        assert all(torch.equal(x, y) for x, y in zip(without, zero, strict=True))


def test_style_augmentations_change_acquisition_only_and_are_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = 0.2 + 0.7 * torch.rand(2, 3, 16, 16, generator=g)
    gens = lambda seed: [torch.Generator().manual_seed(seed + i) for i in range(2)]  # noqa: E731
    assert torch.allclose(hed_jitter(rgb, gens(1), sigma=0.0), rgb, atol=1e-5)
    jittered = hed_jitter(rgb, gens(1))
    assert (
        jittered.shape == rgb.shape and not torch.allclose(jittered, rgb) and bool((jittered - rgb).abs().max() < 0.3)
    )
    gray = torch.rand(2, 1, 16, 16, generator=g)
    first = mammo_style_jitter(gray, gens(5))
    assert torch.equal(first, mammo_style_jitter(gray, gens(5)))
    assert float(first.min()) >= 0 and float(first.max()) <= 1 and not torch.allclose(first, gray)
    with pytest.raises(ConfigError, match="RGB"):
        style_augment(gray, "patho", gens(0))


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


# -- review fixes: TACT's centred directions and stain units, state, draws, batch-mates, arguments -----------------
def test_directions_are_tact_s_centred_principal_components_not_the_deltas_from_the_sample() -> None:
    """Views = z + d + t_a e with a constant shift d and a symmetric jitter t_a along e: the centred set's top
    direction is e (variance 8 > 8/9 · |d|² = 2), while the uncentred deltas' is d (|d|² · 8 = 18 > 8)."""
    d_dim = 6
    z = torch.tensor([[0.3, -1.0, 0.5, 2.0, 0.1, -0.4]], dtype=torch.float64)
    d = torch.zeros(d_dim, dtype=torch.float64)
    d[0] = 1.5
    e = torch.zeros(d_dim, dtype=torch.float64)
    e[1] = 1.0
    t = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)  # A = 8, symmetric
    augmented = z[:, None] + d + t[None, :, None] * e
    got = nuisance_directions(z, augmented, m=1)
    # independent: TACT's get_PCs in numpy: centre {z, views} on its mean, scatter matrix, top eigenvector
    points = np.concatenate([z.numpy(), augmented[0].numpy()])
    centred = points - points.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argmax(values)]
    assert abs(float(got[0, 0].numpy() @ top)) == pytest.approx(1.0, abs=1e-9)
    assert abs(float(got[0, 0] @ e)) == pytest.approx(1.0, abs=1e-9)  # e, not d
    _, _, vt = np.linalg.svd((augmented[0] - z[0]).numpy())
    assert abs(float(vt[0] @ d.numpy())) > 0.99  # what the uncentred deltas gave
    np.testing.assert_allclose(trim(z, got)[0].numpy(), z[0].numpy() - (z[0].numpy() @ top) * top, atol=1e-12)


def test_the_svd_runs_on_the_cpu_for_apple_mps() -> None:
    from mammopath.tta.trim import linalg_device

    assert linalg_device(torch.device("mps")) == torch.device("cpu")
    assert linalg_device(torch.device("cpu")) == torch.device("cpu")
    assert linalg_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_the_stain_jitter_is_tact_s_formula_in_natural_log_optical_density_of_8_bit_intensities() -> None:
    from mammopath.tta.augment import stain_jitter

    g = torch.Generator().manual_seed(0)
    rgb = 0.2 + 0.7 * torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    alpha = torch.tensor([[1.05, 0.95, 1.02], [0.97, 1.0, 1.05]], dtype=torch.float64)
    beta = torch.tensor([[0.05, -0.05, 0.01], [-0.03, 0.05, 0.0]], dtype=torch.float64)
    got = stain_jitter(rgb, alpha, beta).numpy()
    # independent: TACT's StainColorJitter per image, pixels as rows: S = -ln(255 P + eps) M^-1, back via exp(-S M)
    m = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    for i in range(2):
        p = rgb[i].numpy().reshape(3, -1).T
        s = -np.log(255 * p + 1e-6) @ np.linalg.inv(m)
        back = np.clip((np.exp(-(s * alpha[i].numpy() + beta[i].numpy()) @ m) - 1e-6) / 255, 0, 1)
        np.testing.assert_allclose(got[i].reshape(3, -1).T, back, atol=1e-10)
        assert np.abs(back - p).max() > 0.02  # a visible change at the range's edges
    # the drawn jitter stays within the extremes of its range
    jittered = hed_jitter(rgb.float(), [torch.Generator().manual_seed(i) for i in range(2)])
    extreme = stain_jitter(
        rgb, torch.full((2, 3), 1.05, dtype=torch.float64), torch.full((2, 3), 0.05, dtype=torch.float64)
    )
    assert float((jittered.double() - rgb).abs().max()) <= float((extreme - rgb).abs().max()) + 1e-4


def test_patch_shuffle_permutes_every_image_s_tiles_with_its_own_seeded_permutation() -> None:
    from mammopath.tta.guard import patch_shuffle

    tile_ids = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3)
    images = tile_ids.expand(3, 1, 32, 32).clone()  # three identical images, each tile holding its index
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    out = patch_shuffle(images, generator=gens())
    orders = [out[i, 0, ::8, ::8].flatten().tolist() for i in range(3)]
    assert all(sorted(o) == list(range(16)) for o in orders)  # a permutation of the image's own tiles
    assert len({tuple(o) for o in orders}) == 3  # per image, not one permutation for the batch
    assert torch.equal(out, patch_shuffle(images, generator=gens()))  # seeded
    single = patch_shuffle(images[1:2], generator=gens()[1:2])  # an image's shuffle ignores its batch-mates
    assert torch.equal(single[0], out[1])


def test_styles_are_drawn_afresh_for_every_batch_and_the_same_seed_draws_them_again() -> None:
    module = _module()
    stream = _stream(2, ["a", "a"])

    def styles(seed: int) -> list[torch.Tensor]:
        tta, drawn = CausalTTA(k=3, seed=seed), []
        tta._start(module)
        for batch in stream:
            with torch.no_grad():
                tta.transform(module, batch, module(batch["image"], "mammo"), "test")
            drawn.append(torch.cat(tta._styles["mammo"]).clone())
        tta._end(module)
        return drawn

    first, again, other = styles(0), styles(0), styles(1)
    assert not torch.allclose(first[0], first[1])  # batch 1 has its own styles
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.allclose(first[0], other[0])


def test_domains_get_decorrelated_draws_independent_of_the_domains_before_them() -> None:
    tta = CausalTTA(seed=0)
    draws = {}
    for domain in ("a", "b"):
        tta._domain, tta._position = domain, 0
        draws[domain] = torch.rand(8, generator=tta.generator(0))
    assert not torch.allclose(draws["a"], draws["b"])  # the same position of two hospitals: other draws
    fresh = CausalTTA(seed=0)
    fresh._domain = "b"
    assert torch.equal(torch.rand(8, generator=fresh.generator(0)), draws["b"])  # whatever came before


def test_the_running_prototype_average_is_the_sample_weighted_mean_with_unequal_batches() -> None:
    from mammopath.tta.trim import PrototypeAverage

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (3, 1, 6, 2)]
    average, seen = PrototypeAverage(), []
    for batch in batches:
        past = np.concatenate(seen) if seen else np.zeros((0, 5))
        # each sample: the mean over the earlier samples and itself
        expected = np.stack([np.concatenate([past, row[None]]).mean(axis=0) for row in batch.numpy()])
        np.testing.assert_allclose(average.for_samples(batch).numpy(), expected, atol=1e-12)
        average.update(batch)
        seen.append(batch.numpy())
        np.testing.assert_allclose(average.mean.numpy(), np.concatenate(seen).mean(axis=0), atol=1e-12)
        assert average.count == sum(len(s) for s in seen)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_a_sample_s_prediction_does_not_depend_on_its_batch_mates(name: str) -> None:
    """Permute every batch (sample ids travel with the images): the predictions permute the same way."""
    module = _module()
    stream = _stream(2, ["a", "a"])
    for i, batch in enumerate(stream):
        batch["sample_id"] = [f"s{i}_{j}" for j in range(4)]
    perm = [2, 0, 3, 1]
    permuted = [{k: (v[perm] if k == "image" else [v[j] for j in perm]) for k, v in b.items()} for b in stream]
    make = lambda: CausalTTA(k=3, seed=4, trim_directions=2, trim_augmentations=3, **COMPONENTS[name])  # noqa: E731
    plain, shuffled = _run(module, make(), stream), _run(module, make(), permuted)
    for a, b in zip(plain, shuffled, strict=True):
        torch.testing.assert_close(b, a[perm], atol=1e-5, rtol=0)


def test_a_collapse_reset_keeps_the_trimming_s_prototype_average() -> None:
    module = _module()
    stream = _stream(3, ["a", "a", "a"])
    tta = CausalTTA(marginalize=False, trim=True, trim_directions=1, trim_augmentations=2,
                    **{**ADAPTING, "collapse_margin": 100.0})  # fmt: skip  # every step collapses
    tta._start(module)
    for batch in stream:
        with torch.no_grad():
            out = module(batch["image"], "mammo")
        tta.transform(module, batch, out, "test")
    assert tta.guard.collapses == 3 and tta.resets == 4  # the domain start and three collapses
    assert tta.trimmer.prototypes.count == 12  # every batch's samples, none wiped by a collapse
    tta._end(module)


def test_captured_tokens_are_detached_read_once_and_never_taken_from_another_batch() -> None:
    from mammopath.errors import MammopathError

    module = _module()
    batch = _stream(1, ["a"])[0]
    tta = CausalTTA(k=2)
    tta._start(module)
    with torch.enable_grad():
        module.encoder.blocks[0].norm1.weight.requires_grad_(True)
        module(batch["image"], "mammo")
        module.encoder.blocks[0].norm1.weight.requires_grad_(False)
    assert tta._captured is not None and not tta._captured.requires_grad
    with torch.no_grad():
        out = module(batch["image"], "mammo")
        tta.transform(module, batch, out, "test")
        assert tta._captured is None  # read once: the next batch cannot see it
        module(batch["image"][:3], "mammo")  # a forward of another batch (3 images)
        with pytest.raises(MammopathError, match="not this batch's"):
            tta.predict(module, batch, out, "mammo")
        with pytest.raises(MammopathError, match="not this batch's"):
            tta.predict(module, batch, out, "mammo")  # nothing captured at all
    tta._end(module)
    assert tta._captured is None


def test_the_method_s_config_switches_all_three_components_on_explicitly() -> None:
    import yaml

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "experiments/baselines/causal_tta.yaml").read_text())
    (callback,) = config["trainer"]["callbacks+"]
    args = callback["init_args"]
    assert (args["marginalize"], args["trim"], args["update"]) == (True, True, True)
    assert CausalTTA().trim is False  # while the class default leaves trimming off


def test_old_positional_calls_fail_loudly() -> None:
    from mammopath.callbacks.style_bank import StyleBank

    with pytest.raises(TypeError):
        CausalTTA(True, 4)  # type: ignore[misc]
    with pytest.raises(TypeError):
        StyleBank(16, 32)  # type: ignore[misc]
    with pytest.raises(ConfigError, match="StyleBank.seed must be >= 0"):
        StyleBank(seed=-1)


def test_trimming_an_unsupported_modality_or_non_rgb_pathology_fails_at_setup() -> None:
    from types import SimpleNamespace

    tta = CausalTTA(marginalize=False, trim=True)
    with pytest.raises(ConfigError, match=r"no style-only augmentation for modality \['ct'\]"):
        tta.check(SimpleNamespace(encoder=SimpleNamespace(modalities=("mammo", "ct"), in_chans=3)))
    with pytest.raises(ConfigError, match="needs RGB pathology images, but the encoder takes 1 channel"):
        tta.check(SimpleNamespace(encoder=SimpleNamespace(modalities=("mammo", "patho"), in_chans=1)))
    CausalTTA(marginalize=False, trim=False).check(SimpleNamespace(encoder=SimpleNamespace(modalities=("ct",))))


def test_a_bank_that_predates_class_balanced_styles_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    module = _module()
    g = torch.Generator().manual_seed(0)
    module.style_bank.fill("patho", torch.randn(4, 48, generator=g), 0.5 + torch.rand(4, 48, generator=g),
                           ["a", "a", "b", "b"])  # fmt: skip  # per-image rows, no spreads: an old checkpoint's
    with caplog.at_level("WARNING"):
        CausalTTA().check(module)
    assert "patho style bank predates class-balanced styles" in caplog.text
    assert "re-record it with the StyleBank callback" in caplog.text
    assert "mammo style bank" not in caplog.text  # one row per domain with spreads: fine
