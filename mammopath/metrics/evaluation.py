"""The evaluation component: per-sample outputs in, per-domain metrics and the LODO table out.

:class:`Evaluation` is the one place that turns evaluation steps into results. The module feeds it the step output
of every validation/test batch (:meth:`Evaluation.update`); at epoch end :meth:`Evaluation.compute` gathers the
per-sample numbers from every rank **as tensors** with an integer sample index (the row of the datamodule's
``sample_table``), drops the samples a distributed sampler padded in (by index), joins the sample metadata (ids,
patient, domain, role) from the sample table, and computes the per-domain table (:func:`per_domain_table`, whose
registry :data:`~mammopath.metrics.domain.DOMAIN_METRICS` lists every metric) and the LODO summary.

:meth:`Evaluation.table` computes the same table from a saved ``predictions.csv``, so a run's
``metrics_by_domain.csv`` can be reproduced from its predictions alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mammopath.errors import ConfigError
from mammopath.metrics.domain import logged_metric_names, per_domain_table, summarize_lodo

#: Numeric per-sample fields recorded from every evaluation step (-1 / NaN = missing).
FIELDS: dict[str, torch.dtype] = {
    "index": torch.int64,
    "label": torch.int64,
    "score": torch.float64,
    "grade": torch.int64,
    "grade_pred": torch.int64,
    "bach4_pred": torch.int64,
    "pointing_hit": torch.float64,
}
#: Columns of ``predictions.csv``, in order.
#: The identifying columns every per-sample output starts with (``predictions.csv`` of test and of predict).
IDENTITY_COLUMNS = ["sample_id", "patient_id", "parent_id", "dataset", "modality", "domain"]
PREDICTION_COLUMNS = [
    *IDENTITY_COLUMNS,
    "role",
    "label",
    "score",
    "grade_true",
    "grade_pred",
    "grade_scheme",
    "bach4_pred",
    "pointing_hit",
]
#: Columns the sample table (``CrossModalDataModule.sample_table``) must have, indexed by the sample index.
SAMPLE_COLUMNS = ("sample_id", "patient_id", "parent_id", "dataset", "modality", "domain", "grade_scheme", "role")


@dataclass
class EvaluationResult:
    """What one evaluation epoch produced."""

    stage: str
    predictions: pd.DataFrame  # one row per sample, PREDICTION_COLUMNS
    table: pd.DataFrame  # one row per (modality, domain)
    summary: pd.DataFrame  # one row per modality (LODO)


def _gather(t: Tensor) -> Tensor:
    """Concatenate a 1-D tensor over ranks (different lengths allowed); the tensor itself when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return t
    from torchmetrics.utilities.distributed import gather_all_tensors

    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    return torch.cat([p.cpu() for p in gather_all_tensors(t.to(device))])


class Evaluation:
    """Accumulate evaluation step outputs and compute per-domain metrics.

    Args:
        n_boot: patient-bootstrap resamples of the AUROC CI at test time (validation computes none).
        seed: bootstrap seed.
        threshold: operating threshold for accuracy / sensitivity / specificity.
        specificity: target specificity of ``sens_at_spec``.
        n_bins: calibration bins of ``ece``.
    """

    def __init__(
        self, n_boot: int = 200, seed: int = 0, threshold: float = 0.5, specificity: float = 0.9, n_bins: int = 15
    ) -> None:
        self.n_boot, self.seed = n_boot, seed
        self.threshold, self.specificity, self.n_bins = threshold, specificity, n_bins
        self._parts: dict[str, list[Tensor]] = {k: [] for k in FIELDS}
        self.results: dict[str, EvaluationResult] = {}

    def reset(self) -> None:
        """Forget the recorded steps (start of an evaluation epoch)."""
        self._parts = {k: [] for k in FIELDS}

    def update(self, step: Mapping[str, Any]) -> None:
        """Record the numeric per-sample fields (:data:`FIELDS`) of one step output."""
        missing = [k for k in FIELDS if k not in step]
        if missing:
            raise ConfigError(f"evaluation step output lacks {missing}; see mammopath.models.outputs")
        for key, dtype in FIELDS.items():
            self._parts[key].append(torch.as_tensor(step[key]).detach().to("cpu", dtype).reshape(-1))

    def gather(self) -> dict[str, np.ndarray]:
        """The recorded fields of every rank, one entry per sample index (padded duplicates dropped), by index."""
        local = {k: torch.cat(v) if v else torch.zeros(0, dtype=FIELDS[k]) for k, v in self._parts.items()}
        fields = {k: _gather(v).numpy() for k, v in local.items()}
        _, first = np.unique(fields["index"], return_index=True)  # sorted by index, first occurrence kept
        return {k: v[first] for k, v in fields.items()}

    def predictions(self, samples: pd.DataFrame) -> pd.DataFrame:
        """The gathered fields joined with the sample metadata: the ``predictions.csv`` frame."""
        absent = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
        if absent:
            raise ConfigError(f"the datamodule's sample_table lacks column(s) {absent}")
        fields = self.gather()
        index = fields["index"]
        unknown = np.setdiff1d(index, samples.index.to_numpy())
        if unknown.size:
            raise ConfigError(f"evaluation saw sample index {int(unknown[0])}, which the sample table does not have")
        meta = samples.loc[index, list(SAMPLE_COLUMNS)].reset_index(drop=True)
        frame = meta.assign(
            label=fields["label"],
            score=fields["score"],
            grade_true=fields["grade"],
            grade_pred=fields["grade_pred"],
            bach4_pred=fields["bach4_pred"],
            pointing_hit=fields["pointing_hit"],
        )
        return frame[PREDICTION_COLUMNS]

    @staticmethod
    def metric_frame(predictions: pd.DataFrame) -> pd.DataFrame:
        """A predictions frame as the metrics take it: -1 / empty → NaN, ``role`` → ``is_source``."""
        frame = predictions.copy()
        frame["label"] = frame["label"].where(frame["label"] >= 0)
        known_grade = frame["grade_true"] >= 0
        for column in ("grade_true", "grade_pred"):
            frame[column] = frame[column].where(known_grade)
        frame["grade_scheme"] = frame["grade_scheme"].fillna("").replace("", np.nan)
        frame["is_source"] = frame["role"] != "heldout"
        return frame

    def table(self, predictions: pd.DataFrame, n_boot: int | None = None) -> pd.DataFrame:
        """Per-domain metrics of a predictions frame (from :meth:`predictions` or a saved ``predictions.csv``)."""
        return per_domain_table(
            self.metric_frame(predictions),
            threshold=self.threshold,
            specificity=self.specificity,
            n_boot=self.n_boot if n_boot is None else n_boot,
            seed=self.seed,
            n_bins=self.n_bins,
        )

    def compute(self, stage: str, samples: pd.DataFrame, n_boot: int | None = None) -> EvaluationResult:
        """Gather, join and score the recorded steps; the result is also kept in :attr:`results`."""
        predictions = self.predictions(samples)
        table = self.table(predictions, n_boot=n_boot) if len(predictions) else pd.DataFrame()
        summary = summarize_lodo(table) if len(table) else pd.DataFrame()
        result = EvaluationResult(stage, predictions, table, summary)
        self.results[stage] = result
        self.reset()
        return result

    def result(self, stage: str) -> EvaluationResult | None:
        """The last result of ``stage`` (``val``/``test``), or None."""
        return self.results.get(stage)

    @staticmethod
    def selection_metric(table: pd.DataFrame) -> float:
        """Mean over modalities of the mean source-domain AUROC (model selection uses source domains only).

        Undefined (no source AUROC anywhere) is 0, so that model selection never prefers it.
        """
        if table.empty:
            return 0.0
        source = table[table["role"] == "source"]
        per_modality = source.groupby("modality")["auroc"].mean().dropna()
        return float(per_modality.mean()) if len(per_modality) else 0.0

    @classmethod
    def logged(cls, result: EvaluationResult) -> dict[str, float]:
        """``{stage}/{domain}/{metric}`` for every logged metric that is defined, plus ``{stage}/auroc``."""
        values: dict[str, float] = {}
        names = logged_metric_names()
        for _, row in result.table.iterrows():
            for metric in names:
                value = row.get(metric)
                if value is not None and pd.notna(value):
                    values[f"{result.stage}/{row['domain']}/{metric}"] = float(value)
        values[f"{result.stage}/auroc"] = cls.selection_metric(result.table)
        return values
