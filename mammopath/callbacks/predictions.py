"""`PredictionWriter`: ``mammopath predict`` writes its scores to files a hospital can use.

A Lightning ``BasePredictionWriter``: it only writes what the predict steps return (the step output of
:mod:`mammopath.models.outputs`). After ``predict`` it writes, under ``out_dir``:

- ``predictions.csv``: one row per sample: ``sample_id``, ``patient_id``, ``parent_id``, ``dataset``,
  ``modality``, ``domain``, ``label`` (when the manifest has one), ``score`` (P(malignant)), ``grade_scheme``,
  ``grade_pred``, ``bach4_pred``, and the localization peak (``peak_x``, ``peak_y``: the heatmap's maximum as
  fractions of the image width and height, on the image's own side when the reader flipped it to the
  canonical side; ``peak_value``: the heatmap there);
- ``slides.csv`` (pathology patch rows): one row per slide (``parent_id``): patches, ``score_max``,
  ``score_topk`` (mean of the ``topk`` best patches), ``score_mean``, the slide's label when known;
- ``patients.csv``: one row per (modality, patient): ``score`` = the maximum over the patient's slides (a
  slide's ``score_max``) and other samples, with the number of samples.

The samples predicted are the datamodule's predict set: the manifest rows with an empty ``split`` (new
cases, usually without labels), or, when there are none, the test set (source test split + held-out domains).
File contents carry ids only, never a file name or a header value. Under DDP every rank's rows are gathered
and rank zero writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from rich.console import Console

from mammopath.errors import ConfigError
from mammopath.metrics.evaluation import IDENTITY_COLUMNS
from mammopath.report import atomic_write

log = logging.getLogger(__name__)

#: Columns of the prediction writer's ``predictions.csv``, in order.
PREDICT_COLUMNS = [
    *IDENTITY_COLUMNS,
    "label",
    "score",
    "grade_scheme",
    "grade_pred",
    "bach4_pred",
    "peak_x",
    "peak_y",
    "peak_value",
]


def _peaks(heatmap: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arg-max of each ``(H, W)`` heatmap as (x, y) fractions of the width/height (pixel centres) and its value."""
    b, h, w = heatmap.shape
    flat = heatmap.float().reshape(b, -1)
    value, arg = flat.max(1)
    y, x = arg // w, arg % w
    return ((x.float() + 0.5) / w).numpy(), ((y.float() + 0.5) / h).numpy(), value.numpy()


class PredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv`` (+ slide and patient roll-ups) after ``predict``.

    Args:
        out_dir: folder of the files (created; files replaced atomically). With a ``run_name`` the CLI sets it
            to ``results/<run>/predict`` (next to, never over, the test results of the same run); otherwise
            ``<trainer.default_root_dir>/predict``.
        topk: patches averaged for a slide's ``score_topk``.
    """

    def __init__(self, out_dir: str | None = None, topk: int = 5) -> None:
        super().__init__(write_interval="batch")
        if topk < 1:
            raise ConfigError(f"PredictionWriter topk must be >= 1; got {topk}")
        self.out_dir = Path(out_dir) if out_dir else None
        self.topk = topk
        self._rows: list[pd.DataFrame] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(  # type: ignore[override]
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, dict) or "score" not in prediction:
            raise ConfigError("PredictionWriter needs MammoPathModule's predict step output (a dict with 'score')")
        n = len(prediction["sample_id"])
        heatmap = prediction["outputs"].get("loc_heatmap")
        if heatmap is not None:
            peak_x, peak_y, peak_value = _peaks(heatmap.detach().cpu())
        else:
            peak_x = peak_y = peak_value = np.full(n, np.nan)
        laterality = (batch.get("meta") or {}).get("laterality")
        canonical = self._canonical_side(trainer)
        if laterality is not None and canonical:  # back to the image's own side
            flipped = np.array([bool(side) and side != canonical for side in laterality])
            peak_x = np.where(flipped, 1.0 - peak_x, peak_x)

        def ints(key: str) -> np.ndarray:
            return torch.as_tensor(prediction[key]).cpu().numpy().astype(np.int64)

        self._rows.append(
            pd.DataFrame(
                {
                    "index": ints("index"),
                    "sample_id": prediction["sample_id"],
                    "patient_id": prediction["patient_id"],
                    "modality": [prediction["modality"]] * n,
                    "domain": prediction["domain"],
                    "label": ints("label"),
                    "score": torch.as_tensor(prediction["score"]).float().cpu().numpy().astype(np.float64),
                    "grade_scheme": prediction["grade_scheme"],
                    "grade_pred": ints("grade_pred"),
                    "bach4_pred": ints("bach4_pred"),
                    "peak_x": peak_x,
                    "peak_y": peak_y,
                    "peak_value": peak_value,
                }
            )
        )

    @staticmethod
    def _canonical_side(trainer: L.Trainer) -> str | None:
        datamodule = getattr(trainer, "datamodule", None)
        kwargs = getattr(datamodule, "dataset_kwargs", None) or {}
        side = kwargs.get("canonical_side")
        return str(side) if side else None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        parts = self._rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, parts)
            parts = [frame for rank_parts in gathered for frame in rank_parts]
        self._rows = []
        if not trainer.is_global_zero:
            return
        if not parts:
            log.warning("PredictionWriter: nothing was predicted")
            return
        frame = pd.concat(parts, ignore_index=True).drop_duplicates("index")  # DDP pads with repeated samples
        predictions = self.predictions(frame, trainer)
        out_dir = self.out_dir or Path(trainer.default_root_dir) / "predict"
        write_predictions(out_dir, predictions, topk=self.topk)
        Console().print(
            f"predictions of {len(predictions)} samples written to [bold]{out_dir / 'predictions.csv'}[/bold]",
            soft_wrap=True,
        )

    @staticmethod
    def predictions(frame: pd.DataFrame, trainer: L.Trainer) -> pd.DataFrame:
        """The gathered rows joined with the datamodule's sample table (``parent_id``, ``dataset``), in order."""
        table = getattr(getattr(trainer, "datamodule", None), "sample_table", None)
        frame = frame.copy()
        if table is not None:
            meta = table.reindex(frame["index"].to_numpy())
            frame["parent_id"] = meta["parent_id"].fillna("").astype(str).to_numpy()
            frame["dataset"] = meta["dataset"].fillna("").astype(str).to_numpy()
        else:
            frame["parent_id"], frame["dataset"] = "", ""
        frame = frame.sort_values("index", kind="stable")
        return frame[PREDICT_COLUMNS].reset_index(drop=True)


def slide_table(predictions: pd.DataFrame, topk: int = 5) -> pd.DataFrame:
    """One row per slide (``parent_id``) of the pathology patch rows: patch count and aggregated scores."""
    patches = predictions[(predictions["modality"] == "patho") & (predictions["parent_id"].astype(str) != "")]
    rows = []
    for slide, group in patches.groupby("parent_id", sort=True):
        scores = np.sort(group["score"].to_numpy(dtype=np.float64))[::-1]
        labels = group["label"][group["label"] >= 0]
        rows.append(
            {
                "parent_id": slide,
                "patient_id": group["patient_id"].iloc[0],
                "domain": group["domain"].iloc[0],
                "patches": len(group),
                "score_max": float(scores[0]),
                "score_topk": float(scores[:topk].mean()),
                "score_mean": float(scores.mean()),
                "label": int(labels.max()) if len(labels) else -1,
            }
        )
    columns = ["parent_id", "patient_id", "domain", "patches", "score_max", "score_topk", "score_mean", "label"]
    return pd.DataFrame(rows, columns=columns)


def patient_table(predictions: pd.DataFrame, slides: pd.DataFrame) -> pd.DataFrame:
    """One row per (modality, patient): the maximum score over its slides (``score_max``) and other samples."""
    units = predictions[~((predictions["modality"] == "patho") & (predictions["parent_id"].astype(str) != ""))]
    units = units[["modality", "patient_id", "domain", "score", "label"]]
    if len(slides):
        from_slides = slides.rename(columns={"score_max": "score"})[["patient_id", "domain", "score", "label"]]
        units = pd.concat([units, from_slides.assign(modality="patho")], ignore_index=True)
    rows = []
    for (modality, patient), group in units.groupby(["modality", "patient_id"], sort=True):
        labels = group["label"][group["label"] >= 0]
        rows.append(
            {
                "modality": modality,
                "patient_id": patient,
                "domain": ";".join(sorted(set(group["domain"]))),
                "samples": len(group),
                "score": float(group["score"].max()),
                "label": int(labels.max()) if len(labels) else -1,
            }
        )
    return pd.DataFrame(rows, columns=["modality", "patient_id", "domain", "samples", "score", "label"])


def write_predictions(out_dir: Path, predictions: pd.DataFrame, topk: int = 5) -> None:
    """``predictions.csv``, ``slides.csv`` (when there are patch rows) and ``patients.csv`` under ``out_dir``.

    Unknown values are written empty (a label of -1, a grade of -1, a peak without a heatmap).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    slides = slide_table(predictions, topk)

    def csv(frame: pd.DataFrame) -> str:
        shown = frame.copy()
        for column in ("label", "grade_pred", "bach4_pred"):
            if column in shown:
                shown[column] = shown[column].astype("Int64").mask(shown[column] < 0)
        return shown.to_csv(index=False)

    atomic_write(out_dir / "predictions.csv", csv(predictions))
    if len(slides):
        atomic_write(out_dir / "slides.csv", csv(slides))
    atomic_write(out_dir / "patients.csv", csv(patient_table(predictions, slides)))
