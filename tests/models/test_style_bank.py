"""The style bank holds style, not class: a probe that reads the class from per-image token statistics cannot
read it from the bank, while it reads it from a bank of per-image statistics (the previous design)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mammopath.errors import ConfigError
from mammopath.models.style_bank import TokenStyleBank, class_balanced_styles

C = 24


def _statistics(
    n: int, prevalence: dict[str, float], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Per-image (μ, σ) where the class shifts both along one axis and the domain along another (truth known)."""
    rng = np.random.default_rng(seed)
    class_axis = np.zeros(C)
    class_axis[:6] = 1.0
    domain_axis = np.zeros(C)
    domain_axis[6:12] = 1.0
    mus, log_sigmas, labels, domains = [], [], [], []
    for d, (domain, p) in enumerate(prevalence.items()):
        y = (rng.random(n) < p).astype(int)
        offset = (2 * d - 1) * 0.8 * domain_axis
        mus.append(offset + 0.6 * np.outer(2 * y - 1, class_axis) + 0.25 * rng.standard_normal((n, C)))
        log_sigmas.append(0.3 * np.outer(2 * y - 1, class_axis) + 0.1 * rng.standard_normal((n, C)))
        labels.append(y)
        domains += [domain] * n
    return (torch.tensor(np.concatenate(mus)).float(), torch.tensor(np.exp(np.concatenate(log_sigmas))).float(),
            torch.tensor(np.concatenate(labels)), domains)  # fmt: skip


def _features(mu: torch.Tensor, sigma: torch.Tensor) -> np.ndarray:
    return torch.cat([mu, sigma.log()], dim=1).double().numpy()


def test_a_probe_reads_the_class_from_per_image_styles_but_not_from_the_class_balanced_bank() -> None:
    prevalence = {"a": 0.8, "b": 0.2}  # the domains' prevalences differ, as hospitals' do
    # the probe learns the class where domain and class are independent (so it reads the class, not the domain)
    mu, sigma, labels, _ = _statistics(400, {"a": 0.5, "b": 0.5}, seed=0)
    probe = LogisticRegression(max_iter=2000).fit(_features(mu, sigma), labels.numpy())
    held_mu, held_sigma, held_labels, held_domains = _statistics(400, prevalence, seed=1)
    assert probe.score(_features(held_mu, held_sigma), held_labels.numpy()) > 0.95  # class is in the statistics
    # the previous bank: per-image statistics of (up to) 32 random images per domain
    rng = np.random.default_rng(2)
    where = np.array(held_domains)
    picks = np.concatenate([rng.choice(np.flatnonzero(where == d), 32, replace=False) for d in prevalence])
    old_scores = probe.predict_proba(_features(held_mu[picks], held_sigma[picks]))[:, 1]
    old_labels = held_labels.numpy()[picks]
    assert roc_auc_score(old_labels, old_scores) > 0.95  # its entries carry their images' class
    assert roc_auc_score(where[picks] == "a", old_scores) > 0.75  # and which domain is mostly malignant
    # the class-balanced bank from the same images, sampled as CausalTTA samples it
    bank = TokenStyleBank(("patho",), size=4, dim=C, layer=0)
    mean, mu_spread, sigma_mean, log_sigma_spread, names = class_balanced_styles(held_mu, held_sigma, held_labels,
                                                                                 held_domains)  # fmt: skip
    bank.fill("patho", mean, sigma_mean, names, mu_spread, log_sigma_spread)
    draws, draw_domains = [], []
    for domain in names:  # styles of each domain (the domain is the only thing a style may say)
        one = TokenStyleBank(("patho",), size=1, dim=C, layer=0)
        i = names.index(domain)
        one.fill("patho", mean[i : i + 1], sigma_mean[i : i + 1], [domain], mu_spread[i : i + 1],
                 log_sigma_spread[i : i + 1])  # fmt: skip
        drawn = one.sample("patho", 300, torch.Generator().manual_seed(3 + i))
        assert drawn is not None
        draws.append(_features(*drawn))
        draw_domains += [domain] * 300
    new_scores = probe.predict_proba(np.concatenate(draws))[:, 1]
    predicted = new_scores > 0.5
    assert abs(predicted.mean() - 0.5) < 0.1  # the probe calls half of the styles malignant: chance
    assert abs(roc_auc_score(np.array(draw_domains) == "a", new_scores) - 0.5) < 0.1  # prevalence does not leak
    # exactly label-free: swapping the class names gives the same bank, so no probe can tell the classes apart
    swapped = class_balanced_styles(held_mu, held_sigma, 1 - held_labels, held_domains)
    for x, y in zip(swapped[:4], (mean, mu_spread, sigma_mean, log_sigma_spread), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
    sampled = bank.sample("patho", 5, torch.Generator().manual_seed(0))
    assert sampled is not None and sampled[0].shape == (5, C) and bool((sampled[1] > 0).all())


def test_single_class_domains_get_no_row_and_bad_fills_are_refused() -> None:
    mu, sigma, labels, domains = _statistics(20, {"a": 0.5, "b": 0.5}, seed=4)
    labels = labels.clone()
    labels[20:] = 1  # domain b: one class only
    *_, names = class_balanced_styles(mu, sigma, labels, domains)
    assert names == ["a"]
    bank = TokenStyleBank(("mammo",), size=1, dim=C, layer=0)
    with pytest.raises(ConfigError, match="style_bank_size=1"):
        bank.fill("mammo", mu[:2], sigma[:2], ["a", "b"])
    with pytest.raises(ConfigError, match="mu_spread"):
        bank.fill("mammo", mu[:1], sigma[:1], ["a"], mu_spread=-torch.ones(1, C))


def test_a_checkpoint_from_before_the_spreads_loads_as_fixed_styles() -> None:
    bank = TokenStyleBank(("mammo",), size=2, dim=4, layer=0)
    old = {k: v for k, v in bank.state_dict().items() if "spread" not in k}
    old["mu_mammo"] = torch.ones(2, 4)
    old["domain_mammo"] = torch.tensor([0, -1])
    fresh = TokenStyleBank(("mammo",), size=2, dim=4, layer=0)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.spreads("mammo")[0], torch.zeros(1, 4))
