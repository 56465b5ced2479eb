"""The report of a study (a sweep's runs): methods × held-out domains, seeds, intervals, figures, one HTML file.

`mammopath report RUN_DIRS... --out DIR` on result folders written by `mammopath sweep` (each holds a
``run.json``) writes, under ``DIR``:

- ``report.md`` / ``report.csv``: one row per method; per held-out domain the AUROC mean ± sd over seeds
  with the patient-level bootstrap 95% CI of the seed-mean, the mean and worst held-out AUROC, the mean
  source AUROC and the mean domain gap (source − held-out, WILDS);
- ``comparison.md`` / ``.csv``: every method against the baseline, per held-out domain, paired by sample
  and patient (:func:`mammopath.sweep.paired_deltas`);
- figures: ``roc_<domain>.png`` (every method, first seed), ``gaps.png`` (mean ± sd per method),
  ``reliability.png`` (held-out predictions of every method), ``seeds.png`` (held-out AUROC of every seed);
- ``report.html``: all of it in one self-contained file (figures embedded), beside the published
  reference numbers, labelled as published and on which data; its tables are built from the data frames
  (``DataFrame.to_html(escape=True)``), so a domain or method name is shown, never interpreted as markup.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from mammopath.errors import DataFormatError
from mammopath.report import _fmt, atomic_write, roc_curve, to_markdown, write_frame

#: Published numbers to print beside ours (algorithms.md §8): never our measurements.
PUBLISHED = pd.DataFrame(
    [
        {"source": "Bridging radiology and pathology (npj Digit Med 2026), the method",
         "data": "public benchmarks, LODO", "mean AUROC": "0.90", "domain gap": "0.03"},
        {"source": "same paper, DG baselines (ERM, MixStyle, IRM...)", "data": "public benchmarks, LODO",
         "mean AUROC": "—", "domain gap": "0.06–0.10"},
        {"source": "WILDS Camelyon17 (Koh et al. 2021): ERM / IRM, held-out hospital accuracy",
         "data": "Camelyon17-WILDS", "mean AUROC": "70.3 / 64.2 (accuracy, %)", "domain gap": "—"},
    ]
)  # fmt: skip


@dataclass
class RunResult:
    """One finished run of a study."""

    folder: Path
    method: str
    seed: int
    fold: str
    table: pd.DataFrame
    predictions: pd.DataFrame


def load_runs(folders: list[str | Path]) -> list[RunResult]:
    """The finished sweep runs among ``folders`` (each with ``run.json`` and ``metrics_by_domain.csv``)."""
    runs = []
    for folder in map(Path, folders):
        marker = folder / "run.json"
        if not marker.is_file():
            raise DataFormatError(
                folder, "no run.json here: a study report reads the result folders of `mammopath sweep`"
            )
        info = json.loads(marker.read_text())
        metrics = folder / "metrics_by_domain.csv"
        if info.get("status") != "done" or not metrics.is_file():
            continue
        predictions = pd.read_csv(folder / "predictions.csv", keep_default_na=False, na_values=[""])
        runs.append(
            RunResult(
                folder, str(info["method"]), int(info["seed"]), str(info["fold"]), pd.read_csv(metrics), predictions
            )
        )
    if not runs:
        raise DataFormatError(Path(str(folders[0]) if folders else "."), "no finished run among these folders")
    return runs


def _bootstrap_mean_auroc(runs: list[RunResult], domain: str, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """95% CI of the seed-mean AUROC on one domain, resampling patients (the same draw for every seed)."""
    from mammopath.sweep import _auroc

    frames = [r.predictions[(r.predictions["domain"] == domain) & (r.predictions["label"] >= 0)] for r in runs]
    patients = pd.unique(pd.concat(frames)["patient_id"])
    rng = np.random.default_rng(seed)
    members = [{p: g.index.to_numpy() for p, g in f.groupby("patient_id")} for f in frames]
    values = []
    for _ in range(n_boot):
        drawn = rng.choice(patients, size=len(patients), replace=True)
        means = []
        for frame, groups in zip(frames, members, strict=True):
            idx = np.concatenate([groups[p] for p in drawn if p in groups])
            sub = frame.loc[idx]
            means.append(_auroc(sub["label"].to_numpy(), sub["score"].to_numpy()))
        values.append(np.nanmean(means))
    low, high = np.nanquantile(values, [0.025, 0.975])
    return float(low), float(high)


def study_table(runs: list[RunResult], n_boot: int = 200) -> pd.DataFrame:
    """One row per method (see the module docstring); long-form numbers in the ``*_mean``/``*_sd`` columns."""
    rows = []
    methods = sorted({r.method for r in runs}, key=lambda m: (m != "erm", m))
    for method in methods:
        mine = [r for r in runs if r.method == method]
        row: dict[str, object] = {"method": method, "n_seeds": len(mine)}
        held = pd.concat([r.table[r.table["role"] == "heldout"].assign(seed=r.seed) for r in mine])
        source = pd.concat([r.table[r.table["role"] == "source"].assign(seed=r.seed) for r in mine])
        for domain, group in held.groupby("domain", sort=True):
            mean, sd = group["auroc"].mean(), group["auroc"].std(ddof=1) if len(group) > 1 else float("nan")
            low, high = _bootstrap_mean_auroc(mine, str(domain), n_boot) if n_boot else (float("nan"),) * 2
            row[f"{domain}"] = (
                f"{mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}]" if sd == sd else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
            )
            row[f"{domain}_mean"], row[f"{domain}_sd"], row[f"{domain}_ci_low"], row[f"{domain}_ci_high"] = (
                mean,
                sd,
                low,
                high,
            )
        per_seed = held.groupby("seed")["auroc"]
        row["mean_heldout_auroc"] = float(per_seed.mean().mean())
        row["worst_heldout_auroc"] = float(per_seed.min().mean())
        src = source.groupby(["seed", "modality"])["auroc"].mean()
        hld = held.groupby(["seed", "modality"])["auroc"].mean()
        gap = (src - hld).dropna()
        row["mean_source_auroc"] = float(src.mean())
        row["mean_domain_gap"] = float(gap.groupby(level=0).mean().mean()) if len(gap) else float("nan")
        row["mean_domain_gap_sd"] = (
            float(gap.groupby(level=0).mean().std(ddof=1)) if gap.index.nunique() > 1 else float("nan")
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _figures(runs: list[RunResult], out: Path, table: pd.DataFrame) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    methods = list(table["method"])
    held_domains = sorted({d for r in runs for d in r.table.loc[r.table["role"] == "heldout", "domain"]})
    for domain in held_domains:
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        for method in methods:
            run = min((r for r in runs if r.method == method), key=lambda r: r.seed)
            sub = run.predictions[(run.predictions["domain"] == domain) & (run.predictions["label"] >= 0)]
            if sub["label"].nunique() == 2:
                fpr, tpr = roc_curve(sub["score"].to_numpy(), sub["label"].to_numpy())
                ax.plot(fpr, tpr, label=method)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(
            title=f"ROC, held-out {domain} (seed {min(r.seed for r in runs)})",
            xlabel="1 − specificity",
            ylabel="sensitivity",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / f"roc_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(domain))}.png")  # any domain name: a safe file
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(methods)), 3.6))
    ax.bar(methods, table["mean_domain_gap"], yerr=table["mean_domain_gap_sd"].fillna(0), capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(ylabel="domain gap (source − held-out AUROC)", title="Domain gap, mean ± sd over seeds")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths.append(out / "gaps.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    bins = np.linspace(0, 1, 11)
    for method in methods:
        preds = pd.concat([r.predictions for r in runs if r.method == method])
        preds = preds[(preds["role"] == "heldout") & (preds["label"] >= 0)]
        idx = np.clip(np.searchsorted(bins[1:-1], preds["score"].to_numpy()), 0, 9)
        freq = [preds["label"].to_numpy()[idx == b].mean() if (idx == b).any() else np.nan for b in range(10)]
        ax.plot((bins[:-1] + bins[1:]) / 2, freq, marker="o", ms=3, label=method)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set(title="Reliability, held-out domains", xlabel="predicted probability", ylabel="observed frequency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "reliability.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(methods)), 3.6))
    for i, method in enumerate(methods):
        values = [r.table.loc[r.table["role"] == "heldout", "auroc"].mean() for r in runs if r.method == method]
        ax.scatter([i] * len(values), values, s=18)
    ax.set_xticks(range(len(methods)), methods, rotation=30)
    ax.set(ylabel="mean held-out AUROC", title="Seed spread")
    fig.tight_layout()
    paths.append(out / "seeds.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _table_html(frame: pd.DataFrame, columns: list[str] | None) -> str:
    """A frame as an HTML table built from the data (every cell and header escaped), numbers as in the Markdown."""
    shown = frame[columns] if columns else frame
    if shown.empty and not len(shown.columns):
        return "<p>(none)</p>"
    return shown.map(_fmt).to_html(index=False, escape=True, border=0)


def _html(title: str, sections: list[tuple[str, pd.DataFrame, list[str] | None]], figures: list[Path]) -> str:
    """The self-contained report: tables from the frames themselves (escaped), figures embedded."""
    parts = [f"<h1>{escape(title)}</h1>"]
    for heading, frame, columns in sections:
        parts.append(f"<h2>{escape(heading)}</h2>{_table_html(frame, columns)}")
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        image = f'<img alt="{escape(path.stem, quote=True)}" src="data:image/png;base64,{data}">'
        parts.append(f"<figure>{image}<figcaption>{escape(path.name)}</figcaption></figure>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
    )
    head = f"<head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>\n"


def make_study_report(
    folders: list[str | Path], out: str | Path, baseline: str = "erm", n_boot: int = 200
) -> pd.DataFrame:
    """Write the study report (see the module docstring) and return its table."""
    from mammopath.sweep import _paired_bootstrap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(folders)
    table = study_table(runs, n_boot=n_boot)
    suffixes = ("_mean", "_sd", "_ci_low", "_ci_high")
    shown = [c for c in table.columns if not c.endswith(suffixes) or c in ("mean_heldout_auroc",)]
    write_frame(out / "report.csv", table)
    comparisons = []
    rng = np.random.default_rng(0)
    base = [r for r in runs if r.method == baseline]
    for method in sorted({r.method for r in runs} - {baseline}):
        mine = {r.seed: r for r in runs if r.method == method}
        seeds = [r.seed for r in base if r.seed in mine]
        if not seeds:
            continue
        frames = []
        for r in base:
            if r.seed in mine:
                other = mine[r.seed].predictions[["sample_id", "score"]].rename(columns={"score": "score_m"})
                frames.append(r.predictions.merge(other, on="sample_id").assign(seed=r.seed))
        merged = pd.concat(frames)
        merged = merged[(merged["role"] == "heldout") & (merged["label"] >= 0)]
        for domain, group in merged.groupby("domain"):
            point, low, high = _paired_bootstrap(group, seeds, n_boot or 1, rng)
            comparisons.append({"method": method, "baseline": baseline, "heldout_domain": domain, "n_seeds": len(seeds),
                                "delta_auroc": point, "ci_low": low, "ci_high": high})  # fmt: skip
    comparison = pd.DataFrame(comparisons)
    write_frame(out / "comparison.csv", comparison)
    figures = _figures(runs, out, table)
    md_table = to_markdown(table, "Held-out AUROC per method: mean ± sd over seeds [patient bootstrap 95% CI]", shown)
    md_comp = to_markdown(comparison, f"Each method − {baseline}, held-out AUROC (paired patient bootstrap 95% CI)",
                          list(comparison.columns) or None)  # fmt: skip
    md_pub = to_markdown(
        PUBLISHED, "Published reference numbers (not measured here; other data)", list(PUBLISHED.columns)
    )
    atomic_write(out / "comparison.md", md_comp)
    figure_md = "\n".join(f"![{p.stem}]({p.name})" for p in figures)
    atomic_write(out / "report.md", f"{md_table}\n{md_comp}\n{md_pub}\n{figure_md}\n")
    sections = [
        ("Held-out AUROC per method", table, shown),
        (f"Against {baseline}", comparison, list(comparison.columns) or None),
        ("Published (other data)", PUBLISHED, list(PUBLISHED.columns)),
    ]
    atomic_write(out / "report.html", _html("mammopath study report", sections, figures))
    return table
