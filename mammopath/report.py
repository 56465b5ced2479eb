"""Result tables and figures: per-domain metrics, LODO summaries, ROC curves and gap bars.

`mammopath report RESULTS_DIR... --out DIR` merges the ``metrics_by_domain.csv`` of several runs
(one folder each, as written by :class:`~mammopath.callbacks.results.ResultsWriter`) into one
Markdown/CSV table and draws ROC curves per domain and domain-gap bars.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from mammopath.errors import DataFormatError
from mammopath.metrics.domain import summarize_lodo

log = logging.getLogger(__name__)

SHOWN_COLUMNS = (
    "run",
    "modality",
    "domain",
    "role",
    "n",
    "n_pos",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "balanced_accuracy",
    "sens_at_spec",
    "ece",
    "qwk",
    "pointing_game",
    "bach4_accuracy",
    "mean_heldout_auroc",
    "worst_heldout_auroc",
    "mean_source_auroc",
    "domain_gap",
)


def lodo_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per modality: mean/worst held-out AUROC, mean source AUROC, domain gap (source − held-out)."""
    return summarize_lodo(table)


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "–" if math.isnan(float(value)) else f"{float(value):.3f}"
    return str(value)


def to_markdown(df: pd.DataFrame, title: str | None = None, columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); ``columns`` default: the known result columns."""
    columns = columns or [c for c in SHOWN_COLUMNS if c in df.columns] or list(df.columns)
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def render_table(df: pd.DataFrame, title: str) -> Table:
    """A rich table of the main columns of a metrics frame."""
    columns = [c for c in SHOWN_COLUMNS if c in df.columns] or list(df.columns)
    table = Table(title=title)
    for column in columns:
        numeric = pd.api.types.is_numeric_dtype(df[column])
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for _, row in df.iterrows():
        table.add_row(*(_fmt(row[c]) for c in columns))
    return table


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # interrupted (KeyboardInterrupt, disk full...): the old file stays, no temporary is left
        tmp.unlink(missing_ok=True)
        raise


def write_frame(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a table as CSV atomically."""
    atomic_write(Path(path), frame.to_csv(index=False))
    return Path(path)


def write_tables(
    out_dir: str | Path,
    *,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    predictions: pd.DataFrame | None = None,
    title: str = "Results",
) -> Path:
    """Write metrics_by_domain / lodo_summary (CSV + Markdown) and predictions.csv under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics_by_domain.csv", table.to_csv(index=False))
    atomic_write(out / "metrics_by_domain.md", to_markdown(table, f"{title}: per domain"))
    atomic_write(out / "lodo_summary.csv", summary.to_csv(index=False))
    atomic_write(out / "lodo_summary.md", to_markdown(summary, f"{title}: leave-one-domain-out summary"))
    if predictions is not None:
        atomic_write(out / "predictions.csv", predictions.to_csv(index=False))
    return out


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct score threshold (tied scores form one diagonal step)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(float)
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.r_[0.0, np.cumsum(y)[last_of_tie]]
    fps = np.r_[0.0, (last_of_tie + 1) - tps[1:]]
    return fps / max(fps[-1], 1.0), tps / max(tps[-1], 1.0)


def plot_roc(predictions: pd.DataFrame, path: str | Path) -> Path:
    """ROC curve per (modality, domain) of a predictions.csv frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = sorted(predictions["modality"].unique())
    fig, axes = plt.subplots(1, len(modalities), figsize=(5 * len(modalities), 4.5), squeeze=False)
    for ax, modality in zip(axes[0], modalities, strict=False):
        sub = predictions[(predictions["modality"] == modality) & (predictions["label"] >= 0)]
        for (domain, role), group in sub.groupby(["domain", "role"]):
            labels = group["label"].to_numpy()
            if labels.min() == labels.max():
                continue
            fpr, tpr = roc_curve(group["score"].to_numpy(), labels)
            ax.plot(fpr, tpr, linestyle="-" if role == "source" else "--", label=f"{domain} ({role})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set(title=f"ROC — {modality}", xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_gaps(summary: pd.DataFrame, path: str | Path) -> Path:
    """Bar chart of mean source vs mean held-out AUROC per (run, modality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.get('run', '')} {r['modality']}".strip() for _, r in summary.iterrows()]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(labels)), 4))
    ax.bar(x - 0.2, summary["mean_source_auroc"], 0.4, label="source (test split)")
    ax.bar(x + 0.2, summary["mean_heldout_auroc"], 0.4, label="held-out domain")
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set(ylim=(0, 1), ylabel="AUROC", title="Domain gap (source − held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def make_report(result_dirs: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Merge several result folders into one table with figures; returns the merged summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables, summaries, predictions = [], [], []
    for folder in map(Path, result_dirs):
        metrics = folder / "metrics_by_domain.csv"
        if not metrics.is_file():
            raise DataFormatError(folder, "no metrics_by_domain.csv here (run `mammopath test` with ResultsWriter)")
        table = pd.read_csv(metrics).assign(run=folder.name)
        tables.append(table)
        summaries.append(lodo_summary(table.drop(columns="run")).assign(run=folder.name))
        if (folder / "predictions.csv").is_file():
            predictions.append(pd.read_csv(folder / "predictions.csv").assign(run=folder.name))
    table = pd.concat(tables, ignore_index=True)
    summary = pd.concat(summaries, ignore_index=True)
    write_tables(out, table=table, summary=summary, title="Report")
    plot_gaps(summary, out / "domain_gap.png")
    for frame in predictions:
        plot_roc(frame, out / f"roc_{frame['run'].iloc[0]}.png")
    return summary
