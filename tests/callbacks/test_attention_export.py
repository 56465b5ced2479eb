"""The attention export through `mammopath predict`: files, refusal to clobber, unlabelled new data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mammopath.cli import main
from mammopath.manifest import write_manifest

REPO = Path(__file__).resolve().parents[2]


def _args(manifests: str, roots: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--config", str(REPO / "tests/conf/tiny.yaml"),
        "--config", str(REPO / "tests/conf/synth.yaml"),
        "--config", str(REPO / "experiments/explain/export.yaml"),
        f"--data.manifest={manifests}", f"--data.root={roots}",
        "--run_name=export", f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
        *extra,
    ]  # fmt: skip


def test_export_writes_overlays_json_panels_index_and_metrics(synth_root: Path, tmp_path: Path, capsys) -> None:
    manifests = f"[{synth_root / 'manifest.csv'},{synth_root / 'paired_manifest.csv'}]"
    args = _args(manifests, f"[{synth_root},{synth_root}]", tmp_path, "--model.alignment=true")
    assert main(args) == 0
    out = tmp_path / "results" / "export" / "attention"
    index = pd.read_csv(out / "index.csv")
    assert set(index["modality"]) == {"mammo", "patho"} and len(index) > 4
    for overlay in index["overlay"]:
        assert (out / overlay).stat().st_size > 200 and Path(overlay).suffix == ".png"
    mammo = index[index["modality"] == "mammo"].iloc[0]
    record = json.loads((out / "mammo" / f"{Path(mammo['overlay']).stem}.json").read_text())
    assert len(record["regions"]) == 3 and len(record["evidence"]) == 3 and len(record["evidence"][0]) == 3
    assert "patient" in record["evidence_scope"]
    assert (out / record["evidence_panel"]).is_file()
    paired = [json.loads(p.read_text()) for p in (out / "mammo").glob("paired-*.json")]
    assert paired and all(r["evidence_scope"].startswith("within the same patient") for r in paired)
    metrics = pd.read_csv(out / "explain_metrics.csv")
    assert {"pointing_game", "deletion_auc", "insertion_auc"} <= set(metrics["metric"])
    assert {"random point", "relevance"} <= set(metrics["map"])
    capsys.readouterr()
    assert main(args) == 2  # overwrite: false refuses to clobber
    assert "already there" in capsys.readouterr().out
    assert main([*args[:1], *args[1:], "--trainer.inference_mode=true"]) == 2  # relevance needs gradients


def test_predict_on_an_unlabelled_unsplit_manifest(synth_root: Path, tmp_path: Path) -> None:
    rows = pd.read_csv(synth_root / "manifest.csv", dtype=str, keep_default_na=False)
    new = rows[rows["domain"].isin(["hospital_c", "centre_3"])].head(40).copy()
    for column in ("split", "label", "grade", "grade_scheme", "roi_path"):
        new[column] = ""
    new["domain"] = new["modality"].map({"mammo": "new_site_mg", "patho": "new_site_wsi"})
    write_manifest(new, tmp_path / "new.csv")
    args = _args(str(tmp_path / "new.csv"), str(synth_root), tmp_path, "--data.holdout_domains=[]")
    assert main(args) == 0
    index = pd.read_csv(tmp_path / "results" / "export" / "attention" / "index.csv")
    assert set(index["domain"]) == {"new_site_mg", "new_site_wsi"}
