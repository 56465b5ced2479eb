"""Synthetic CBIS-DDSM and INbreast releases in their TRUE on-disk layouts and byte formats.

Written so that ``mammopath prepare cbis-ddsm|inbreast`` and every reader run on them exactly as on
the genuine downloads (dataset_formats.md §1-2): the four CBIS-DDSM CSVs with their exact headers,
CRLF records, the quoted path with a trailing ``\\n`` (ROI path in mass files, crop path in calc
files), ``NA`` missing markers, crop/mask file names swapped between mass and calc (and within the
NBIA layout); INbreast ``AllDICOMs/<FileName>_<hash>_MG_<R|L>_<CC|ML>_ANON.dcm`` (14-bit, one
MONOCHROME1, one JPEG 2000), ``AllXML`` plist ROIs and the ``;``-separated CRLF ``INbreast.csv``.
Images carry the designed signal of :func:`render_mammogram` (malignant masses are spiculated).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from mammopath.io.annotations import write_inbreast_xml
from mammopath.synth.mammo import apply_style, new_dataset, render_mammogram, write_mammogram_dicom
from mammopath.synth.styles import MammoStyle

CBIS_HEADERS: dict[str, list[str]] = {
    "mass": [
        "patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
        "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path",
        "cropped image file path", "ROI mask file path",
    ],
    "calc": [
        "patient_id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
        "calc type", "calc distribution", "assessment", "pathology", "subtlety", "image file path",
        "cropped image file path", "ROI mask file path",
    ],
}  # fmt: skip
CBIS_FILES: dict[tuple[str, str], str] = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
INBREAST_HEADER = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"
UID_PREFIX = "1.3.6.1.4.1.9590.100.1.2."
CBIS_STYLE = MammoStyle("cbis_ddsm", bits_stored=16, noise=0.01)
INBREAST_STYLE = MammoStyle("inbreast", bits_stored=14, spacing_tag="PixelSpacing", spacing_mm=0.07)


def write_cbis_csv(path: Path, kind: str, rows: Iterable[Sequence[str]]) -> Path:
    """Write one description CSV with the real header and byte quirks.

    ``rows`` hold the 14 values in header order, paths without the trailing newline: it is added
    here to the ROI path (mass) or the crop path (calc), and ``csv`` then quotes that field.
    """
    quirk = 13 if kind == "mass" else 12
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="ascii") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(CBIS_HEADERS[kind])
        for row in rows:
            values = list(row)
            values[quirk] = values[quirk] + "\n"
            writer.writerow(values)
    return path


def _uid(rng: np.random.Generator) -> str:
    return UID_PREFIX + "".join(str(d) for d in rng.integers(0, 10, size=38)).lstrip("0")


def _dicom_8bit_mask(path: Path, mask: np.ndarray, patient: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = new_dataset(path, mask.astype(np.uint8) * 255, bits_stored=8)
    ds.PatientID = patient
    ds.SeriesDescription = "ROI mask images"
    ds.save_as(path, enforce_file_format=True)


def _dicom_crop(path: Path, crop: np.ndarray, patient: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = new_dataset(path, crop.astype(np.uint16), bits_stored=16)
    ds.PatientID = patient
    ds.SeriesDescription = "cropped images"
    ds.save_as(path, enforce_file_format=True)


def _crop_of(stored: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        ys, xs = np.array([0, stored.shape[0] - 1]), np.array([0, stored.shape[1] - 1])
    crop = stored[max(ys.min() - 2, 0) : ys.max() + 3, max(xs.min() - 2, 0) : xs.max() + 3].copy()
    crop.flat[0], crop.flat[-1] = 1, 3  # never binary, so a crop is always told from a mask by content
    return crop


def write_cbis_ddsm_release(
    out: Path,
    seed: int,
    n_patients: int = 12,
    layout: Literal["nbia", "legacy"] = "nbia",
    shape: tuple[int, int] = (64, 48),
) -> dict[str, int]:
    """Write a tiny CBIS-DDSM release under ``out/CBIS-DDSM`` plus the four CSVs in ``out``.

    Every patient has one breast with CC and MLO views; every third patient also has a second
    abnormality type, and one patient has a ``mass`` train row and a ``calc`` test row (the real
    cross-type overlap). In the NBIA layout, the first shared crop/mask series is written with the
    names swapped (mask ``1-1.dcm``, crop ``1-2.dcm``) as in the genuine retriever output.

    Returns:
        ``{"images", "patients", "malignant"}`` (malignant = images with a MALIGNANT abnormality).
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows: dict[tuple[str, str], list[list[str]]] = {key: [] for key in CBIS_FILES}
    images = malignant_images = 0
    swapped_done = False
    for p in range(n_patients):
        patient = f"P_{p + 1:05d}"
        split = "test" if p % 4 == 3 else "train"
        kinds = [("mass" if p % 2 == 0 else "calc", split)]
        if p % 3 == 0:
            kinds.append(("calc" if p % 2 == 0 else "mass", split))
        if p == 1:
            kinds = [("mass", "train"), ("calc", "test")]
        side = "LEFT" if rng.random() < 0.5 else "RIGHT"
        for kind, ksplit in kinds:
            for view in ("CC", "MLO"):
                folder = f"{'Mass' if kind == 'mass' else 'Calc'}-{'Training' if ksplit == 'train' else 'Test'}"
                image_key = f"{folder}_{patient}_{side}_{view}"
                malignant = bool(rng.random() < 0.5)
                case = render_mammogram(rng, shape, malignant, marker=False)
                image, mask = (case.image, case.mask) if side == "LEFT" else (case.image[:, ::-1], case.mask[:, ::-1])
                stored = apply_style(image, CBIS_STYLE, rng)
                study, series = _uid(rng), _uid(rng)
                csv_image = f"{image_key}/{study}/{series}/000000.dcm"
                if layout == "legacy":
                    full = out / "CBIS-DDSM" / csv_image
                else:
                    date = f"{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}-2017"
                    na = "" if p == 2 else "NA-"  # some retriever versions leave out "NA-"
                    full = (out / "CBIS-DDSM" / image_key / f"{date}-DDSM-{na}{study[-5:]}"
                            / f"1.000000-full mammogram images-{series[-5:]}" / "1-1.dcm")  # fmt: skip
                write_mammogram_dicom(full, stored, CBIS_STYLE, patient_id=image_key, laterality=side[0], view=view,
                                      study_uid=study, series_uid=series)  # fmt: skip
                n_abn = 2 if rng.random() < 0.25 else 1
                pathologies = []
                for abn in range(1, n_abn + 1):
                    roi_mask = mask if abn == 1 else np.roll(mask, shape[0] // 4, axis=0)
                    path_label = "MALIGNANT" if malignant and abn == 1 else str(
                        rng.choice(["BENIGN", "BENIGN_WITHOUT_CALLBACK"]))  # fmt: skip
                    pathologies.append(path_label)
                    roi_folder = f"{image_key}_{abn}"
                    r_study, r_series, c_series = _uid(rng), _uid(rng), _uid(rng)
                    shared = kind == "calc" or rng.random() < 0.8  # mass: crop/ROI mostly share a series
                    if kind == "mass":
                        crop_csv = f"{roi_folder}/{r_study}/{c_series if not shared else r_series}/000000.dcm"
                        mask_csv = f"{roi_folder}/{r_study}/{r_series}/{'000001' if shared else '000000'}.dcm"
                    else:
                        crop_csv = f"{roi_folder}/{r_study}/{r_series}/000001.dcm"
                        mask_csv = f"{roi_folder}/{r_study}/{r_series}/000000.dcm"
                    crop = _crop_of(stored, roi_mask)
                    if layout == "legacy":
                        _dicom_crop(out / "CBIS-DDSM" / crop_csv, crop, image_key)
                        _dicom_8bit_mask(out / "CBIS-DDSM" / mask_csv, roi_mask, image_key)
                    else:
                        sdir = out / "CBIS-DDSM" / roi_folder / f"08-29-2017-DDSM-NA-{r_study[-5:]}"
                        if shared:
                            names = ("1-2.dcm", "1-1.dcm") if not swapped_done else ("1-1.dcm", "1-2.dcm")
                            swapped_done = True
                            ser = sdir / f"1.000000-ROI mask images-{r_series[-5:]}"
                            _dicom_crop(ser / names[0], crop, image_key)
                            _dicom_8bit_mask(ser / names[1], roi_mask, image_key)
                        else:
                            _dicom_crop(sdir / f"1.000000-cropped images-{c_series[-5:]}" / "1-1.dcm", crop, image_key)
                            _dicom_8bit_mask(sdir / f"2.000000-ROI mask images-{r_series[-5:]}" / "1-1.dcm",
                                             roi_mask, image_key)  # fmt: skip
                    birads = str(case.birads) if rng.random() > 0.1 else "0"
                    if kind == "mass":
                        desc = ["IRREGULAR" if malignant else "OVAL", "SPICULATED" if malignant else "NA"]
                    else:
                        desc = ["PLEOMORPHIC" if malignant else "LUCENT_CENTERED", "NA"]
                    rows[(kind, ksplit)].append([
                        patient, str(rng.integers(1, 5)), side, view, str(abn), "mass" if kind == "mass"
                        else "calcification", *desc, birads, path_label, str(rng.integers(1, 6)), csv_image,
                        crop_csv, mask_csv,
                    ])  # fmt: skip
                images += 1
                malignant_images += "MALIGNANT" in pathologies
    for (kind, ksplit), name in CBIS_FILES.items():
        write_cbis_csv(out / name, kind, rows[(kind, ksplit)])
    return {"images": images, "patients": n_patients, "malignant": malignant_images}


def _outline(mask: np.ndarray, n: int = 24) -> np.ndarray:
    """A polygon (x, y) around a binary mask: the farthest mask pixel along ``n`` rays from its centroid."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    angles = np.arctan2(ys - cy, xs - cx)
    dist = np.hypot(ys - cy, xs - cx)
    points = []
    for a in np.linspace(-np.pi, np.pi, n, endpoint=False):
        sel = np.abs(np.angle(np.exp(1j * (angles - a)))) < np.pi / n
        r = dist[sel].max() if sel.any() else 0.5
        points.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return np.asarray(points)


def write_inbreast_release(
    out: Path, seed: int, n_patients: int = 8, shape: tuple[int, int] = (64, 52)
) -> dict[str, int]:
    """Write a tiny ``out/INbreast Release 1.0`` (AllDICOMs, AllXML, INbreast.csv).

    Each patient has 2-4 views; images with BI-RADS ≥ 3 get a plist XML of their lesion. One image is
    MONOCHROME1 and one JPEG 2000 lossless; one ACR is whitespace.

    Returns:
        ``{"images", "patients", "malignant", "annotated"}`` (malignant = BI-RADS 4a-6, the proxy).
    """
    release = Path(out) / "INbreast Release 1.0"
    rng = np.random.default_rng(seed)
    lines = [INBREAST_HEADER]
    images = malignant_count = annotated = 0
    file_number = 20586900 + int(rng.integers(0, 1000))
    for _ in range(n_patients):
        patient = "".join(f"{b:02x}" for b in rng.integers(0, 256, size=8))
        side = str(rng.choice(["L", "R"]))
        views = [(side, "CC"), (side, "ML")]
        if rng.random() < 0.5:
            other = "R" if side == "L" else "L"
            views += [(other, "CC"), (other, "ML")]
        for lat, view in views:
            file_number += int(rng.integers(1, 60))
            birads = str(rng.choice(["1", "2", "2", "3", "4a", "4b", "4c", "5", "6"]))
            malignant = birads[0] in "456"
            case = render_mammogram(rng, shape, malignant, marker=False)
            image, mask = (case.image, case.mask) if lat == "L" else (case.image[:, ::-1], case.mask[:, ::-1])
            style = INBREAST_STYLE
            if images == 1:
                style = replace(style, photometric="MONOCHROME1")
            elif images == 2:
                style = replace(style, compression="jpeg2000")
            stored = apply_style(image, style, rng)
            name = f"{file_number}_{patient}_MG_{lat}_{view}_ANON.dcm"
            write_mammogram_dicom(release / "AllDICOMs" / name, stored, style, patient_id=patient, laterality=lat,
                                  view="MLO" if view == "ML" else view)  # fmt: skip
            if birads not in ("1", "2") and mask.any():
                write_inbreast_xml(release / "AllXML" / f"{file_number}.xml", [("Mass", _outline(mask))])
                annotated += 1
            acr = " " * 190 if images == 0 else str(rng.integers(1, 5))
            date = str(rng.choice(["200801", "200802", "200901", "200902", "201001"]))
            csv_view = "MLO" if view == "ML" else view
            lines.append(f"removed;removed;{lat};{csv_view};{date};{file_number};{acr};{birads}")
            images += 1
            malignant_count += malignant
    release.mkdir(parents=True, exist_ok=True)
    (release / "INbreast.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("ascii"))
    return {"images": images, "patients": n_patients, "malignant": malignant_count, "annotated": annotated}


__all__ = ["write_cbis_csv", "write_cbis_ddsm_release", "write_inbreast_release"]
