"""MixStyle and IRM callbacks on the real module: identity in eval, one modality at a time, the IRM term."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mammopath.callbacks.irm import IRM
from mammopath.callbacks.mixstyle import MixStyle
from mammopath.errors import ConfigError
from mammopath.models.module import MammoPathModule

TINY = {"patch_size": 8, "depth": 3, "embed_dim": 48}


def _module() -> MammoPathModule:
    torch.manual_seed(0)
    return MammoPathModule(img_size=32, model_kwargs=TINY, freeze="full")


def _batch(n: int, modality: str, domains: list[str], seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    channels = 1 if modality == "mammo" else 3
    return {
        "image": torch.rand(n, channels, 32, 32, generator=g),
        "label": torch.tensor([i % 2 for i in range(n)]),
        "domain": domains,
        "modality": [modality] * n,
    }


def test_mixstyle_changes_training_features_only_and_never_across_modalities() -> None:
    module = _module()
    callback = MixStyle(layers=[0, 1], p=1.0, mix="crossdomain")
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    mammo = _batch(5, "mammo", ["a", "b", "a", "b", "a"], seed=1)  # odd batch, two domains
    patho = _batch(4, "patho", ["c", "c", "d", "d"], seed=2)
    other_patho = _batch(4, "patho", ["c", "c", "d", "d"], seed=3)
    module.eval()
    with torch.no_grad():
        plain = module(mammo["image"], "mammo")["features"]
        callback.on_train_batch_start(None, module, {"mammo": mammo, "patho": patho}, 0)  # type: ignore[arg-type]
        assert torch.equal(module(mammo["image"], "mammo")["features"], plain)  # exact identity in eval
    module.train()
    outs = []
    for pathology in (patho, other_patho):
        callback.on_train_batch_start(None, module, {"mammo": mammo, "patho": pathology}, 0)  # type: ignore[arg-type]
        torch.manual_seed(5)
        with torch.no_grad():
            outs.append(module(mammo["image"], "mammo")["features"])
    assert not torch.allclose(outs[0], plain, atol=1e-4)  # mixed in training
    torch.testing.assert_close(outs[0], outs[1])  # mammography never mixed with what the pathology batch holds
    with callback.paused():
        torch.manual_seed(5)
        with torch.no_grad():
            dropped_out = module(mammo["image"], "mammo")["features"]
    assert not torch.allclose(dropped_out, outs[0])
    callback.teardown(None, module, "fit")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="early blocks"):
        MixStyle(layers=[2]).setup(None, module, "fit")  # type: ignore[arg-type]


def test_crossdomain_with_one_domain_falls_back_and_counts() -> None:
    module = _module().train()
    callback = MixStyle(layers=[0], p=1.0)
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    single = _batch(4, "mammo", ["a"] * 4, seed=1)
    callback.on_train_batch_start(None, module, {"mammo": single}, 0)  # type: ignore[arg-type]
    with torch.no_grad():
        module(single["image"], "mammo")
    assert callback.single_domain == 1 and callback.mixed == 1


def test_irm_term_per_environment_with_anneal_and_skips() -> None:
    module = _module()
    irm = IRM(penalty_weight=50.0, anneal_steps=3, min_samples=4)
    irm.setup(None, module, "fit")  # type: ignore[arg-type]
    assert "irm" in module.objective.registered
    assert module.objective.weight("irm", 2) == 1.0 and module.objective.weight("irm", 3) == 50.0
    mammo = _batch(9, "mammo", ["a"] * 5 + ["b"] * 4, seed=1)
    patho = _batch(5, "patho", ["c"] * 3 + ["d"] * 2, seed=2)  # both pathology environments too small
    batch = {"mammo": mammo, "patho": patho}
    outputs = {m: module(b["image"], m) for m, b in batch.items()}
    penalty = irm.penalty(module, batch, outputs)
    from mammopath.dg import irm_penalty

    logits, labels = outputs["mammo"]["cls_logit"], mammo["label"].float()
    expected = (irm_penalty(logits[:5], labels[:5]) + irm_penalty(logits[5:], labels[5:])) / 2
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    assert irm.skipped == 2 and penalty.requires_grad
    irm.teardown(None, module, "fit")  # type: ignore[arg-type]
    assert "irm" not in module.objective.registered


def test_irm_resets_the_optimizer_state_exactly_at_the_anneal_step() -> None:
    """State kept before the anneal step, cleared at the start of its batch (the first at weight λ), kept after."""
    from types import SimpleNamespace

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    irm = IRM(penalty_weight=100.0, anneal_steps=3)
    trainer = SimpleNamespace(global_step=0, optimizers=[optimizer])
    seen = []
    for step in range(6):
        trainer.global_step = step  # Lightning's global_step at a batch's start: optimizer steps taken so far
        had_state = bool(optimizer.state)
        irm.on_train_batch_start(trainer, None, None, step)  # type: ignore[arg-type]
        seen.append((step, had_state, bool(optimizer.state), irm.weight(step)))
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    assert seen == [
        (0, False, False, 1.0),
        (1, True, True, 1.0),
        (2, True, True, 1.0),
        (3, True, False, 100.0),  # cleared here, before the first step at λ
        (4, True, True, 100.0),  # and only once
        (5, True, True, 100.0),
    ]
    # Adam restarted at step 3: its step counter counts the 3 steps since the reset
    assert int(optimizer.state[weight]["step"]) == 3


def test_irm_anneal_fraction_sets_the_anneal_step_from_the_runs_length() -> None:
    """10% of 37 estimated optimizer steps anneals at step 4 (round(3.7)); a fraction outside [0, 1) fails."""
    from types import SimpleNamespace

    irm = IRM(penalty_weight=100.0, anneal_steps=500, anneal_fraction=0.1)
    irm.on_fit_start(SimpleNamespace(estimated_stepping_batches=37), None)  # type: ignore[arg-type]
    assert irm.anneal_steps == 4
    assert [irm.weight(s) for s in (3, 4)] == [1.0, 100.0]
    with pytest.raises(ConfigError, match="anneal_fraction"):
        IRM(anneal_fraction=1.0)
