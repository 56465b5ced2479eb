"""The cross-modal contrastive loss against a straightforward implementation, and the pairing positives."""

from __future__ import annotations

import math

import pytest
import torch

from mammopath.errors import ConfigError
from mammopath.losses import (
    CrossModalContrastiveLoss,
    cross_modal_contrastive_loss,
    intra_modal_contrastive_loss,
    positive_matrix,
    scale_grad,
)


def naive(z_m: torch.Tensor, z_p: torch.Tensor, pos: torch.Tensor, scale: float) -> float:
    """The definition, written out with loops in float64."""

    def unit(r: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in r))
        return [x / norm for x in r]

    u = [unit(r) for r in z_m.double().tolist()]
    v = [unit(r) for r in z_p.double().tolist()]
    s = [[scale * sum(a * b for a, b in zip(ui, vj, strict=True)) for vj in v] for ui in u]

    def direction(matrix: list[list[float]], positives: list[list[bool]]) -> float | None:
        terms = []
        for row, prow in zip(matrix, positives, strict=True):
            if not any(prow):
                continue
            log_norm = math.log(sum(math.exp(x) for x in row))
            chosen = [x - log_norm for x, p in zip(row, prow, strict=True) if p]
            terms.append(-sum(chosen) / len(chosen))
        return sum(terms) / len(terms) if terms else None

    p = pos.tolist()
    cols = [list(c) for c in zip(*s, strict=True)] if s and s[0] else [[] for _ in v]
    pcols = [list(c) for c in zip(*p, strict=True)] if p and p[0] else [[] for _ in v]
    parts = [direction(s, p), direction(cols, pcols)]
    return 0.5 * sum(t for t in parts if t is not None)


@pytest.mark.parametrize("seed", range(6))
def test_loss_matches_the_definition_on_random_inputs(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n_m, n_p, d = 5 + seed % 3, 7 - seed % 2, 4
    z_m, z_p = torch.randn(n_m, d, generator=g), torch.randn(n_p, d, generator=g)
    pos = torch.rand(n_m, n_p, generator=g) < 0.3
    pos[0] = False  # an anchor with no positive
    pos[:, 1] = False  # a column anchor with no positive
    scale = float(torch.empty(()).uniform_(1.0, 30.0, generator=g))
    ours = cross_modal_contrastive_loss(z_m, z_p, pos, torch.tensor(scale))
    assert ours.item() == pytest.approx(naive(z_m, z_p, pos, scale), rel=1e-5, abs=1e-6)


def test_a_direction_without_positives_contributes_zero_and_keeps_the_graph() -> None:
    z_m = torch.randn(3, 4, requires_grad=True)
    z_p = torch.randn(2, 4, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    none = torch.zeros(3, 2, dtype=torch.bool)
    loss = cross_modal_contrastive_loss(z_m, z_p, none, scale)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert z_m.grad is not None and z_m.grad.abs().sum() == 0
    one = none.clone()
    one[1, 0] = True  # rows: anchor 1 only; columns: anchor 0 only
    assert cross_modal_contrastive_loss(z_m, z_p, one, 10.0).item() == pytest.approx(
        naive(z_m, z_p, one, 10.0), rel=1e-5
    )
    empty = cross_modal_contrastive_loss(torch.zeros(0, 4), z_p, torch.zeros(0, 2, dtype=torch.bool), scale)
    assert empty.item() == 0.0
    with pytest.raises(ConfigError, match="positives must be"):
        cross_modal_contrastive_loss(z_m, z_p, torch.zeros(2, 2, dtype=torch.bool), scale)


def test_positives_are_patients_for_true_pairs_and_classes_otherwise() -> None:
    patient_a, cls_a = torch.tensor([0, 0, 1, 5]), torch.tensor([1, 1, 0, 1])
    paired_a = torch.tensor([True, True, True, False])
    patient_b, cls_b = torch.tensor([0, 1, 7, 8]), torch.tensor([1, 0, 1, -1])
    paired_b = torch.tensor([True, True, False, False])
    pos = positive_matrix(patient_a, cls_a, paired_a, patient_b, cls_b, paired_b)
    expected = torch.tensor(
        [
            [True, False, False, False],  # paired patient 0: its own pathology only
            [True, False, False, False],
            [False, True, False, False],  # paired patient 1 (class 0): patient 1, not the class-0 peers
            [False, False, True, False],  # unpaired, class 1: unpaired class-1 samples; unknown class never
        ]
    )
    assert torch.equal(pos, expected)


def test_unknown_classes_are_never_positives_even_of_each_other() -> None:
    # unpaired samples of unknown class (-1) on both sides: -1 == -1 must not make them a label-level pair
    cls_a, cls_b = torch.tensor([-1, -1, 0, 1]), torch.tensor([-1, 0, -1, 1])
    unpaired_a, unpaired_b = torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    pos = positive_matrix(torch.arange(4), cls_a, unpaired_a, torch.arange(10, 14), cls_b, unpaired_b)
    expected = torch.tensor(
        [
            [False, False, False, False],  # unknown: no positive at all
            [False, False, False, False],
            [False, True, False, False],  # class 0: the class-0 sample only
            [False, False, False, True],  # class 1: the class-1 sample only
        ]
    )
    assert torch.equal(pos, expected)
    # the same holds within one modality (the intra-modal term uses the same positives)
    within = positive_matrix(torch.arange(4), cls_a, unpaired_a, torch.arange(4), cls_a, unpaired_a)
    assert not within[:2].any() and not within[:, :2].any()


def test_intra_modal_term_excludes_self() -> None:
    z = torch.randn(4, 3)
    pos = torch.ones(4, 4, dtype=torch.bool)
    loss = intra_modal_contrastive_loss(z, pos, 5.0)
    u = torch.nn.functional.normalize(z, dim=1)
    logits = 5.0 * u @ u.T
    logits.fill_diagonal_(float("-inf"))
    expected = -(torch.log_softmax(logits, 1).masked_fill(torch.eye(4, dtype=torch.bool), 0).sum(1) / 3).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert intra_modal_contrastive_loss(z[:1], pos[:1, :1], 5.0).item() == 0.0


def _step(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """A step with 3 paired patients (both modalities) and 4 unpaired samples per modality."""
    g = torch.Generator().manual_seed(seed)
    z = {"mammo": torch.randn(7, 5, generator=g), "patho": torch.randn(7, 5, generator=g)}
    patients = {"mammo": [0, 1, 2, 10, 11, 12, 13], "patho": [2, 0, 1, 20, 21, 22, 23]}
    classes = {"mammo": [0, 1, 0, 0, 1, 1, 0], "patho": [0, 0, 1, 1, 0, 1, 0]}
    keys = {
        m: {
            "patient": torch.tensor(patients[m]),
            "cls": torch.tensor(classes[m]),
            "paired": torch.tensor([True] * 3 + [False] * 4),
        }
        for m in z
    }
    return z, keys


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0, 3.0])
def test_label_level_weight_balances_the_two_pairing_kinds(weight: float) -> None:
    z, keys = _step(0)
    loss = CrossModalContrastiveLoss(label_level_weight=weight)(z, keys, torch.tensor(7.0))
    # independently: the patient-level term on the paired rows, the label-level term on the unpaired ones
    paired = torch.tensor([[p == q for q in keys["patho"]["patient"][:3].tolist()] for p in [0, 1, 2]])
    cm, cp = keys["mammo"]["cls"][3:].tolist(), keys["patho"]["cls"][3:].tolist()
    labelled = torch.tensor([[a == b for b in cp] for a in cm])
    patient_term = naive(z["mammo"][:3], z["patho"][:3], paired, 7.0)
    label_term = naive(z["mammo"][3:], z["patho"][3:], labelled, 7.0)
    assert loss.item() == pytest.approx((patient_term + weight * label_term) / (1 + weight), rel=1e-5)


def test_label_level_weight_is_ignored_when_a_step_has_one_pairing_kind() -> None:
    z, keys = _step(1)
    only = {m: z[m][3:] for m in z}
    only_keys = {m: {k: v[3:] for k, v in keys[m].items()} for m in keys}
    a = CrossModalContrastiveLoss(label_level_weight=1.0)(only, only_keys, torch.tensor(5.0))
    b = CrossModalContrastiveLoss(label_level_weight=0.1)(only, only_keys, torch.tensor(5.0))
    assert a.item() == pytest.approx(b.item(), rel=1e-6) and a.item() > 0
    with pytest.raises(ConfigError, match="align_label_level_weight"):
        CrossModalContrastiveLoss(label_level_weight=-0.5)


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_scale_grad_keeps_the_forward_and_scales_the_gradient(scale: float) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    y = scale_grad(x, scale)
    assert torch.equal(y, x)
    ((y**2).sum() + 0.0 * x.sum()).backward()  # the second term keeps a graph when y is detached
    assert x.grad is not None
    torch.testing.assert_close(x.grad, scale * 2 * x.detach())
