"""Fake CBIS-DDSM release for tests: tiny DICOMs in the real layouts for every image of the CSVs.

Given the GENUINE description CSVs, writes one 16x16 uint16 MONOCHROME2 DICOM per full mammogram
(3103 in ~seconds) at exactly the CSV path (legacy layout) or at the NBIA retriever path
(``<ImageFolder>/<date>-DDSM-NA-<study5>/1.000000-full mammogram images-<series5>/1-1.dcm``), and
optionally the ROI files: 8-bit 0/255 masks (16x16) and 16-bit greyscale crops (8x8) under the file
names the CSVs give (legacy) or renamed ``000000→1-1``, ``000001→1-2`` (NBIA), so mask and crop names
are swapped between mass and calc exactly as in the genuine data. The CSVs are copied next to
``CBIS-DDSM/`` byte for byte. Without CSVs, a few rows are written with the real headers and quirks.

Usage: ``python tests/data/cbis_ddsm/make_fake.py OUT [CSV_FOLDER] [--layout nbia] [--limit N] [--rois]``
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from mammopath.synth.mammo import new_dataset
from mammopath.synth.releases_mammo import CBIS_FILES, write_cbis_csv


def _write(path: Path, pixels: np.ndarray, number: int) -> None:
    """A minimal valid DICOM (uint8 → 8-bit, uint16 → 16-bit); ~1 ms each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bits = 8 if pixels.dtype == np.uint8 else 16
    new_dataset(path, pixels, bits_stored=bits).save_as(path, enforce_file_format=True)


def _own_csvs(folder: Path) -> None:
    """Four small CSVs (3 patients per file) with the real headers, CRLF, NA and trailing-newline quirks."""
    n = 0
    for (kind, split), name in CBIS_FILES.items():
        rows = []
        prefix = f"{'Mass' if kind == 'mass' else 'Calc'}-{'Training' if split == 'train' else 'Test'}"
        for i in range(3):
            n += 1
            patient = f"P_{n:05d}"
            key = f"{prefix}_{patient}_LEFT_CC"
            study, series, roi = (f"1.3.6.1.4.1.9590.100.1.2.{n}{k}0000{n:05d}" for k in (1, 2, 3))
            crop_name, mask_name = ("000000.dcm", "000001.dcm") if kind == "mass" else ("000001.dcm", "000000.dcm")
            rows.append([
                patient, "2", "LEFT", "CC", "1", "mass" if kind == "mass" else "calcification", "OVAL", "NA", "4",
                "MALIGNANT" if i == 0 else "BENIGN", "3", f"{key}/{study}/{series}/000000.dcm",
                f"{key}_1/{study}/{roi}/{crop_name}", f"{key}_1/{study}/{roi}/{mask_name}",
            ])  # fmt: skip
        write_cbis_csv(folder / name, kind, rows)


def _nbia(csv_path: str, description: str) -> str:
    """The NBIA retriever path of a CSV path (``000000.dcm`` → ``1-1.dcm``, ``000001.dcm`` → ``1-2.dcm``)."""
    folder, study, series, name = csv_path.split("/")
    instance = int(name.split(".")[0]) + 1
    return f"{folder}/08-29-2017-DDSM-NA-{study[-5:]}/1.000000-{description}-{series[-5:]}/1-{instance}.dcm"


def make_fake(
    out: Path, csv_folder: Path | None = None, layout: str = "legacy", limit: int | None = None, rois: bool = False
) -> dict[str, int]:
    """Write the fake release under ``out`` (CSVs in ``out``, DICOMs under ``out/CBIS-DDSM``).

    Args:
        out: output folder.
        csv_folder: folder with the four genuine CSVs (None: write small CSVs of our own).
        layout: ``legacy`` (CSV paths) or ``nbia`` (retriever folders).
        limit: write only ``limit`` images spread evenly over the sorted CSV paths (so mass and calc,
            training and test are all present); the others stay off disk.
        rois: also write each abnormality's crop and mask.

    Returns:
        ``{"images": written, "rois": ROI files written}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if csv_folder is None:
        _own_csvs(out)
    else:
        for name in CBIS_FILES.values():
            shutil.copyfile(Path(csv_folder) / name, out / name)
    records: dict[str, list[tuple[str, str]]] = {}
    for name in CBIS_FILES.values():
        with open(out / name, newline="", encoding="ascii") as f:
            for row in csv.DictReader(f):
                image = row["image file path"].strip()
                records.setdefault(image, []).append(
                    (row["cropped image file path"].strip(), row["ROI mask file path"].strip())
                )
    rng = np.random.default_rng(0)
    base = out / "CBIS-DDSM"
    written = roi_files = 0
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 5:11] = 255
    chosen = sorted(records)
    if limit is not None:
        chosen = chosen[:: max(1, len(chosen) // max(limit, 1))][:limit]
    for image in chosen:
        pixels = rng.integers(0, 65535, size=(16, 16), dtype=np.uint16)
        _write(base / (image if layout == "legacy" else _nbia(image, "full mammogram images")), pixels, written)
        written += 1
        if not rois:
            continue
        for crop_path, mask_path in records[image]:
            crop = rng.integers(100, 60000, size=(8, 8), dtype=np.uint16)
            if layout == "legacy":
                targets = [(base / crop_path, crop), (base / mask_path, mask)]
            else:
                crop_nbia, mask_nbia = _nbia(crop_path, "ROI mask images"), _nbia(mask_path, "ROI mask images")
                targets = [(base / crop_nbia, crop), (base / mask_nbia, mask)]
            for path, pixels_roi in targets:
                _write(path, pixels_roi, 10_000_000 + roi_files)
                roi_files += 1
    return {"images": written, "rois": roi_files}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("csv_folder", type=Path, nargs="?")
    parser.add_argument("--layout", choices=("legacy", "nbia"), default="legacy")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--rois", action="store_true")
    args = parser.parse_args()
    make_fake(args.out, args.csv_folder, args.layout, args.limit, args.rois)
