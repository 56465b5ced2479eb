"""Task losses: localization (mask and MIL), ordinal CORAL/CORN grading, masking of missing labels."""

from __future__ import annotations

import math

import pytest
import torch

from mammopath.errors import ConfigError
from mammopath.losses import grading_loss, localization_loss


def _bce(z: float, y: float) -> float:
    s = 1 / (1 + math.exp(-z))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


def _loc_out(b=4, h=2, w=3):
    torch.manual_seed(2)
    patch = torch.randn(b, h, w, requires_grad=True)
    image = torch.randn(b, requires_grad=True)
    return {"patch_logits": patch, "image_logit": image}


def test_localization_loss_masks_and_missing_labels():
    out = _loc_out()
    mask = torch.zeros(4, 8, 12)
    mask[0, :4, :4] = 1.0  # patch (0,0) fully, nothing else
    mask[0, 4:, 10:] = 1.0  # half of patch (1,2)
    has_mask = torch.tensor([True, False, False, False])
    label = torch.tensor([0.0, 1.0, float("nan"), -1.0])
    loss = localization_loss(out, mask, has_mask, label)

    target = mask[0].view(2, 4, 3, 4).mean(dim=(1, 3))  # area average per 4x4 patch, computed independently
    assert target[0, 0] == 1 and target[1, 2] == 0.5 and target.sum() == 1.5
    pix = sum(_bce(out["patch_logits"][0, i, j].item(), target[i, j].item()) for i in range(2) for j in range(3)) / 6
    mil = _bce(out["image_logit"][1].item(), 1.0)
    assert loss.item() == pytest.approx((pix + mil) / 2, rel=1e-5)

    loss.backward()
    g = out["image_logit"].grad
    assert g[1] != 0 and g[0] == 0 and g[2] == 0 and g[3] == 0  # masked sample uses its mask; missing ignored
    assert out["patch_logits"].grad[1:].abs().sum() == 0
    # the label of a masked sample does not matter
    assert localization_loss(out, mask, has_mask, torch.tensor([1.0, 1.0, -1, -1])).item() == pytest.approx(loss.item())


def test_localization_loss_nothing_contributes_and_bad_input():
    out = _loc_out()
    loss = localization_loss(out, None, torch.zeros(4, dtype=torch.bool), torch.tensor([float("nan"), -1, -1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert out["image_logit"].grad.abs().sum() == 0
    with pytest.raises(ConfigError, match="mask is None"):
        localization_loss(out, None, torch.tensor([True, False, False, False]), torch.zeros(4))
    has_mask, label = torch.zeros(4, dtype=torch.bool), torch.tensor([1.0, 0.0, -1.0, 1.0])
    assert localization_loss(out, None, has_mask, label) > 0  # weak labels alone contribute


def test_coral_loss_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.3, -0.2, -2.0], [1.0, 1.0, 1.0]])
    grade = torch.tensor([2, 0, 3])
    loss = grading_loss({"bach": logits}, grade, ["bach"] * 3, method="coral")
    hand = 0.0
    for i in range(3):
        for k in range(3):
            hand += _bce(logits[i, k].item(), float(grade[i].item() > k))
    assert loss.item() == pytest.approx(hand / 3, rel=1e-6)


def test_corn_loss_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.3, -0.2, -2.0], [1.0, -1.0, 1.5]])
    grade = torch.tensor([2, 0, 1])
    loss = grading_loss({"bach": logits}, grade, ["bach"] * 3, method="corn")
    hand, n = 0.0, 0
    for i in range(3):
        y = int(grade[i])
        for k in range(3):
            if y > k - 1:  # task k sees only samples that passed level k-1
                hand += _bce(logits[i, k].item(), float(y > k))
                n += 1
    assert n == 6
    assert loss.item() == pytest.approx(hand / n, rel=1e-6)


@pytest.mark.parametrize("method", ["coral", "corn"])
def test_grading_loss_masks_missing_and_pools_schemes(method):
    torch.manual_seed(3)
    a, b = torch.randn(5, 3, requires_grad=True), torch.randn(5, 5, requires_grad=True)
    grade = torch.tensor([1, 4, -1, 2, 0])
    schemes = ["bach", "birads", "bach", "", "bach"]
    loss = grading_loss({"bach": a, "birads": b}, grade, schemes, method=method)
    # same loss from only the graded samples, each scheme alone, pooled by the method's normaliser
    la = grading_loss({"bach": a[[0, 4]]}, grade[[0, 4]], ["bach", "bach"], method=method)
    lb = grading_loss({"birads": b[[1]]}, grade[[1]], ["birads"], method=method)
    # coral normalises by samples; corn by (sample, task) pairs: grade 1 -> tasks 0,1; 0 -> 0; 4 (K=6) -> 0..4
    na, nb = (2, 1) if method == "coral" else (3, 5)
    assert loss.item() == pytest.approx((la.item() * na + lb.item() * nb) / (na + nb), rel=1e-6)
    loss.backward()
    assert a.grad[[1, 2, 3]].abs().sum() == 0 and b.grad[[0, 2, 3, 4]].abs().sum() == 0

    none = grading_loss({"bach": a}, torch.tensor([-1, 2]), ["bach", ""], method=method)
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ConfigError, match=r"unknown grade scheme\(s\) \['pn'\]"):
        grading_loss({"bach": a}, torch.tensor([0]), ["pn"], method=method)
    with pytest.raises(ConfigError, match="has 4 grades but got grade 4"):
        grading_loss({"bach": a[:1]}, torch.tensor([4]), ["bach"], method=method)
