"""Test-time adaptation cost: a CausalTTA test batch vs plain inference of the same module on the same batch.

The marginalization re-runs only the blocks after the style layer, once per source style: with L blocks, the
intervention after the first l of them and K styles, a batch costs at least ``1 + K · (L − l) / L`` forwards
(the analytic floor; the heads are a rounding error). The guarded update adds a forward with gradients, its
backward (about two forwards) and the patch-shuffled forward of the reliability filter, and SAM's second forward
and backward: ``floor + 7`` forwards. Causal trimming alone costs a forward per style-only augmentation:
``1 + A``. The ratio reported is measured time / plain time, and the target is measured / floor ≤ 1.25.
The trimming's own arithmetic (per-sample SVD of the centred feature set, projections of features and prototype,
the running prototype average) is also timed against the raw torch ops doing the same projection.
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
    name: str = "vit_small_patch16_224",
    batch: int = 8,
    image_size: int = 224,
    k: int = 4,
    repeats: int = 3,
    augmentations: int = 8,
    directions: int = 2,
) -> list[Result]:
    """CausalTTA (marginalization, update on, trimming) time / plain inference time, against the analytic floor."""
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
        tta = CausalTTA(k=k, beta=0.25, trim=False, update=update, reset="never", plpd_threshold=-1.0,
                        entropy_margin=10.0, collapse_margin=0.0)  # fmt: skip
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
        expected = floor + (7 if update else 0)
        ratio = t_ours / t_raw
        label = "update on (every sample passes the filter, SAM)" if update else "marginalization only"
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
    return results + trim_cost(module, x, name, augmentations=augmentations, directions=directions, repeats=repeats)


def trim_cost(
    module: object, x: torch.Tensor, name: str, augmentations: int = 8, directions: int = 2, repeats: int = 3
) -> list[Result]:
    """Causal trimming: a batch vs plain inference (floor 1 + A), and its arithmetic vs the raw torch ops."""
    from mammopath.callbacks.tta import CausalTTA
    from mammopath.callbacks.tta_trim import Trimmer

    batch = len(x)
    data = {"image": x, "modality": ["mammo"] * batch, "domain": ["target"] * batch}
    tta = CausalTTA(marginalize=False, trim=True, trim_directions=directions, trim_augmentations=augmentations,
                    update=False, reset="never")  # fmt: skip
    tta._start(module)

    def plain() -> object:
        with torch.no_grad():
            return module(x, "mammo")  # type: ignore[operator]

    def trimmed() -> object:
        with torch.no_grad():
            return tta.transform(module, data, module(x, "mammo"), "test")  # type: ignore[operator]

    try:
        t_ours, t_raw = interleaved(trimmed, plain, repeats=repeats)
    finally:
        tta._end(module)
    floor = 1.0 + augmentations
    ratio = t_ours / t_raw
    with torch.no_grad():  # the arithmetic alone, on fixed features
        features = module(x, "mammo")["features"]  # type: ignore[operator]
        augmented = features[:, None] + 0.1 * torch.randn(batch, augmentations, features.shape[1])
    trimmer = Trimmer(directions, augmentations)
    fc = module.classifier.fc  # type: ignore[attr-defined]

    def ours() -> object:
        return trimmer.score(module, features, augmented)(features)

    mean, count = [None], [0]

    def raw() -> object:  # the same projection in raw torch: SVD of the centred set, projections, running average
        points = torch.cat([features[:, None], augmented], dim=1).double()
        _, _, vh = torch.linalg.svd(points - points.mean(dim=1, keepdim=True), full_matrices=False)
        v = vh[:, :directions].to(features.dtype)
        w = fc.weight[:1].expand(batch, -1)
        own = w - torch.einsum("bm,bmd->bd", torch.einsum("bd,bmd->bm", w, v), v)
        proto = own if mean[0] is None else (count[0] * mean[0] + own) / (count[0] + 1)
        total = own.sum(0)
        mean[0] = total / batch if mean[0] is None else (count[0] * mean[0] + total) / (count[0] + batch)
        count[0] += batch
        z = features - torch.einsum("bm,bmd->bd", torch.einsum("bd,bmd->bm", features, v), v)
        return (z * proto).sum(1) + fc.bias[0]

    with torch.no_grad():
        a_ours, a_raw = interleaved(ours, raw, repeats=max(repeats, 5))
    return [
        Result("5", f"CausalTTA trimming only, m={directions}, A={augmentations} ({name}, batch {batch})",
               t_ours * 1000, t_raw * 1000, "ms", ratio,
               f"time / plain inference; floor {floor:.2f}, measured/floor {ratio / floor:.2f}", "reported"),
        Result("5", "CausalTTA trimming only: measured / analytic floor", ratio, floor, "x plain", ratio / floor,
               "measured ratio / floor", "<= 1.25"),
        Result("5", f"CausalTTA trimming arithmetic vs raw torch (SVD + projections, batch {batch})",
               a_ours * 1e6, a_raw * 1e6, "us", a_ours / a_raw, "ours / raw torch ops", "<= 1.25"),
    ]  # fmt: skip
