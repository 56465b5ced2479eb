"""Test-time adaptation: identity when switched off, causal in time, per-domain resets, declared parameters only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TTA_TINY, tta_module, tta_run, tta_stream

from mammopath.callbacks.style_bank import StyleBank
from mammopath.callbacks.tta import TENT, CausalTTA
from mammopath.datamodules import CrossModalDataModule
from mammopath.dg import restyle
from mammopath.errors import ConfigError
from mammopath.models.module import MammoPathModule

TINY = TTA_TINY


def _module() -> MammoPathModule:
    return tta_module(rows_per_domain=4)


_stream, _run = tta_stream, tta_run


def _tensors(module: MammoPathModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def test_no_intervention_and_no_update_is_plain_inference_exactly() -> None:
    module = _module()
    stream = _stream(3, ["a", "a", "b"])
    with torch.no_grad():
        plain = [module(b["image"], "mammo")["cls_logit"] for b in stream]
    for tta in (
        CausalTTA(k=0, update=False, trim=False),
        CausalTTA(k=4, beta=1.0, update=False, trim=False),
        CausalTTA(marginalize=False, trim=False),
        CausalTTA(marginalize=False, trim_directions=0),  # trimming with m = 0
    ):
        assert all(torch.equal(a, b) for a, b in zip(_run(module, tta, stream), plain, strict=True))


def test_marginalization_equals_the_backdoor_formula_and_forward_from_is_exact() -> None:
    module = _module()
    images = torch.rand(3, 1, 32, 32)
    captured: list[torch.Tensor] = []
    handle = module.encoder.blocks[module.style_bank.layer].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        out = module(images, "mammo")
    handle.remove()
    with torch.no_grad():  # re-running the later blocks from the captured tokens is the same forward
        again = module.forward_from(captured[0], "mammo", (4, 4), (32, 32))
    torch.testing.assert_close(again["cls_logit"], out["cls_logit"], atol=1e-6, rtol=0)
    tta = CausalTTA(k=3, beta=0.25, update=False, seed=5, trim=False)
    tta._start(module)
    with torch.no_grad():
        out = module(images, "mammo")
        got = torch.sigmoid(tta.transform(module, {"image": images, "domain": ["x"] * 3, "modality": ["mammo"] * 3},
                                          out, "test")["cls_logit"])  # fmt: skip
        mu, sigma = tta._styles["mammo"]  # the styles drawn for this batch
        expected = 0.25 * torch.sigmoid(out["cls_logit"])
        for k in range(3):
            styled = restyle(captured[0], mu[k], sigma[k], module.encoder.num_prefix_tokens)
            expected += 0.75 / 3 * torch.sigmoid(module.forward_from(styled, "mammo", (4, 4), (32, 32))["cls_logit"])
    tta._end(module)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, torch.sigmoid(out["cls_logit"]))


@pytest.mark.parametrize("make", [lambda: CausalTTA(update=True, entropy_margin=10.0, plpd_threshold=-1.0, lr=0.05),
                                  lambda: TENT(lr=0.05)], ids=["causal_tta", "tent"])  # fmt: skip
def test_causal_in_time_resets_per_domain_and_changes_only_declared_parameters(make) -> None:
    module = _module()
    before = _tensors(module)
    stream = _stream(6, ["a", "a", "a", "a", "b", "b"])
    tta = make()
    first = _run(module, tta, stream)
    assert tta.adapted_batches == 6
    # the source weights are back, exactly
    assert all(torch.equal(before[k], v) for k, v in _tensors(module).items())
    # causal: changing the stream after position 2 (other batches, another order) changes nothing up to it
    second = _run(module, make(), [*stream[:3], stream[3], *_stream(2, ["b", "b"], seed=9)])
    third = _run(module, make(), [*stream[:3], stream[5], stream[4], stream[3]])
    for a, b, c in zip(first[:3], second[:3], third[:3], strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # adaptation happened (batch 2 differs from the source prediction) and did not cross into domain b
    with torch.no_grad():
        source = [module(b["image"], "mammo")["cls_logit"] for b in stream]
    if isinstance(tta, TENT):
        assert not torch.allclose(first[2], source[2])
    assert torch.allclose(first[4], _run(module, make(), [stream[4]])[0])  # b starts from the source weights
    # only the declared parameters move during adaptation
    tta = make()
    tta._start(module)
    with torch.no_grad():
        out = module(stream[0]["image"], "mammo")
    tta.transform(module, stream[0], out, "test")
    declared = {id(p) for p in tta.parameters(module, "mammo")}
    changed = [n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed and all(id(dict(module.named_parameters())[n]) in declared for n in changed)
    tta._end(module)


def test_batches_that_straddle_domains_are_refused() -> None:
    module = _module()
    tta = TENT()
    tta._start(module)
    batch = {"image": torch.rand(2, 1, 32, 32), "domain": ["a", "b"], "modality": ["mammo"] * 2}
    with pytest.raises(ConfigError, match="straddles"):
        tta.transform(module, batch, module(batch["image"], "mammo"), "test")


def _trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kwargs)  # fmt: skip


def test_through_the_trainer_bank_checkpoint_inference_mode_and_source_weights(
    synth_root: Path, tmp_path: Path
) -> None:
    data = CrossModalDataModule(
        str(synth_root / "manifest.csv"), holdout_domains=["hospital_c", "centre_3"], image_size=32, batch_size=4,
        eval_batch_size=8,
    )  # fmt: skip
    module = MammoPathModule(img_size=32, model_kwargs=TINY, freeze="full", style_bank_size=8,
                             grade_schemes=data.grade_schemes)  # fmt: skip
    trainer = _trainer(tmp_path, [StyleBank()], max_steps=2, limit_val_batches=1)
    trainer.fit(module, data)
    mu, _, domains = module.style_bank.styles("patho")
    assert domains == ["centre_1", "centre_2"]  # one class-balanced row per source domain, source domains only
    trainer.save_checkpoint(tmp_path / "bank.ckpt")
    restored = MammoPathModule.load_from_checkpoint(tmp_path / "bank.ckpt", weights_only=True)
    r_mu, r_sigma, r_domains = restored.style_bank.styles("patho")
    torch.testing.assert_close(r_mu, mu)
    torch.testing.assert_close(r_sigma, module.style_bank.styles("patho")[1])
    assert r_domains == domains
    with pytest.raises(ConfigError, match="inference_mode: false"):
        _trainer(tmp_path, [CausalTTA()], limit_test_batches=2).test(module, data)
    before = _tensors(module)
    tta = CausalTTA(update=True, entropy_margin=10.0, plpd_threshold=-1.0)
    tester = _trainer(tmp_path, [tta], limit_test_batches=3, inference_mode=False)
    tester.test(module, data)
    assert tta.adapted_batches > 0 and tta.resets >= 1
    assert all(torch.equal(before[k], v) for k, v in _tensors(module).items())  # source weights untouched
    logged = tester.callback_metrics  # the counters and the thresholds (nats) are logged under tta/
    assert float(logged["tta/resets"]) == tta.resets and float(logged["tta/adapted_batches"]) == tta.adapted_batches
    assert float(logged["tta/entropy_threshold"]) == pytest.approx(10.0 * math.log(2))
    assert float(logged["tta/collapse_threshold"]) == pytest.approx(0.2 / math.log(1000) * math.log(2))
    scores = module.evaluation.result("test").predictions["score"]
    assert scores.between(0, 1).all()


def _adapting() -> dict[str, Any]:
    """CausalTTA settings under which every sample is reliable, so the guarded update really steps."""
    return {"update": True, "entropy_margin": 10.0, "plpd_threshold": -1.0, "collapse_margin": 0.0, "lr": 0.05}


@pytest.mark.parametrize(
    ("make", "reference"),
    [
        (lambda: TENT(lr=0.05), lambda: None),
        (lambda: CausalTTA(k=0, trim=False, **_adapting()), lambda: None),
        (
            lambda: CausalTTA(k=3, seed=4, trim=False, **_adapting()),
            lambda: CausalTTA(k=3, seed=4, update=False, trim=False),
        ),
        (
            lambda: CausalTTA(k=3, seed=4, trim=True, trim_directions=1, trim_augmentations=2, **_adapting()),
            lambda: CausalTTA(k=3, seed=4, trim=True, trim_directions=1, trim_augmentations=2, update=False),
        ),
    ],
    ids=["tent", "causal_tta_update", "causal_tta_marginalized_update", "causal_tta_all_three"],
)
def test_a_batch_is_predicted_before_it_is_adapted_on(make, reference) -> None:
    """The first batch of each domain gets the source prediction exactly; batch i the weights of batches < i."""
    module = _module()
    stream = _stream(4, ["a", "a", "a", "b"])
    with torch.no_grad():
        plain = [module(b["image"], "mammo")["cls_logit"] for b in stream]
    ref = reference()
    source = plain if ref is None else _run(module, ref, stream)  # the same prediction rule without updates
    tta = make()
    adapted = _run(module, tta, stream)
    assert tta.adapted_batches == 4
    assert torch.equal(adapted[0], source[0]) and torch.equal(adapted[3], source[3])  # a new domain starts at source
    assert not torch.allclose(adapted[1], source[1])  # the update did change the weights used for later batches
    # batch 1 is predicted from the weights adapted on batch 0 only: replay batch 0, then predict batch 1 by hand
    replay = make()
    replay._start(module)
    with torch.no_grad():
        out0 = module(stream[0]["image"], "mammo")
    replay.transform(module, stream[0], out0, "test")
    with torch.no_grad():
        out1 = module(stream[1]["image"], "mammo")
        expected = out1["cls_logit"] if ref is None else replay.predict(module, stream[1], out1, "mammo")["cls_logit"]
    replay._end(module)
    torch.testing.assert_close(adapted[1], expected, atol=1e-6, rtol=0)


def test_style_bank_rows_are_the_class_balanced_styles_of_their_own_domain(synth_root: Path) -> None:
    """On training rows whose order mixes domains, each domain's row is computed from that domain's images only."""
    from types import SimpleNamespace

    from mammopath.callbacks.style_bank import record_styles
    from mammopath.datasets.manifest_dataset import ManifestDataset
    from mammopath.manifest import load_manifest

    manifest = load_manifest(synth_root / "manifest.csv", synth_root)
    train = manifest[(manifest["modality"] == "patho") & (manifest["split"] == "train")]
    train = train[train["domain"].isin(["centre_1", "centre_2"])]
    one, two = (train[train["domain"] == d].reset_index(drop=True) for d in ("centre_1", "centre_2"))
    n = min(len(one), len(two), 8)
    mixed = pd.concat([one.iloc[:n], two.iloc[:n]]).sort_index(kind="stable")  # centre_1, centre_2, centre_1, ...
    assert list(mixed["domain"].iloc[:4]) == ["centre_1", "centre_2", "centre_1", "centre_2"]
    dataset = ManifestDataset(mixed, synth_root, image_size=32)
    labels = dataset.rows["label"].astype(int).to_numpy()
    for domain in ("centre_1", "centre_2"):  # both classes in both domains, or the test proves nothing
        assert set(labels[dataset.rows["domain"].to_numpy() == domain]) == {0, 1}
    module = MammoPathModule(img_size=32, model_kwargs=TINY, freeze="full", style_bank_size=6).eval()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(datasets={"train": {"patho": dataset}}), callbacks=[],
                              current_epoch=0)  # fmt: skip
    StyleBank(images_per_class=16, batch_size=4).record(trainer, module)  # type: ignore[arg-type]
    mu, sigma, domains = module.style_bank.styles("patho")
    mu_spread, log_sigma_spread = module.style_bank.spreads("patho")
    assert domains == ["centre_1", "centre_2"]  # one row per source domain
    # independent: every image's style, then per domain the mean of the two class means (numpy)
    with torch.no_grad():
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        every_mu, every_sigma = (t.double().numpy() for t in record_styles(module, images, "patho"))
    where = dataset.rows["domain"].to_numpy()
    for row, domain in enumerate(domains):
        groups = [(where == domain) & (labels == c) for c in (0, 1)]
        expected_mu = np.mean([every_mu[g].mean(axis=0) for g in groups], axis=0)
        expected_log_sigma = np.mean([np.log(every_sigma[g]).mean(axis=0) for g in groups], axis=0)
        spread = np.sqrt(np.mean([every_mu[g].var(axis=0) for g in groups], axis=0))
        np.testing.assert_allclose(mu[row].double().numpy(), expected_mu, atol=1e-5)
        np.testing.assert_allclose(sigma[row].double().log().numpy(), expected_log_sigma, atol=1e-5)
        np.testing.assert_allclose(mu_spread[row].double().numpy(), spread, atol=1e-5)
        assert bool((log_sigma_spread[row] >= 0).all())
