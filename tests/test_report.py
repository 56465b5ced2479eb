from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc

from mammopath.report import make_report, roc_curve, to_markdown, write_tables


def test_roc_curve_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = (rng.random(60) < 0.4).astype(int)
    fpr, tpr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def _table(gap: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "modality": ["mammo", "mammo", "patho"],
            "domain": ["a", "c", "x"],
            "role": ["source", "heldout", "source"],
            "n": [10, 10, 10],
            "auroc": [0.9, 0.9 - gap, 0.8],
        }
    )


def test_report_merges_runs_and_draws(tmp_path: Path) -> None:
    for name, gap in (("run1", 0.1), ("run2", 0.3)):
        table = _table(gap)
        summary = pd.DataFrame(
            {"modality": ["mammo"], "mean_heldout_auroc": [0.9 - gap], "mean_source_auroc": [0.9], "domain_gap": [gap]}
        )
        predictions = pd.DataFrame(
            {"modality": "mammo", "domain": "a", "role": "source", "label": [0, 1, 0, 1], "score": [0.1, 0.9, 0.3, 0.6]}
        )
        write_tables(tmp_path / name, table=table, summary=summary, predictions=predictions)
    summary = make_report([tmp_path / "run1", tmp_path / "run2"], tmp_path / "report")
    gaps = summary[summary["modality"] == "mammo"].set_index("run")["domain_gap"]
    assert abs(gaps["run1"] - 0.1) < 1e-9
    assert abs(gaps["run2"] - 0.3) < 1e-9
    assert (tmp_path / "report" / "domain_gap.png").stat().st_size > 1000
    assert (tmp_path / "report" / "roc_run1.png").stat().st_size > 1000
    markdown = (tmp_path / "report" / "metrics_by_domain.md").read_text()
    assert "| run1 | mammo | c | heldout |" in markdown


def test_markdown_formats_nan_and_floats() -> None:
    text = to_markdown(pd.DataFrame({"domain": ["a"], "auroc": [float("nan")], "ece": [0.12345]}))
    assert "| a | – | 0.123 |" in text


def test_study_report_html_escapes_names_from_the_data(tmp_path: Path) -> None:
    """A domain called ``<script>...`` is shown as text in report.html, never run; the file names stay safe."""
    import json
    from html.parser import HTMLParser

    from mammopath.study import make_study_report

    evil = "<script>alert('x')</script>"
    rng = np.random.default_rng(0)
    folders = []
    for method in ("erm", "irm"):
        folder = tmp_path / method
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"status": "done", "method": method, "seed": 0, "fold": "f"}))
        labels = np.tile([0, 1], 10)
        rows = []
        for domain, role in (("a", "source"), (evil, "heldout")):
            scores = np.clip(labels * 0.3 + rng.random(20) * 0.7, 0, 1)
            for i, (label, score) in enumerate(zip(labels, scores, strict=True)):
                rows.append({"sample_id": f"{domain}{i}", "patient_id": f"{domain}p{i // 2}", "modality": "mammo",
                             "domain": domain, "role": role, "label": label, "score": score})  # fmt: skip
        predictions = pd.DataFrame(rows)
        predictions.to_csv(folder / "predictions.csv", index=False)
        auroc = {d: roc_auc_score(g["label"], g["score"]) for d, g in predictions.groupby("domain")}
        pd.DataFrame(
            {
                "modality": "mammo",
                "domain": ["a", evil],
                "role": ["source", "heldout"],
                "auroc": [auroc["a"], auroc[evil]],
            }
        ).to_csv(folder / "metrics_by_domain.csv", index=False)
        folders.append(folder)
    make_study_report(folders, tmp_path / "report", n_boot=5)
    html = (tmp_path / "report" / "report.html").read_text()

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.append(tag)

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    parser = Tags()
    parser.feed(html)
    assert "script" not in parser.tags and "<script>" not in html
    assert evil in "".join(parser.text)  # shown as text: the header of its column and its figure's caption
    assert "&lt;script&gt;" in html and {"table", "th", "td", "img"} <= set(parser.tags)
    figures = sorted(p.name for p in (tmp_path / "report").glob("roc_*.png"))
    assert figures == ["roc__script_alert__x____script_.png"]
