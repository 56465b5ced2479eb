"""Fake BACH release (torchgeo style): the real layout around the genuine ground-truth CSV, 8x8 photos.

``make_fake(out)`` writes ``out/ICIAR2018_BACH_Challenge/Photos/<Class>/<file>`` for every row of the
genuine ``microscopy_ground_truth.csv`` (copied byte for byte, headerless CRLF) or of a 2-per-class
stand-in when the genuine file is not available. Run as a script to write one: ``python make_fake.py OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

GENUINE = Path(__file__).resolve().parents[3].parent / "shared/real_samples/bach/microscopy_ground_truth.csv"


def make_fake(out: str | Path, genuine_csv: str | Path | None = None) -> Path:
    """Write the fake release under ``out`` and return its root (``ICIAR2018_BACH_Challenge``)."""
    root = Path(out) / "ICIAR2018_BACH_Challenge"
    photos = root / "Photos"
    photos.mkdir(parents=True, exist_ok=True)
    if genuine_csv is not None:
        data = Path(genuine_csv).read_bytes()
    else:
        rows = [f"{p}{i:03d}.tif,{c}" for c, p in (("Normal", "n"), ("Benign", "b"), ("InSitu", "is"),
                                                    ("Invasive", "iv")) for i in (1, 2)]  # fmt: skip
        data = ("\r\n".join(rows) + "\r\n").encode()
    (photos / "microscopy_ground_truth.csv").write_bytes(data)
    pixels = np.full((8, 8, 3), 200, dtype=np.uint8)
    for line in data.decode().splitlines():
        if line.strip():
            name, klass = (f.strip() for f in line.split(","))
            (photos / klass).mkdir(exist_ok=True)
            tifffile.imwrite(photos / klass / name, pixels, photometric="rgb", metadata=None)
    return root


if __name__ == "__main__":
    make_fake(sys.argv[1], GENUINE if GENUINE.is_file() else None)
