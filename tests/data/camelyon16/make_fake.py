"""Fake CAMELYON16 release: the official layout around the genuine ``GT.csv``, 8x8 single-level TIFFs.

``make_fake(out, genuine_csv)`` writes ``out/CAMELYON16/training/{normal,tumor}`` (the 270 official
training names), ``testing/images/test_XXX.tif`` for every reference row except test_049 (removed from
the release), ``testing/reference.csv`` (the genuine file, headerless, capitalised ids) and an ASAP
lesion XML for a few tumour slides. ``prepare`` never decodes pixels, so 8x8 files are enough.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

from mammopath.datasets.camelyon16 import TRAINING_SLIDES
from mammopath.io.annotations import Polygon, write_asap_xml

GENUINE = Path(__file__).resolve().parents[3].parent / "shared/real_samples/camelyon16/GT.csv"


def make_fake(out: str | Path, genuine_csv: str | Path | None = None, training: bool = True) -> Path:
    """Write the fake release under ``out`` and return its root (``CAMELYON16``)."""
    root = Path(out) / "CAMELYON16"
    (root / "testing" / "images").mkdir(parents=True, exist_ok=True)
    if genuine_csv is not None:
        data = Path(genuine_csv).read_bytes()
    else:
        data = b"Test_001,Tumor,IDC,Macro\r\nTest_002,Normal,IDC,None\r\n"
    (root / "testing" / "reference.csv").write_bytes(data)
    pixels = np.full((8, 8, 3), 200, dtype=np.uint8)
    names = [line.split(",")[0].strip().lower() for line in data.decode().splitlines() if line.strip()]
    for name in names:
        if name != "test_049":
            tifffile.imwrite(root / "testing" / "images" / f"{name}.tif", pixels, photometric="rgb", metadata=None)
    if training:
        for name in TRAINING_SLIDES:
            folder = root / "training" / name.split("_")[0]
            folder.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / f"{name}.tif", pixels, photometric="rgb", metadata=None)
        square = np.array([[1.0, 1.0], [6.0, 1.0], [6.0, 6.0], [1.0, 6.0]])
        for name in ("tumor_001", "tumor_002"):
            write_asap_xml(root / "training" / "lesion_annotations" / f"{name}.xml", [Polygon(square, "a", True, "_0")])
    return root


if __name__ == "__main__":
    make_fake(sys.argv[1], GENUINE if GENUINE.is_file() else None)
