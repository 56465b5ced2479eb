"""Helpers shared by test modules (importable as ``helpers``: pytest puts ``tests/`` on the path for its conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def squash(text: str) -> str:
    """Console text without whitespace (rich wraps long lines anywhere)."""
    return "".join(str(text).split())


def tiny_fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``mammopath fit`` of the tiny test config on the synthetic cohort under ``data``, outputs under ``out``."""
    return [
        "fit",
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        f"--data.manifest={data / 'manifest.csv'}",
        f"--trainer.default_root_dir={out}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        *extra,
    ]  # fmt: skip


# -- test-time adaptation: a tiny module with a filled style bank, a mammography stream, a causal replay ----------
TTA_TINY = {"patch_size": 8, "depth": 3, "embed_dim": 48}


def tta_module(rows_per_domain: int = 4, spreads: bool = False) -> Any:
    """A tiny eval-mode module whose style bank holds ``rows_per_domain`` rows of domains ``a`` and ``b`` per
    modality (``spreads``: class-balanced rows with small spreads, as the StyleBank callback writes)."""
    import torch

    from mammopath.models.module import MammoPathModule

    torch.manual_seed(0)
    module = MammoPathModule(img_size=32, model_kwargs=TTA_TINY, freeze="full", style_bank_size=8).eval()
    g = torch.Generator().manual_seed(1)
    n = 2 * rows_per_domain
    domains = ["a"] * rows_per_domain + ["b"] * rows_per_domain
    for m in ("mammo", "patho"):
        mu, sigma = torch.randn(n, 48, generator=g) * 0.3, 0.5 + torch.rand(n, 48, generator=g)
        extra = (torch.rand(n, 48, generator=g) * 0.1, torch.rand(n, 48, generator=g) * 0.1) if spreads else ()
        module.style_bank.fill(m, mu, sigma, domains, *extra)
    return module


def tta_stream(n: int, domains: list[str], seed: int = 2) -> list[dict[str, Any]]:
    """``n`` mammography batches of 4 random 32-px images, batch ``i`` from ``domains[i]``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(4, 1, 32, 32, generator=g), "domain": [domains[i]] * 4, "modality": ["mammo"] * 4}
        for i in range(n)
    ]


def tta_run(module: Any, tta: Any, stream: list[dict[str, Any]]) -> list[Any]:
    """Each batch's test-time prediction (``cls_logit``), in stream order, through the callback's own steps."""
    import torch

    tta._start(module)
    scores = []
    for batch in stream:
        with torch.no_grad():
            out = module(batch["image"], "mammo")
        scores.append(tta.transform(module, batch, out, "test")["cls_logit"].detach().clone())
    tta._end(module)
    return scores
