"""Fake INbreast release for tests: tiny DICOMs named as in the real ``AllDICOMs/`` for every CSV row.

Given the GENUINE ``INbreast.csv`` (copied byte for byte), writes ``INbreast Release 1.0/`` with one
16x16 14-bit DICOM per row named ``<FileName>_<16hex>_MG_<R|L>_<CC|ML|FB>_ANON.dcm`` (view ``ML`` in
the name where the CSV says ``MLO``; one file MONOCHROME1) and a plist ``AllXML/<FileName>.xml`` for
every row with BI-RADS ≥ 3. Patients are invented (real hashes are not public in the CSV): rows are
grouped 4 at a time in file order, each group sharing one hash. Without a CSV, a small one is written
with the real header, ``;``, CRLF, ``removed`` values and one whitespace ACR.

Usage: ``python tests/data/inbreast/make_fake.py OUT [INBREAST_CSV]``
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

from mammopath.io.annotations import write_inbreast_xml
from mammopath.synth.mammo import new_dataset
from mammopath.synth.releases_mammo import INBREAST_HEADER

RELEASE = "INbreast Release 1.0"


def _write(path: Path, pixels: np.ndarray, number: int, photometric: str) -> None:
    """A 14-bit INbreast-like DICOM with its PixelSpacing (70 µm)."""
    ds = new_dataset(path, pixels.astype(np.uint16), bits_stored=14, photometric=photometric)
    ds.PixelSpacing = [0.07, 0.07]
    ds.save_as(path, enforce_file_format=True)


def _own_csv(path: Path) -> None:
    rows = [
        ("R", "CC", "22678622", "4", "1"), ("R", "MLO", "22678646", "4", "3"), ("L", "CC", "22678694", "2", "4a"),
        ("L", "MLO", "22678787", " " * 190, "5"), ("R", "CC", "50994300", "1", "2"), ("R", "FB", "50994301", "1", "6"),
    ]  # fmt: skip
    lines = [INBREAST_HEADER] + [f"removed;removed;{lat};{v};200801;{fn};{acr};{b}" for lat, v, fn, acr, b in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("ascii"))


def make_fake(out: Path, csv_path: Path | None = None) -> dict[str, int]:
    """Write the fake release under ``out/INbreast Release 1.0``.

    Returns:
        ``{"images", "patients", "xml"}`` written.
    """
    release = Path(out) / RELEASE
    (release / "AllDICOMs").mkdir(parents=True, exist_ok=True)
    if csv_path is None:
        _own_csv(release / "INbreast.csv")
    else:
        shutil.copyfile(csv_path, release / "INbreast.csv")
    lines = (release / "INbreast.csv").read_text(encoding="ascii").splitlines()[1:]
    rng = np.random.default_rng(0)
    xml = 0
    for i, line in enumerate(lines):
        _, _, lat, view, _, file_name, _, birads = (v.strip() for v in line.split(";"))
        patient = hashlib.sha256(f"fake-{i // 4}".encode()).hexdigest()[:16]
        name = f"{file_name}_{patient}_MG_{lat}_{'ML' if view == 'MLO' else view}_ANON.dcm"
        pixels = rng.integers(0, 2**14, size=(16, 16), dtype=np.uint16)
        _write(release / "AllDICOMs" / name, pixels, i, "MONOCHROME1" if i == 0 else "MONOCHROME2")
        if birads[0] in "3456":
            write_inbreast_xml(release / "AllXML" / f"{file_name}.xml", [("Mass", [(3, 3), (9, 4), (8, 10), (4, 9)])])
            xml += 1
    return {"images": len(lines), "patients": (len(lines) + 3) // 4, "xml": xml}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("csv_path", type=Path, nargs="?")
    args = parser.parse_args()
    make_fake(args.out, args.csv_path)
