"""Fake CAMELYON17 release: the official layout around the genuine ``stage_labels.csv``.

``make_fake(out, genuine_csv)`` writes ``out/CAMELYON17/training/center_N/patient_XXX_node_Y.tif``
(8x8 single-level TIFFs; ``prepare`` only needs the files to exist) for every slide row of the
genuine CSV, the CSV itself in ``training/`` and one ASAP lesion XML (``metastases``/``normal`` groups)
per centre for its first micro/macro slide.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

from mammopath.io.annotations import Polygon, write_asap_xml

GENUINE = Path(__file__).resolve().parents[3].parent / "shared/real_samples/camelyon17/stage_labels.csv"


def make_fake(out: str | Path, genuine_csv: str | Path | None = None) -> Path:
    """Write the fake release under ``out`` and return its root (``CAMELYON17``)."""
    root = Path(out) / "CAMELYON17"
    (root / "training").mkdir(parents=True, exist_ok=True)
    if genuine_csv is not None:
        data = Path(genuine_csv).read_text()
    else:
        labels = ["macro", "negative", "micro", "itc", "negative"]
        data = "patient,stage\npatient_000.zip,pN1\n" + "".join(
            f"patient_000_node_{i}.tif,{s}\n" for i, s in enumerate(labels)
        )
    (root / "training" / "stage_labels.csv").write_text(data)
    pixels = np.full((8, 8, 3), 200, dtype=np.uint8)
    annotated: set[int] = set()
    outer = np.array([[0.0, 0.0], [7.0, 0.0], [7.0, 7.0], [0.0, 7.0]])
    inner = np.array([[2.0, 2.0], [4.0, 2.0], [4.0, 4.0], [2.0, 4.0]])
    for line in data.splitlines()[1:]:
        name, label = (f.strip() for f in line.split(","))
        if not name.endswith(".tif"):
            continue
        center = int(name[8:11]) // 20
        folder = root / "training" / f"center_{center}"
        folder.mkdir(exist_ok=True)
        tifffile.imwrite(folder / name, pixels, photometric="rgb", metadata=None)
        if label in ("micro", "macro") and center not in annotated:
            annotated.add(center)
            polygons = [Polygon(outer, "a", True, "metastases"), Polygon(inner, "b", False, "normal")]
            write_asap_xml(root / "training" / "lesion_annotations" / name.replace(".tif", ".xml"), polygons)
    return root


if __name__ == "__main__":
    make_fake(sys.argv[1], GENUINE if GENUINE.is_file() else None)
