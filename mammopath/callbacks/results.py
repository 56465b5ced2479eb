"""`ResultsWriter`: test-time tables for people, not only logs.

After ``test`` it writes, under ``out_dir``: ``predictions.csv`` (one row per sample: ids, domain,
role, label, score, grades, pointing hit), ``metrics_by_domain.csv``/``.md`` (per modality and domain, with
patient-bootstrap 95% CIs) and ``lodo_summary.csv``/``.md`` (per modality: mean and worst
held-out AUROC, mean source AUROC, domain gap), draws ``roc.png`` and prints the tables with rich.
File names never carry a sample's original file name or a patient value.

It reads the module's evaluation component (``pl_module.evaluation.result("test")``, see
:class:`~mammopath.metrics.evaluation.Evaluation`), which every evaluation step feeds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from rich.console import Console

from mammopath.errors import ConfigError
from mammopath.metrics.evaluation import Evaluation
from mammopath.report import atomic_write, plot_roc, render_table, to_markdown, write_frame, write_tables

log = logging.getLogger(__name__)


class ResultsWriter(L.Callback):
    """Write per-domain test results as CSV + Markdown and print them.

    Args:
        out_dir: folder for the result files (created; files in it are replaced atomically). With a
            ``run_name`` on the command line the CLI sets it to ``results/<run>``; otherwise it
            defaults to ``<trainer.default_root_dir>/results``.
        title: heading of the printed table and the Markdown files.
    """

    def __init__(self, out_dir: str | None = None, title: str = "Test results"):
        super().__init__()
        self.out_dir = Path(out_dir) if out_dir else None
        self.title = title

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        evaluation = getattr(pl_module, "evaluation", None)
        if not isinstance(evaluation, Evaluation):
            raise ConfigError(f"ResultsWriter needs a module with an evaluation component; got {type(pl_module)}")
        result = evaluation.result("test")
        if result is None or result.predictions.empty:
            log.warning("ResultsWriter: the module produced no test results")
            return
        out_dir = self.out_dir or Path(trainer.default_root_dir) / "results"
        write_tables(
            out_dir, table=result.table, summary=result.summary, predictions=result.predictions, title=self.title
        )
        plot_roc(result.predictions, out_dir / "roc.png")
        manifest = getattr(getattr(trainer, "datamodule", None), "manifest", None)
        if manifest is not None:  # the benchmarks' official protocols (per breast, per slide, pN stage, FROC)
            from mammopath.metrics.protocols import protocol_table

            protocols = protocol_table(result.predictions, manifest)
            if len(protocols):
                write_frame(out_dir / "protocol_metrics.csv", protocols)
                atomic_write(
                    out_dir / "protocol_metrics.md", to_markdown(protocols, f"{self.title}: official protocols")
                )
        console = Console()
        console.print(render_table(result.table, f"{self.title}: per domain"))
        console.print(render_table(result.summary, f"{self.title}: leave-one-domain-out summary"))
        console.print(f"results written to [bold]{out_dir}[/bold]")
