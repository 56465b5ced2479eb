"""Contrastive-loss behaviours that `make mutation` found unpinned (docs/mutation.md)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from mammopath.losses import (
    CrossModalContrastiveLoss,
    cross_modal_contrastive_loss,
    intra_modal_contrastive_loss,
    positive_matrix,
    scale_grad,
)
from mammopath.losses.distributed import Gather


def test_scale_zero_detaches_so_no_backward_reaches_the_encoder() -> None:
    """``0 = detached`` (the docstring): no graph at all, not a graph with a zero gradient."""
    x = torch.randn(3, 2, requires_grad=True)
    out = scale_grad(x * 2, 0.0)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.equal(out, x.detach() * 2)


def test_intra_modal_term_without_positives_is_a_zero_that_keeps_the_graph() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    none = torch.zeros(4, 4, dtype=torch.bool)
    loss = intra_modal_contrastive_loss(z, none, 1 / 0.07)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))
    # the diagonal is never a positive: only self-pairs given is the same as none
    assert intra_modal_contrastive_loss(z, torch.eye(4, dtype=torch.bool), 1 / 0.07).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
def test_intra_modal_positives_given_as_numbers_are_read_as_booleans(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, generator=g)
    positives = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]])
    want = intra_modal_contrastive_loss(z, positives.bool(), 2.0)
    assert intra_modal_contrastive_loss(z, positives.to(dtype), 2.0).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A real (gloo) process group of one rank, in this process: the distributed code paths run, on one CPU."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _step() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    z = {"mammo": torch.randn(4, 3, generator=g), "patho": torch.randn(3, 3, generator=g)}
    keys = {
        "mammo": {"patient": torch.tensor([0, 1, 5, 6]), "cls": torch.tensor([1, 0, 1, 0]),
                  "paired": torch.tensor([True, True, False, False])},
        "patho": {"patient": torch.tensor([0, 1, 7]), "cls": torch.tensor([1, 0, 1]),
                  "paired": torch.tensor([True, True, False])},
    }  # fmt: skip
    return z, keys


def _loss_and_grads(gather: Gather | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    z, keys = _step()
    leaves = {m: v.clone().requires_grad_(True) for m, v in z.items()}
    loss = CrossModalContrastiveLoss()(leaves, keys, torch.tensor(2.0), gather=gather)
    loss.backward()
    return loss.item(), {m: v.grad for m, v in leaves.items()}  # type: ignore[misc]


@pytest.mark.usefixtures("one_process_group")
def test_gathered_embeddings_keep_their_gradient_under_a_process_group() -> None:
    """Two paths must agree: one rank of a real process group gives the single-process loss and gradients."""
    import torch.distributed as dist

    calls: list[tuple[int, ...]] = []

    def gather(t: torch.Tensor) -> torch.Tensor:  # the strategy's differentiable all-gather, recorded
        calls.append(tuple(t.shape))
        return torch.stack([t])

    assert dist.is_initialized()
    loss, grads = _loss_and_grads(gather)
    dist.destroy_process_group()
    try:
        plain_loss, plain_grads = _loss_and_grads()
    finally:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for m in ("mammo", "patho"):
        assert grads[m] is not None and torch.count_nonzero(grads[m]) > 0
        assert torch.allclose(grads[m], plain_grads[m], atol=1e-6)
    # the given gather carried the embeddings and every key (patient, cls, paired) of both modalities
    assert sorted(calls) == sorted([(4, 3), (3, 3), (4,), (4,), (4,), (3,), (3,), (3,)])


@pytest.mark.parametrize("weight", [0.5, 1.0, 3.0])
def test_a_pairing_kind_present_in_one_modality_only_adds_no_term(weight: float) -> None:
    """Paired mammograms whose pathology is not in this step have nothing to contrast with: the loss is the
    label-level term of the unpaired rows alone, not its weighted mean with an empty patient-level term."""
    z, keys = _step()
    # pathology: only unpaired rows (patients 7 and 8, classes 1 and 0); mammography keeps its paired rows
    z["patho"] = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    keys["patho"] = {"patient": torch.tensor([7, 8]), "cls": torch.tensor([1, 0]), "paired": torch.tensor([False] * 2)}
    loss = CrossModalContrastiveLoss(label_level_weight=weight)(z, keys, torch.tensor(2.0))
    unpaired = ~keys["mammo"]["paired"]
    km = {k: v[unpaired] for k, v in keys["mammo"].items()}
    kp = keys["patho"]
    positives = positive_matrix(km["patient"], km["cls"], km["paired"], kp["patient"], kp["cls"], kp["paired"])
    assert positives.any()
    want = cross_modal_contrastive_loss(z["mammo"][unpaired], z["patho"], positives, 2.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6) and want.item() > 0


def test_a_step_where_nothing_can_be_positive_is_a_zero_that_keeps_the_graph() -> None:
    """Mammography only of paired patients, pathology only of unpaired ones: no pair of either kind exists."""
    z, keys = _step()
    paired = keys["mammo"]["paired"]
    z["mammo"] = z["mammo"][paired].clone().requires_grad_(True)
    keys["mammo"] = {k: v[paired] for k, v in keys["mammo"].items()}
    unpaired = ~keys["patho"]["paired"]
    z["patho"] = z["patho"][unpaired].clone().requires_grad_(True)
    keys["patho"] = {k: v[unpaired] for k, v in keys["patho"].items()}
    scale = torch.tensor(2.0, requires_grad=True)
    loss = CrossModalContrastiveLoss()(z, keys, scale)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    for leaf in (z["mammo"], z["patho"], scale):
        assert leaf.grad is not None and torch.count_nonzero(leaf.grad) == 0


def _naive_supcon(z: torch.Tensor, keys: dict[str, torch.Tensor], scale: float) -> float:
    """SupCon within one modality, written out: positives by the pairing rule, self excluded."""
    rows = torch.nn.functional.normalize(z.double(), dim=1).tolist()
    patient, cls, paired = keys["patient"].tolist(), keys["cls"].tolist(), keys["paired"].tolist()
    terms = []
    for i, a in enumerate(rows):
        sims = {j: scale * sum(x * y for x, y in zip(a, b, strict=True)) for j, b in enumerate(rows) if j != i}
        positives = [
            j
            for j in sims
            if (paired[i] and paired[j] and patient[i] == patient[j])
            or (not paired[i] and not paired[j] and cls[i] == cls[j] and cls[i] >= 0)
        ]
        if positives:
            log_norm = math.log(sum(math.exp(s) for s in sims.values()))
            terms.append(-sum(sims[j] - log_norm for j in positives) / len(positives))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_the_intra_modal_term_adds_half_the_weighted_supcon_of_each_modality(weight: float) -> None:
    z, keys = _step()
    # every modality gets positives of its own: a second row of paired patient 0, a second class-1 unpaired row
    z["mammo"] = torch.cat([z["mammo"], torch.randn(2, 3, generator=torch.Generator().manual_seed(2))])
    keys["mammo"] = {
        "patient": torch.tensor([0, 1, 5, 6, 0, 9]), "cls": torch.tensor([1, 0, 1, 0, 1, 1]),
        "paired": torch.tensor([True, True, False, False, True, False]),
    }  # fmt: skip
    z["patho"] = torch.cat([z["patho"], torch.randn(1, 3, generator=torch.Generator().manual_seed(3))])
    keys["patho"] = {k: torch.cat([v, v[:1]]) for k, v in keys["patho"].items()}  # patient 0 twice
    plain = CrossModalContrastiveLoss()(z, keys, torch.tensor(2.0)).item()
    both = CrossModalContrastiveLoss(intra_modal=weight)(z, keys, torch.tensor(2.0)).item()
    intra = {m: _naive_supcon(z[m], keys[m], 2.0) for m in ("mammo", "patho")}
    assert intra["mammo"] > 0 and intra["patho"] > 0
    assert both == pytest.approx(plain + weight * 0.5 * (intra["mammo"] + intra["patho"]), rel=1e-5)


@pytest.mark.parametrize(("m_shape", "p_shape"), [((3, 4), (2, 5)), ((3, 4, 1), (2, 4)), ((3, 4), (2, 4, 1))])
def test_embeddings_of_the_wrong_shape_are_refused_each_on_its_own(m_shape: tuple, p_shape: tuple) -> None:
    from mammopath.errors import ConfigError

    positives = torch.zeros(m_shape[0], p_shape[0], dtype=torch.bool)
    with pytest.raises(ConfigError, match=r"embeddings must be \[n, d\] with the same d"):
        cross_modal_contrastive_loss(torch.randn(m_shape), torch.randn(p_shape), positives, 1.0)


def test_positives_of_the_wrong_shape_are_refused_with_the_expected_shape() -> None:
    from mammopath.errors import ConfigError

    with pytest.raises(ConfigError, match=r"positives must be \[3, 2\]; got \(2, 3\)"):
        cross_modal_contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), torch.zeros(2, 3, dtype=torch.bool), 1.0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_cross_modal_positives_given_as_numbers_are_read_as_booleans(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    zm, zp = torch.randn(3, 4, generator=g), torch.randn(4, 4, generator=g)
    positives = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    want = cross_modal_contrastive_loss(zm, zp, positives.bool(), 2.0).item()
    assert cross_modal_contrastive_loss(zm, zp, positives.to(dtype), 2.0).item() == pytest.approx(want, rel=1e-6)


def test_no_positive_at_all_keeps_both_modalities_and_the_scale_in_the_graph() -> None:
    zm, zp = torch.randn(3, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = cross_modal_contrastive_loss(zm, zp, torch.zeros(3, 2, dtype=torch.bool), scale)
    assert loss.item() == 0.0
    loss.backward()
    for leaf in (zm, zp, scale):  # DDP needs every parameter that produced them in the graph
        assert leaf.grad is not None and torch.count_nonzero(leaf.grad) == 0


def test_by_default_the_two_pairing_kinds_weigh_the_same() -> None:
    z, keys = _step()  # mammography: patients 0, 1 paired, 5, 6 not; pathology: 0, 1 paired, 7 not

    def term(kind: bool) -> float:
        rows, cols = keys["mammo"]["paired"] == kind, keys["patho"]["paired"] == kind
        km = {k: v[rows] for k, v in keys["mammo"].items()}
        kp = {k: v[cols] for k, v in keys["patho"].items()}
        pos = positive_matrix(km["patient"], km["cls"], km["paired"], kp["patient"], kp["cls"], kp["paired"])
        return cross_modal_contrastive_loss(z["mammo"][rows], z["patho"][cols], pos, 2.0).item()

    got = CrossModalContrastiveLoss()(z, keys, torch.tensor(2.0)).item()
    assert got == pytest.approx((term(True) + term(False)) / 2, rel=1e-6)
