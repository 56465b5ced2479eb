"""`ResultsWriter`: test-time tables for people, not only logs.

After ``test`` it writes, under ``out_dir``: ``predictions.csv`` (one row per sample: ids, domain,
role, label, score, grades), ``metrics_by_domain.csv``/``.md`` (per modality and domain, with
patient-bootstrap 95% CIs) and ``lodo_summary.csv``/``.md`` (per modality: mean and worst
held-out AUROC, mean source AUROC, domain gap), draws ``roc.png`` and prints the tables with rich.
File names never carry a sample's original file name or a patient value.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pandas as pd
from rich.console import Console

from mammopath.report import lodo_summary, plot_roc, render_table, write_tables

log = logging.getLogger(__name__)


class ResultsWriter(L.Callback):
    """Write per-domain test results as CSV + Markdown and print them.

    Args:
        out_dir: folder for the result files (created; files in it are replaced atomically).
        title: heading of the printed table and the Markdown files.
    """

    def __init__(self, out_dir: str = "results", title: str = "Test results"):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.title = title

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        results: dict[str, pd.DataFrame] = getattr(pl_module, "results", {})
        table = results.get("test")
        predictions = results.get("test_predictions")
        if table is None or predictions is None:
            log.warning("ResultsWriter: the module produced no test results")
            return
        summary = lodo_summary(table)
        write_tables(self.out_dir, table=table, summary=summary, predictions=predictions, title=self.title)
        plot_roc(predictions, self.out_dir / "roc.png")
        console = Console()
        console.print(render_table(table, f"{self.title}: per domain"))
        console.print(render_table(summary, f"{self.title}: leave-one-domain-out summary"))
        console.print(f"results written to [bold]{self.out_dir}[/bold]")
