"""Heads: classification outputs, localisation maps/loss/boxes, ordinal CORAL/CORN grading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import cohen_kappa_score

from mammopath.errors import ConfigError
from mammopath.losses import grading_loss
from mammopath.models.heads import (
    ClassificationHead,
    CoralLayer,
    GradingHead,
    LocalizationHead,
    box_from_heatmap,
    grade_probabilities,
    predict_grade,
)

C = 16


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _bce(z: float, y: float) -> float:
    s = 1 / (1 + math.exp(-z))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


# --- classification -------------------------------------------------------------------------


def test_classification_head_outputs():
    head = ClassificationHead(C, extra_outputs={"bach4": 4})
    x = torch.randn(5, C)
    out = head(x)
    assert set(out) == {"logit", "bach4"}
    assert out["logit"].shape == (5,) and out["bach4"].shape == (5, 4)
    torch.testing.assert_close(out["logit"], x @ head.fc.weight[0] + head.fc.bias[0])
    with pytest.raises(ConfigError, match="'logit'"):
        ClassificationHead(C, extra_outputs={"logit": 3})


# --- localisation ---------------------------------------------------------------------------


def test_localization_topk_scores_heatmap_and_pooling():
    torch.manual_seed(0)
    head = LocalizationHead(C, pooling="topk", topk_ratio=0.1)
    tokens = torch.randn(2, 12, C)
    out = head(tokens, torch.tensor([3, 4]), (3, 4))
    z = F.layer_norm(tokens, (C,), head.norm.weight, head.norm.bias)
    s = z @ head.score.weight[0] + head.score.bias[0]
    torch.testing.assert_close(out["patch_logits"], s.view(2, 3, 4))
    k = max(1, math.ceil(0.1 * 12))  # 2
    torch.testing.assert_close(out["image_logit"], s.sort(dim=1, descending=True).values[:, :k].mean(1))
    torch.testing.assert_close(out["heatmap"], torch.sigmoid(s).view(2, 3, 4))  # same size: no interpolation

    big = head(tokens, (3, 4), (48, 64))["heatmap"]
    assert big.shape == (2, 48, 64)
    probs = torch.sigmoid(s)
    assert (big.amin((1, 2)) >= probs.amin(1) - 1e-6).all() and (big.amax((1, 2)) <= probs.amax(1) + 1e-6).all()
    # the centre of each 16x16 cell sits between the cell's own value and its neighbours'; corners are exact
    torch.testing.assert_close(big[:, 0, 0], probs[:, 0])
    torch.testing.assert_close(big[:, -1, -1], probs[:, -1])
    with pytest.raises(ConfigError, match="does not match 12 patch tokens"):
        head(tokens, (3, 5), (48, 80))


def test_localization_attention_pooling():
    torch.manual_seed(1)
    head = LocalizationHead(C, pooling="attention", hidden=8)
    tokens = torch.randn(3, 6, C)
    out = head(tokens, (2, 3), (32, 48))
    a = out["attention"].flatten(1)
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    torch.testing.assert_close(out["image_logit"], (a * out["patch_logits"].flatten(1)).sum(1))
    same = tokens[:, :1].expand(-1, 6, -1)  # identical tokens: uniform attention, image logit = patch logit
    o2 = head(same, (2, 3), (2, 3))
    torch.testing.assert_close(o2["attention"], torch.full((3, 2, 3), 1 / 6))
    torch.testing.assert_close(o2["image_logit"], o2["patch_logits"][:, 0, 0])


def test_box_from_heatmap_largest_region():
    hm = torch.zeros(32, 40)
    hm[10:20, 5:15] = 0.9  # large region: rows 10..19, cols 5..14
    hm[25:28, 30:33] = 1.0  # small, hotter region
    torch.testing.assert_close(box_from_heatmap(hm, 0.5), torch.tensor([5.0, 10.0, 15.0, 20.0]))
    torch.testing.assert_close(box_from_heatmap(hm, 0.95), torch.tensor([30.0, 25.0, 33.0, 28.0]))
    # 8-connectivity: a diagonal touch joins two squares into one region
    hm2 = torch.zeros(10, 10)
    hm2[1:3, 1:3] = 1.0
    hm2[3:5, 3:5] = 1.0
    torch.testing.assert_close(box_from_heatmap(hm2), torch.tensor([1.0, 1.0, 5.0, 5.0]))


# --- grading --------------------------------------------------------------------------------


def test_grading_head_shapes_and_coral_init():
    head = GradingHead(C, {"birads": 6, "bach": 4}, method="coral")
    out = head(torch.randn(3, C))
    assert out["birads"].shape == (3, 5) and out["bach"].shape == (3, 3)
    layer = head.outputs["bach"]
    assert isinstance(layer, CoralLayer)
    torch.testing.assert_close(layer.bias.detach(), torch.tensor([1.0, 2 / 3, 1 / 3]))
    corn = GradingHead(C, {"bach": 4}, method="corn")
    assert corn(torch.randn(2, C))["bach"].shape == (2, 3)
    with pytest.raises(ConfigError, match=">= 2 grades"):
        GradingHead(C, {"x": 1})


def test_predict_grade_corn_vs_coral_on_crafted_logits():
    lg = torch.tensor(
        [
            [_logit(0.9), _logit(0.9), _logit(0.1)],  # cumprod .9 .81 .081 -> 2
            [_logit(0.9), _logit(0.4), _logit(0.9)],  # cumprod .9 .36 .32 -> 1 ; coral counts 2
            [_logit(0.3), _logit(0.9), _logit(0.9)],  # cumprod .3 ... -> 0 ; coral counts 2
            [_logit(0.99), _logit(0.99), _logit(0.99)],  # 3 both
        ]
    )
    assert predict_grade(lg, "corn").tolist() == [2, 1, 0, 3]
    assert predict_grade(lg, "coral").tolist() == [2, 2, 2, 3]
    p = grade_probabilities(lg, "corn")
    s = torch.sigmoid(lg)
    expected = torch.stack(
        [1 - s[:, 0], s[:, 0] * (1 - s[:, 1]), s[:, 0] * s[:, 1] * (1 - s[:, 2]), s[:, 0] * s[:, 1] * s[:, 2]], 1
    )
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(grade_probabilities(lg, "coral").sum(1), torch.ones(4))
    assert GradingHead.predict_grade(lg, "corn").tolist() == [2, 1, 0, 3]


def _ordinal_data(n=240, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = (y.float() + 0.15 + 0.7 * torch.rand(n, generator=g) - k / 2).unsqueeze(1)  # gaps between classes
    return x, y


@pytest.mark.parametrize("method", ["coral", "corn"])
def test_tiny_training_reaches_high_qwk(method):
    torch.manual_seed(0)
    x, y = _ordinal_data()
    head = GradingHead(1, {"g": 4}, method=method)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    schemes = ["g"] * len(y)
    for _ in range(100):
        opt.zero_grad()
        grading_loss(head(x), y, schemes, method).backward()
        opt.step()
    with torch.no_grad():
        logits = head(x)["g"]
    pred = predict_grade(logits, method)
    acc = (pred == y).float().mean().item()
    qwk = cohen_kappa_score(y.numpy(), pred.numpy(), weights="quadratic")
    assert acc > 0.9 and qwk > 0.95, (acc, qwk)
    if method == "coral":  # rank consistency: ordered biases, P(y > k) non-increasing in k
        bias = head.outputs["g"].bias.detach()
        assert (bias[1:] <= bias[:-1]).all()
        p = torch.sigmoid(logits)
        assert (p[:, 1:] <= p[:, :-1] + 1e-7).all()


def test_coral_rank_consistent_at_init_for_any_features():
    head = GradingHead(C, {"g": 5}, method="coral")
    p = torch.sigmoid(head(torch.randn(64, C) * 5)["g"])
    assert (p[:, 1:] <= p[:, :-1]).all()
    probs = grade_probabilities(head(torch.randn(8, C))["g"], "coral")
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(8))
