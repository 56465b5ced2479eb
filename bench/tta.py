"""Test-time adaptation cost: a CausalTTA test batch vs plain inference of the same module on the same batch.

The marginalization re-runs only the blocks after the style layer, once per source style: with L blocks, the
intervention after the first l of them and K styles, a batch costs at least ``1 + K · (L − l) / L`` forwards
(the analytic floor; the heads are a rounding error). The guarded update adds a forward with gradients, its
backward (about two forwards) and the patch-shuffled forward of the reliability filter: ``floor + 4`` forwards.
The ratio reported is measured time / plain time, and the target is measured / floor ≤ 1.25.
"""

from __future__ import annotations

import torch

from bench.common import Result, interleaved


def _module(name: str, image_size: int, style_layer: int):  # type: ignore[no-untyped-def]
    from mammopath.models.module import MammoPathModule

    torch.manual_seed(0)
    module = MammoPathModule(backbone=name, img_size=image_size, style_layer=style_layer, style_bank_size=16)
    module.eval()
    dim = module.encoder.embed_dim
    g = torch.Generator().manual_seed(0)
    for modality in module.encoder.modalities:  # a filled bank of two source domains (values do not change cost)
        mu, sigma = torch.randn(16, dim, generator=g) * 0.1, 1 + torch.rand(16, dim, generator=g) * 0.1
        module.style_bank.fill(modality, mu, sigma, ["a"] * 8 + ["b"] * 8)
    return module


def tta_cost(
    name: str = "vit_small_patch16_224", batch: int = 8, image_size: int = 224, k: int = 4, repeats: int = 3
) -> list[Result]:
    """CausalTTA (update off, then on) time / plain inference time, against the analytic floor."""
    from mammopath.callbacks.tta import CausalTTA

    style_layer = 1
    module = _module(name, image_size, style_layer)
    depth = len(module.encoder.blocks)
    floor = 1 + k * (depth - (style_layer + 1)) / depth
    x = torch.rand(batch, 1, image_size, image_size)
    data = {"image": x, "modality": ["mammo"] * batch, "domain": ["target"] * batch}

    def plain() -> object:
        with torch.no_grad():
            return module(x, "mammo")

    results = []
    for update in (False, True):
        tta = CausalTTA(k=k, beta=0.25, update=update, reset="never", plpd_threshold=-1.0, entropy_margin=10.0)
        tta._start(module)  # what on_test_start does: snapshot, style draw, capture hook
        if update:
            tta._reset(module, "mammo")

        def adapted(tta: CausalTTA = tta) -> object:
            with torch.no_grad():  # as in trainer.test (inference_mode off); the update enables grad itself
                return tta.transform(module, data, module(x, "mammo"), "test")

        try:
            t_ours, t_raw = interleaved(adapted, plain, repeats=repeats)
        finally:
            tta._end(module)
        expected = floor + (4 if update else 0)
        ratio = t_ours / t_raw
        label = "update on (every sample passes the filter)" if update else "marginalization only"
        results.append(
            Result(
                "5",
                f"CausalTTA K={k}, {label} ({name}, L={depth}, l={style_layer + 1}, batch {batch})",
                t_ours * 1000,
                t_raw * 1000,
                "ms",
                ratio,
                f"time / plain inference; floor {expected:.2f}, measured/floor {ratio / expected:.2f}",
                "reported",
            )
        )
        results.append(
            Result(
                "5",
                f"CausalTTA {label}: measured / analytic floor",
                ratio,
                expected,
                "x plain",
                ratio / expected,
                "measured ratio / floor",
                "<= 1.25",
            )
        )
    return results
