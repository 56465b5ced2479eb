"""Training: ``Trainer.fit`` vs a plain PyTorch loop (1), the data pipeline vs the model's appetite (6).

Both use the demo's model (``experiments/demo.yaml``: ViT-Tiny with 8-px patches, depth 4, AdaptFormer adapters,
64-px inputs, batches of 32 per modality) on batches of the synthetic cohort.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from bench.common import Result, synth_cohort

BATCH = 32
IMAGE = 64
WARMUP = 3


def _datamodule(num_workers: int) -> Any:
    from mammopath.datamodules.crossmodal import CrossModalDataModule

    root = synth_cohort()
    dm = CrossModalDataModule(
        manifest=str(root / "manifest.csv"), image_size=IMAGE, batch_size=BATCH, num_workers=num_workers
    )
    dm.setup("fit")
    return dm


def _model(dm: Any) -> Any:
    from mammopath.models.module import MammoPathModule

    torch.manual_seed(0)
    return MammoPathModule(
        backbone="vit_tiny_patch16_224",
        img_size=IMAGE,
        model_kwargs={"patch_size": 8, "depth": 4},
        freeze="full",
        grade_schemes=dm.grade_schemes,
        normalization=dm.normalization,
        loss_weights={"cls": 1.0, "bach4": 0.5, "loc": 0.5, "grade": 0.5},
        optimizer=lambda params: torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05),
    )


class Batches:
    """The same in-memory batches, cycled to ``steps`` (an iterable Lightning can fit on)."""

    def __init__(self, batches: list[dict[str, Any]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.steps):
            yield self.batches[i % len(self.batches)]

    def __len__(self) -> int:
        return self.steps


class StepTimer(L.Callback):
    """Notes when each training batch starts and ends."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def _fit(model: Any, batches: Batches) -> list[float]:
    """Seconds of each ``Trainer.fit`` step after the warm-up (batch start to next batch start: every hook and
    Lightning's own fetch and bookkeeping included; logger, progress bar and checkpoints off)."""
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the module's parameter table
        trainer.fit(model, train_dataloaders=batches)
    marks = [*timer.starts, timer.ends[-1]]
    return [b - a for a, b in zip(marks[WARMUP:], marks[WARMUP + 1 :])]


def _plain(model: Any, batches: Batches) -> list[float]:
    """Seconds of each step of the same maths in a plain loop: forward both modalities, task losses, backward, step."""
    from mammopath.losses import task_losses

    model.train()
    optimizer = model.configure_optimizers()
    marks = []
    for step, batch in enumerate(batches):
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        for modality, sub in batch.items():
            out = model(sub["image"], modality)
            for name, value in task_losses(sub, out, model.grading_method).items():
                terms[name] = terms[name] + value if name in terms else value
        total, _ = model.objective.combine(terms, step)
        total.backward()
        optimizer.step()
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks[WARMUP:], marks[WARMUP + 1 :])]


def _params(model: Any) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def trainer_overhead(steps: int = 15, repeats: int = 3) -> tuple[list[Result], float]:
    """(1) ``Trainer.fit`` of MammoPathModule vs the plain loop on the same batches, model and optimizer.

    Returns the result lines and the model's training images/s (for :func:`data_pipeline`).
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    dm = _datamodule(num_workers=0)
    loader = iter(dm.train_dataloader())
    batches = [next(loader)[0] for _ in range(4)]  # CombinedLoader yields (batch, batch_idx, dataloader_idx)
    images = sum(len(sub["label"]) for sub in batches[0].values())
    template = _model(dm)
    fit_steps: list[float] = []
    plain_steps: list[float] = []
    for _ in range(repeats):  # alternate, so that drifts in machine load hit both alike
        fitted, plain = copy.deepcopy(template), copy.deepcopy(template)
        fit_steps += _fit(fitted, Batches(batches, steps))
        plain_steps += _plain(plain, Batches(batches, steps))
    # the fastest step of each: load from other processes only ever adds time (like timeit's minimum)
    t_fit, t_plain = min(fit_steps), min(plain_steps)
    # the two loops did the same work: same parameters after the same steps
    drift = float((_params(fitted) - _params(plain)).abs().max())
    if drift > 1e-3:
        raise AssertionError(f"Trainer.fit and the plain loop diverged (max parameter difference {drift:.3g})")
    ratio = t_plain / t_fit
    result = Result(
        "1",
        f"Trainer.fit vs plain loop (demo model, {images} images/step)",
        images / t_fit,
        images / t_plain,
        "images/s",
        ratio,
        "throughput Trainer.fit / plain PyTorch loop (fastest steady-state step of each)",
        ">= 0.95",
    )
    return [result], images / t_fit


def data_pipeline(model_rate: float, batches: int = 40) -> list[Result]:
    """(6) The training loader (CombinedLoader of both modalities, 2 workers) alone vs the model's training alone."""
    dm = _datamodule(num_workers=2)
    loader = dm.train_dataloader()
    images = n_batches = 0
    start = 0.0
    while n_batches < batches + WARMUP:
        for batch, _, _ in loader:
            if n_batches == WARMUP:  # workers started and primed
                start = time.perf_counter()
            elif n_batches > WARMUP:
                images += sum(len(sub["label"]) for sub in batch.values())
            n_batches += 1
    rate = images / (time.perf_counter() - start)
    return [
        Result(
            "6",
            f"training data pipeline, 2 workers ({IMAGE}-px mammograms + slide patches)",
            rate,
            model_rate,
            "images/s",
            rate / model_rate,
            "loader images/s alone / model training images/s alone (Trainer.fit)",
            ">= 1.00",
        )
    ]


def training() -> list[Result]:
    """Both training benchmarks (the pipeline is compared with the throughput the first one measures)."""
    results, model_rate = trainer_overhead()
    return results + data_pipeline(model_rate)
