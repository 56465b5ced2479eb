"""IRM and MixStyle behaviours that `make mutation` found unpinned (docs/mutation.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mammopath.callbacks.irm import IRM
from mammopath.dg.mixstyle import restyle


def _optimizer_with_state() -> tuple[torch.optim.Optimizer, torch.nn.Parameter]:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    (weight**2).sum().backward()
    optimizer.step()
    return optimizer, weight


def test_an_anneal_of_one_step_resets_the_optimizer_at_step_one() -> None:
    optimizer, _ = _optimizer_with_state()
    irm = IRM(anneal_steps=1)
    irm.on_train_batch_start(SimpleNamespace(global_step=0, optimizers=[optimizer]), None, None, 0)  # type: ignore[arg-type]
    assert optimizer.state  # step 0: still at weight 1.0
    irm.on_train_batch_start(SimpleNamespace(global_step=1, optimizers=[optimizer]), None, None, 1)  # type: ignore[arg-type]
    assert not optimizer.state


def test_without_an_anneal_the_optimizer_state_is_never_reset_not_even_on_resume() -> None:
    """anneal_steps=0: λ from the start, nothing to reset; a run resumed at step 7 keeps its Adam moments."""
    optimizer, _ = _optimizer_with_state()
    irm = IRM(anneal_steps=0)
    for step in (7, 8):
        irm.on_train_batch_start(SimpleNamespace(global_step=step, optimizers=[optimizer]), None, None, step)  # type: ignore[arg-type]
        assert optimizer.state
    assert irm.weight(0) == irm.penalty_weight


@pytest.mark.parametrize(("prefix", "eps"), [(0, 0.0), (1, 0.0), (2, 0.0), (1, 0.5)])
def test_restyle_gives_the_patch_tokens_the_new_statistics_and_keeps_the_prefix(prefix: int, eps: float) -> None:
    g = torch.Generator().manual_seed(prefix)
    tokens = torch.randn(2, prefix + 6, 4, generator=g) * 3 + 1
    mu, sigma = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.0, 0.5, 2.0, 3.0])
    out = restyle(tokens, mu, sigma, num_prefix_tokens=prefix, eps=eps)
    assert torch.equal(out[:, :prefix], tokens[:, :prefix])
    patches = out[:, prefix:]
    # written out: per image and channel, over the patch tokens (unbiased variance, eps inside the root)
    for b in range(2):
        for c in range(4):
            x = tokens[b, prefix:, c].double()
            m, s = x.mean(), (((x - x.mean()) ** 2).sum().div(len(x) - 1) + eps).sqrt()
            want = sigma[c].double() * (x - m) / s + mu[c].double()
            assert torch.allclose(patches[b, :, c].double(), want, atol=1e-5)
    # a per-image style [B, 1, C] applies to its own image only
    per_image = restyle(tokens, torch.stack([mu, -mu])[:, None], torch.stack([sigma, sigma])[:, None], prefix, eps)
    assert torch.allclose(per_image[0], out[0], atol=1e-6)
    assert torch.allclose(per_image[1, prefix:].mean(dim=0), -mu, atol=1e-5)


def test_restyle_keeps_the_token_dtype() -> None:
    tokens = torch.randn(1, 5, 3).half()
    out = restyle(tokens, torch.zeros(3), torch.ones(3))
    assert out.dtype == torch.float16 and out.shape == tokens.shape


def test_restyle_by_default_keeps_one_class_token_and_gives_the_exact_new_style() -> None:
    """The defaults are a ViT's: one prefix (CLS) token; eps small enough that σ comes out as asked."""
    tokens = torch.randn(3, 17, 4, generator=torch.Generator().manual_seed(0)) * 3
    mu, sigma = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 1.0, 1.5, 2.0])
    out = restyle(tokens, mu, sigma)
    assert torch.equal(out[:, 0], tokens[:, 0]) and not torch.allclose(out[:, 1], tokens[:, 1])
    patches = out[:, 1:]
    assert torch.allclose(patches.mean(dim=1), mu.expand(3, 4), atol=1e-4)
    assert torch.allclose(patches.std(dim=1), sigma.expand(3, 4), rtol=1e-4)


def test_random_partners_draw_from_the_given_generator_only() -> None:
    from mammopath.dg.mixstyle import crossdomain_partners, random_partners

    state = torch.get_rng_state()
    first = random_partners(16, torch.Generator().manual_seed(3))
    again = random_partners(16, torch.Generator().manual_seed(3))
    other = random_partners(16, torch.Generator().manual_seed(4))
    domains = ["a", "b", "c"] * 5
    cross = crossdomain_partners(domains, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator untouched
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(16))  # a permutation
    assert cross is not None and torch.equal(cross, crossdomain_partners(domains, torch.Generator().manual_seed(3)))


def test_the_epoch_logs_the_skipped_and_single_environment_counts() -> None:
    irm = IRM(min_samples=2)
    logits = torch.tensor([0.5, -0.2, 0.1, 0.3, -0.4, 0.2])
    batch = {
        "mammo": {"label": torch.tensor([1, 0, 1, 0, 1, -1]), "domain": ["a", "a", "a", "a", "b", "b"]},
        "patho": {"label": torch.tensor([1, 0]), "domain": ["c", "c"]},
    }
    outputs = {"mammo": {"cls_logit": logits}, "patho": {"cls_logit": logits[:2]}}
    irm.penalty(None, batch, outputs)
    # mammography: a (4 labelled) and b (1 labelled: skipped); pathology: one environment only
    assert (irm.skipped, irm.single_env) == (1, 1)
    irm.penalty(None, batch, outputs)  # the counts add up over the epoch's steps
    logged: dict[str, float] = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, value))
    irm.on_train_epoch_end(None, module)  # type: ignore[arg-type]
    assert logged == {"dg/irm_skipped_envs": 2.0, "dg/irm_single_env_batches": 2.0}


def test_the_registered_term_is_the_penalty_and_its_weight_the_anneal_schedule() -> None:
    from mammopath.losses.objective import Objective

    irm = IRM(penalty_weight=7.0, anneal_steps=2)
    objective = Objective()
    module = SimpleNamespace(register_loss_term=objective.register, unregister_loss_term=objective.unregister)
    irm.setup(None, module, "validate")  # type: ignore[arg-type]
    assert "irm" not in objective.registered  # only a fit trains with it
    irm.setup(None, module, "fit")  # type: ignore[arg-type]
    term = objective.registered["irm"]
    assert [objective.weight("irm", s) for s in (0, 1, 2, 9)] == [1.0, 1.0, 7.0, 7.0]
    logits = torch.tensor([0.5, -0.2, 0.1, 0.3])
    batch = {"mammo": {"label": torch.tensor([1, 0, 1, 0]), "domain": ["a"] * 4}}
    got = term.fn(None, batch, {"mammo": {"cls_logit": logits}})
    from mammopath.dg import irm_penalty

    assert got.item() == pytest.approx(irm_penalty(logits, torch.tensor([1.0, 0.0, 1.0, 0.0])).item())
    irm.teardown(None, module, "validate")  # type: ignore[arg-type]
    assert "irm" in objective.registered
    irm.teardown(None, module, "fit")  # type: ignore[arg-type]
    assert "irm" not in objective.registered


def test_the_penalty_is_the_mean_over_each_environment_of_its_own_rows() -> None:
    from mammopath.dg import irm_penalty

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, generator=g)
    labels = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0])
    domains = ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "b", "c"]  # three environments, interleaved
    batch = {"mammo": {"label": labels, "domain": domains}}
    got = IRM(min_samples=4).penalty(None, batch, {"mammo": {"cls_logit": logits}})
    per_env = [irm_penalty(logits[[i for i, d in enumerate(domains) if d == e]],
                           labels[[i for i, d in enumerate(domains) if d == e]].float()) for e in "abc"]  # fmt: skip
    assert got.item() == pytest.approx(torch.stack(per_env).mean().item(), rel=1e-5)


def test_a_step_without_a_usable_environment_is_a_zero_that_keeps_the_graph() -> None:
    logits = torch.tensor([0.5, -0.2, 0.1], requires_grad=True)
    batch = {"mammo": {"label": torch.tensor([1, 0, -1]), "domain": ["a", "b", "b"]}}
    irm = IRM(min_samples=2)
    got = irm.penalty(None, batch, {"mammo": {"cls_logit": logits * 2}})
    assert got.item() == 0.0 and got.requires_grad and irm.skipped == 2
    got.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_the_defaults_are_domainbeds() -> None:
    """λ = 100 from step 500 (DomainBed's IRM, as the class docstring says); 4 labelled samples per environment."""
    irm = IRM()
    assert (irm.weight(499), irm.weight(500)) == (1.0, 100.0)
    logits = torch.tensor([0.5, -0.2, 0.1, 0.3, 0.2, -0.1, 0.4])
    batch = {"mammo": {"label": torch.tensor([1, 0, 1, 0, 1, 0, 1]), "domain": ["a"] * 4 + ["b"] * 3}}
    irm.penalty(None, batch, {"mammo": {"cls_logit": logits}})
    assert irm.skipped == 1  # b has 3 < 4


@pytest.mark.parametrize("kwargs", [{"penalty_weight": -0.1}, {"anneal_steps": -1}, {"min_samples": 1}])
def test_invalid_irm_settings_are_refused_each_on_its_own(kwargs: dict[str, float]) -> None:
    from mammopath.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^IRM needs penalty_weight >= 0, anneal_steps >= 0 and min_samples >= 2$"):
        IRM(**kwargs)  # type: ignore[arg-type]


def test_the_boundary_irm_settings_are_allowed() -> None:
    irm = IRM(penalty_weight=0.0, anneal_steps=0, min_samples=2)
    assert (irm.penalty_weight, irm.anneal_steps, irm.min_samples) == (0.0, 0, 2)
    assert IRM(penalty_weight=0.5).penalty_weight == 0.5


def test_irm_penalty_needs_two_samples_and_equal_lengths() -> None:
    from mammopath.dg import irm_penalty
    from mammopath.errors import ConfigError

    two = irm_penalty(torch.tensor([0.3, -0.4]), torch.tensor([1.0, 0.0]))  # one sample per half is enough
    assert torch.isfinite(two) and two.item() > 0
    with pytest.raises(ConfigError, match=r"^irm_penalty needs at least 2 samples \(one per half\)$"):
        irm_penalty(torch.tensor([0.3]), torch.tensor([1.0]))
    with pytest.raises(ConfigError, match=r"logits and targets differ in length \(5 vs 4\)"):
        irm_penalty(torch.zeros(5), torch.zeros(4))


def test_binary_targets_may_be_integers() -> None:
    from mammopath.dg import irm_penalty

    logits = torch.tensor([0.3, -0.4, 1.2, -0.1, 0.5, 0.0], dtype=torch.float64)
    as_int = irm_penalty(logits, torch.tensor([1, 0, 1, 1, 0, 0]))
    as_float = irm_penalty(logits, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert as_int.item() == pytest.approx(as_float.item(), rel=1e-12)


def test_the_penalty_gradient_flows_through_both_half_gradients() -> None:
    """For BCE at w = 1, ∂L/∂w = mean((σ(z) − y)·z): the penalty and its gradient in closed form."""
    from mammopath.dg import irm_penalty

    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    irm_penalty(z, y).backward()
    ours = z.grad.clone()  # type: ignore[union-attr]
    z.grad = None
    half = lambda s: ((torch.sigmoid(z[s]) - y[s]) * z[s]).mean()  # noqa: E731
    (half(slice(0, None, 2)) * half(slice(1, None, 2))).backward()
    assert torch.allclose(ours, z.grad, atol=1e-12)  # type: ignore[arg-type]


def test_mixstyle_by_default_keeps_one_class_token() -> None:
    from mammopath.dg.mixstyle import mixstyle

    g = torch.Generator().manual_seed(0)
    tokens = torch.stack([torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g) * 4 + 2])
    out = mixstyle(tokens, torch.zeros(2), torch.tensor([1, 0]))  # λ = 0: each image takes its partner's style
    assert torch.equal(out[:, 0], tokens[:, 0])
    assert torch.allclose(out[0, 1:].mean(dim=0), tokens[1, 1:].mean(dim=0), atol=1e-5)


def test_mixstyle_passes_its_eps_to_the_statistics() -> None:
    from mammopath.dg.mixstyle import mixstyle

    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    out = mixstyle(tokens, torch.zeros(2), torch.tensor([1, 0]), num_prefix_tokens=1, eps=0.5)
    x = tokens[:, 1:]
    mu, sd = x.mean(dim=1, keepdim=True), (x.var(dim=1, keepdim=True) + 0.5).sqrt()  # eps inside the root
    want = sd[[1, 0]] * (x - mu) / sd + mu[[1, 0]]
    assert torch.allclose(out[:, 1:], want, atol=1e-9)


def test_token_statistics_defaults_exclude_one_class_token_with_a_tiny_eps() -> None:
    from mammopath.dg.mixstyle import token_statistics

    tokens = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(2)) * 2
    tokens[:, 0] = 1000.0  # a class token far from the patches: counted, it would dominate
    mu, sigma = token_statistics(tokens)
    assert torch.allclose(mu[:, 0], tokens[:, 1:].mean(dim=1), atol=1e-5)
    assert torch.allclose(sigma[:, 0], tokens[:, 1:].std(dim=1), rtol=1e-5)


def test_token_statistics_refuse_other_shapes_and_mixstyle_keeps_the_dtype() -> None:
    from mammopath.dg.mixstyle import mixstyle, token_statistics
    from mammopath.errors import ConfigError

    with pytest.raises(ConfigError, match=r"token statistics need tokens \[B, T, C\]; got shape \(2, 3\)"):
        token_statistics(torch.zeros(2, 3))
    tokens = torch.randn(2, 5, 3).half()
    assert mixstyle(tokens, torch.full((2,), 0.5), torch.tensor([1, 0])).dtype == torch.float16


def test_token_statistics_need_two_patch_tokens() -> None:
    from mammopath.dg.mixstyle import token_statistics
    from mammopath.errors import ConfigError

    mu, sigma = token_statistics(torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 6.0]]]))  # 2 patch tokens: enough
    assert mu.tolist() == [[[2.0, 4.0]]] and torch.allclose(sigma, torch.tensor([[[2.0**0.5, 8.0**0.5]]]))
    with pytest.raises(ConfigError, match="token statistics need at least 2 patch tokens; got 1"):
        token_statistics(torch.zeros(1, 2, 4))  # a class token and one patch token
