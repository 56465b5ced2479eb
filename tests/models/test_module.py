"""The module's contract with callbacks: step outputs, scheduled loss terms, prediction transforms, normalization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mammopath.datamodules import CrossModalDataModule
from mammopath.errors import ConfigError
from mammopath.models.module import MammoPathModule

TINY = {"patch_size": 8, "depth": 2, "embed_dim": 48}


def _module(**kwargs: Any) -> MammoPathModule:
    return MammoPathModule(
        img_size=32, model_kwargs=TINY, freeze="full", grade_schemes={"bach4": 4, "birads": 7}, **kwargs
    )


def _data(synth_root: Path) -> CrossModalDataModule:
    return CrossModalDataModule(
        str(synth_root / "manifest.csv"), holdout_domains=["hospital_c", "centre_3"], image_size=32, batch_size=4
    )


def _trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    args = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, enable_model_summary=False, **{**args, **kwargs})


class ScheduledTerm(L.Callback):
    """Registers a constant term whose weight is the global step, and records every training step output."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, Any]]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        def term(module: Any, batch: Any, outputs: dict[str, Any]) -> torch.Tensor:
            return outputs["mammo"]["features"].sum() * 0.0 + 1.0

        pl_module.register_loss_term("toy", term, weight=lambda step: float(step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((pl_module.global_step - 1, outputs))


@pytest.mark.parametrize("yaml_weight", [None, 2.5])
def test_a_scheduled_loss_weight_is_read_at_every_step(synth_root: Path, tmp_path: Path, yaml_weight) -> None:
    recorder = ScheduledTerm()
    weights = None if yaml_weight is None else {"toy": yaml_weight}
    module = _module(loss_weights=weights)
    _trainer(tmp_path, [recorder], max_steps=3, limit_val_batches=0).fit(module, _data(synth_root))
    assert [step for step, _ in recorder.seen] == [0, 1, 2]
    for step, out in recorder.seen:
        expected = (yaml_weight or 1.0) * step  # YAML loss_weights multiply the callback's schedule
        assert out["weights"]["toy"] == pytest.approx(expected)
        assert out["terms"]["toy"].item() == pytest.approx(1.0)
        total = sum(out["weights"][k] * v for k, v in out["terms"].items())
        assert out["loss"].item() == pytest.approx(float(total), rel=1e-6)
        assert out["weights"]["cls"] == 1.0 and out["weights"]["loc"] == 0.5


class Transform(L.Callback):
    """A stand-in for test-time adaptation: replaces the malignancy logit, and records the test step outputs."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        def constant(module: Any, batch: Any, out: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
            return {**out, "cls_logit": torch.full_like(out["cls_logit"], 2.0)}

        pl_module.register_prediction_transform("constant", constant, stages=["test"])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self.outputs.append(outputs)


def test_step_outputs_reach_callbacks_and_a_transform_replaces_what_is_recorded(
    synth_root: Path, tmp_path: Path
) -> None:
    recorder = Transform()
    module = _module()
    data = _data(synth_root)
    _trainer(tmp_path, [recorder]).test(module, data)
    assert recorder.outputs
    first = recorder.outputs[0]
    keys = {"index", "sample_id", "patient_id", "domain", "role", "modality", "label", "grade", "score", "outputs"}
    assert keys <= set(first) and {"features", "loc_heatmap", "cls_logit"} <= set(first["outputs"])
    assert first["score"].shape == first["index"].shape == (len(first["sample_id"]),)
    seen = [sid for out in recorder.outputs for sid in out["sample_id"]]
    result = module.evaluation.result("test")
    assert result is not None and sorted(seen) == sorted(result.predictions["sample_id"])
    expected = torch.sigmoid(torch.tensor(2.0)).item()
    assert result.predictions["score"].to_numpy() == pytest.approx(expected)  # what was recorded is the transform's
    assert all(torch.allclose(out["score"], torch.tensor(expected)) for out in recorder.outputs)
    with pytest.raises(ConfigError, match="unknown stage"):
        module.register_prediction_transform("x", lambda *a: a[2], stages=["train"])


def test_normalization_travels_in_the_checkpoint() -> None:
    trained = _module(normalization={"mammo": {"mean": [0.3], "std": [0.2]}})
    state = {"state_dict": trained.state_dict()}
    fresh = _module(normalization={"mammo": {"mean": [0.1, 0.1, 0.1], "std": [0.5, 0.5, 0.5]}})
    fresh.on_load_checkpoint(state)
    fresh.load_state_dict(state["state_dict"])
    assert fresh.norm_mean_mammo.flatten().tolist() == pytest.approx([0.3])
    assert fresh.norm_std_mammo.flatten().tolist() == pytest.approx([0.2])
    images = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(fresh.normalize(images, "mammo"), (images - 0.3) / 0.2)
    with pytest.raises(ConfigError, match="equal lengths"):
        _module(normalization={"patho": {"mean": [0.5, 0.5], "std": [0.2]}})


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_align_encoder_grad_scales_what_the_alignment_sends_into_the_encoder(scale: float) -> None:
    torch.manual_seed(0)
    module = _module(alignment=True, align_encoder_grad=scale)
    reference = _module(alignment=True)
    reference.load_state_dict(module.state_dict())
    images = torch.rand(3, 1, 32, 32)
    grads = []
    for m in (module, reference):
        m.zero_grad()
        out = m(images, "mammo")
        assert torch.equal(out["embedding"], reference(images, "mammo")["embedding"])  # the forward is the same
        (out["embedding"] * torch.arange(out["embedding"].shape[1])).sum().backward()
        encoder = [p.grad for p in m.encoder.parameters() if p.requires_grad]
        projector = [p.grad for p in m.projectors.parameters()]
        grads.append((encoder, projector))
    (enc, proj), (ref_enc, ref_proj) = grads
    for a, b in zip(proj, ref_proj, strict=True):
        torch.testing.assert_close(a, b)  # the projector learns as before
    for a, b in zip(enc, ref_enc, strict=True):
        if scale == 0.0:
            assert a is None or not bool(a.any())
        elif b is not None:
            torch.testing.assert_close(a, scale * b)
    assert any(b is not None and bool(b.any()) for b in ref_enc)


def test_align_encoder_grad_must_be_a_fraction() -> None:
    with pytest.raises(ConfigError, match="align_encoder_grad"):
        _module(alignment=True, align_encoder_grad=1.5)
