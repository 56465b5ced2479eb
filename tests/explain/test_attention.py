"""Attention rollout and relevance on the shared ViT: shapes, row sums, unchanged outputs, restored flags."""

from __future__ import annotations

import pytest
import torch

from mammopath.explain.attention import explain_batch, record_attention, rollout_matrices
from mammopath.explain.evidence import ACROSS_PATIENTS, WITHIN_PATIENT, Bank, top_regions
from mammopath.metrics.faithfulness import deletion_insertion, pointing_hits
from mammopath.models.module import MammoPathModule

TINY = {"patch_size": 8, "depth": 3, "embed_dim": 48}


@pytest.mark.parametrize("adapter", ["adaptformer", "lora"])
def test_rollout_rows_sum_to_one_outputs_unchanged_and_flags_restored(adapter: str) -> None:
    torch.manual_seed(0)
    module = MammoPathModule(img_size=32, model_kwargs=TINY, freeze="full", adapter=adapter).eval()
    for block in module.encoder.blocks:
        block.attn.fused_attn = True
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = module(images, "patho")
        with record_attention(module.encoder) as maps:
            recorded = module(images, "patho")
    assert all(block.attn.fused_attn for block in module.encoder.blocks)  # restored
    assert len(maps) == 3 and maps[0].shape == (2, 3, 17, 17)  # 16 patches + CLS, 3 heads
    torch.testing.assert_close(recorded["cls_logit"], plain["cls_logit"], atol=1e-5, rtol=1e-5)
    joint = rollout_matrices(maps)
    torch.testing.assert_close(joint.sum(dim=-1), torch.ones(2, 17))
    out = explain_batch(module, images, "patho", relevance=True)
    assert out["rollout"].shape == out["relevance"].shape == (2, 4, 4)
    torch.testing.assert_close(out["rollout"].sum(dim=(1, 2)), torch.ones(2))
    assert (out["relevance"] >= 0).all() and torch.allclose(out["relevance"].sum(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(out["cls_logit"], plain["cls_logit"], atol=1e-5, rtol=1e-5)
    with torch.inference_mode(), pytest.raises(Exception, match="inference_mode: false|Inference tensors"):
        explain_batch(module, images, "patho", relevance=True)


def test_regions_links_and_faithfulness_baselines() -> None:
    score = torch.zeros(5, 5)
    score[1, 1], score[1, 2], score[4, 4] = 3.0, 2.9, 1.0
    assert [(r, c) for r, c, _ in top_regions(score, 2)] == [(1, 1), (4, 4)]  # (1, 2) suppressed next to (1, 1)
    bank = Bank()
    for i, patient in enumerate(["p1", "p2", "p2"]):
        bank.add(torch.nn.functional.normalize(torch.tensor([1.0, float(i)]), dim=0), f"s{i}", patient, "d", 0.5)
    links, scope = bank.link(torch.tensor([[1.0, 0.0]]), "p2", top=2)
    assert scope == WITHIN_PATIENT and {j for j, _ in links[0]} == {1, 2}
    links, scope = bank.link(torch.tensor([[1.0, 0.0]]), "nobody", top=1)
    assert scope == ACROSS_PATIENTS and links[0][0][0] == 0
    maps = torch.zeros(2, 4, 4)
    masks = torch.zeros(2, 32, 32)
    maps[0, 0, 0], masks[0, :8, :8] = 1.0, 1.0
    maps[1, 3, 3], masks[1, :8, :16] = 1.0, 1.0
    hits, chance = pointing_hits(maps, masks)
    assert hits == [1.0, 0.0] and chance == pytest.approx([1 / 16, 1 / 8])
    # a model that looks only at the top-left cell: its map beats random orders on deletion and insertion
    images = torch.rand(4, 1, 32, 32)
    images[:, :, :8, :8] = 1.0

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(20 * (x[:, 0, :8, :8].mean(dim=(1, 2)) - 0.75))

    good = torch.zeros(4, 4, 4)
    good[:, 0, 0] = 1.0
    result = deletion_insertion(predict, images, good, steps=8)
    assert result["deletion_auc_map"] < result["deletion_auc_random"]
    assert result["insertion_auc_map"] > result["insertion_auc_random"]
