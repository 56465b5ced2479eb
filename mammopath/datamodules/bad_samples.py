"""Bad samples during a run (``data.on_bad_sample: skip``): record, count, and stop past a bad fraction.

With ``skip``, a :class:`~mammopath.datasets.manifest_dataset.ManifestDataset` replaces an unreadable sample by the
next readable row of its domain and reports the replaced rows in the sample's ``skipped`` field (a JSON string, so
it travels through DataLoader workers and the default collate). The datamodule hands every batch's reports to
:class:`SkippedSamples` before the batch reaches the model, in the main process of each rank, which

- appends one row per skipped sample (stage, epoch, step, sample id, modality, domain, file, reason) to
  ``<trainer.default_root_dir>/skipped.csv`` (``runs/<run>/skipped.csv``; other ranks write ``skipped.rank<r>.csv``),
  rewritten atomically, and logs a warning per new file;
- logs the running count as ``data/skipped`` to every logger (TensorBoard);
- raises :class:`~mammopath.errors.DataFormatError` naming the CSV once the distinct unreadable samples of a split
  exceed ``max_bad_fraction`` of its rows (a broken mount or a wrong root, not a few corrupt files).

In evaluation a skipped sample is absent from the metrics: its replacement's index is a duplicate, which the
evaluation drops (:mod:`mammopath.metrics.evaluation`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.errors import DataFormatError

log = logging.getLogger(__name__)

COLUMNS = ["stage", "epoch", "step", "sample_id", "modality", "domain", "file", "reason"]


class SkippedSamples:
    """The skipped samples of one run on one rank (see the module docstring).

    Args:
        max_bad_fraction: most distinct unreadable samples of a split, as a fraction of its rows, before the run stops.
    """

    def __init__(self, max_bad_fraction: float = 0.05):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1]; got {max_bad_fraction}")
        self.max_bad_fraction = float(max_bad_fraction)
        self.rows: list[dict[str, Any]] = []
        self.distinct: dict[str, set[tuple[str, str]]] = {}

    def path(self, trainer: Any) -> Path:
        rank = int(getattr(trainer, "global_rank", 0) or 0)
        name = "skipped.csv" if rank == 0 else f"skipped.rank{rank}.csv"
        return Path(trainer.default_root_dir) / name

    def record(self, batch: Any, trainer: Any, split_sizes: dict[str, int]) -> Any:
        """Take the ``skipped`` reports out of a batch (one modality's dict, or ``{modality: dict}``); returns it."""
        parts = [batch] if isinstance(batch, dict) and "skipped" in batch else []
        if isinstance(batch, dict) and not parts:
            parts = [v for v in batch.values() if isinstance(v, dict) and "skipped" in v]
        new: list[dict[str, Any]] = []
        for part in parts:
            for report in part.pop("skipped"):
                if report:
                    new += json.loads(report)
        if not new or trainer is None:
            return batch
        running = getattr(getattr(trainer, "state", None), "stage", None)
        stage = str(getattr(running, "value", running) or "")
        split = {"train": "train", "sanity_check": "val", "validate": "val"}.get(stage, stage)
        for entry in new:
            row = {"stage": stage, "epoch": int(trainer.current_epoch), "step": int(trainer.global_step), **entry}
            self.rows.append({c: row.get(c, "") for c in COLUMNS})
            key = (entry["modality"], entry["sample_id"])
            seen = self.distinct.setdefault(split, set())
            if key not in seen:
                seen.add(key)
                log.warning("skipped unreadable %s sample %s (%s): %s", *key, entry["file"], entry["reason"])
        out = self.path(trainer)
        self._write(out)
        for logger in getattr(trainer, "loggers", []) or []:
            logger.log_metrics({"data/skipped": float(len(self.rows))}, step=int(trainer.global_step))
        total = split_sizes.get(split, 0)
        bad = len(self.distinct.get(split, ()))
        if total and bad / total > self.max_bad_fraction:
            raise DataFormatError(
                out,
                f"{bad} of {total} {split} samples are unreadable, more than data.max_bad_fraction="
                f"{self.max_bad_fraction:g}; the run stops (each file and its reason are listed in this file; "
                "check the data root, or fix or remove the files and run `mammopath validate-manifest --decode`)",
            )
        return batch

    def _write(self, path: Path) -> None:
        from mammopath.report import write_frame

        path.parent.mkdir(parents=True, exist_ok=True)
        write_frame(path, pd.DataFrame(self.rows, columns=COLUMNS))
