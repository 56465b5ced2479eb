"""Adapter overhead: ViTEncoder with two AdaptFormer sets vs the plain timm model, same weights and input."""

from __future__ import annotations

import timm
import torch

from bench.common import Result, interleaved


def adapter_overhead(name: str = "vit_base_patch16_224", batch: int = 4, repeats: int = 5) -> list[Result]:
    """Forward time with adapters / plain timm forward (target ≤ 1.10)."""
    from mammopath.models.encoders import ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder(name=name, img_size=224, adapter="adaptformer", freeze="adapters").eval()
    plain = timm.create_model(name, pretrained=False, num_classes=0, img_size=224).eval()
    plain.load_state_dict(encoder.vit.state_dict(), strict=False)
    x = torch.randn(batch, 3, 224, 224)

    with torch.inference_mode():
        t_ours, t_raw = interleaved(lambda: encoder(x, "mammo"), lambda: plain(x), repeats=repeats)
    ratio = t_ours / t_raw
    return [
        Result(
            "4",
            f"adapter forward ({name}, batch {batch})",
            t_ours * 1000,
            t_raw * 1000,
            "ms",
            ratio,
            "time with adapters / plain timm",
            "<= 1.10",
        )
    ]
