"""The bad-input corpus: every malformed file or manifest raises a mammopath error naming the file/row and the problem.

Files are generated in ``tmp_path`` in the real formats (DICOM, pyramidal TIFF, PNG, ASAP XML, CSV manifests),
then broken the way hospital archives break them. docs/reliability.md lists each case with its message.
Also: every DICOM file shipped inside the installed pydicom package loads or raises our error, nothing else.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
from PIL import Image

from mammopath.errors import (
    AnnotationError,
    DataFormatError,
    DicomReadError,
    MammopathError,
    ManifestError,
    MissingDecoderError,
    MissingMPPError,
    SlideReadError,
)
from mammopath.io.dicom import read_mammogram
from mammopath.io.microscopy import read_microscopy
from mammopath.io.slide import open_slide
from mammopath.synth.mammo import new_dataset
from mammopath.synth.patho import write_pyramid_tiff


def _pixels(shape: tuple[int, int] = (24, 20)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4096, size=shape, dtype=np.uint16)


def _dicom(path: Path, **tags: object) -> Path:
    ds = new_dataset(path, _pixels(), bits_stored=12)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _rgb(size: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


# -- DICOM ------------------------------------------------------------------------------------------------------
def _truncated_pixels(tmp: Path) -> Path:
    full = _dicom(tmp / "full.dcm").read_bytes()
    (tmp / "cut.dcm").write_bytes(full[: len(full) - 200])  # inside Pixel Data
    return tmp / "cut.dcm"


def _truncated_header(tmp: Path) -> Path:
    (tmp / "head.dcm").write_bytes(_dicom(tmp / "full.dcm").read_bytes()[:300])
    return tmp / "head.dcm"


def _not_dicom(tmp: Path) -> Path:
    (tmp / "notes.dcm").write_text("Patient notes, not an image\n" * 20)
    return tmp / "notes.dcm"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.dcm").write_bytes(b"")
    return tmp / "empty.dcm"


def _no_pixel_data(tmp: Path) -> Path:
    ds = pydicom.dcmread(_dicom(tmp / "full.dcm"))
    del ds.PixelData
    ds.save_as(tmp / "nopix.dcm")
    return tmp / "nopix.dcm"


def _unsupported_syntax(tmp: Path) -> Path:
    ds = pydicom.dcmread(_dicom(tmp / "full.dcm"))
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: no pydicom decoder
    ds.save_as(tmp / "mpeg2.dcm")
    return tmp / "mpeg2.dcm"


def _rgb_dicom(tmp: Path) -> Path:
    return _dicom(tmp / "rgb.dcm", PhotometricInterpretation="RGB")


def _palette_dicom(tmp: Path) -> Path:
    return _dicom(tmp / "palette.dcm", PhotometricInterpretation="PALETTE COLOR")


def _absurd_dimensions(tmp: Path) -> Path:
    return _dicom(tmp / "huge.dcm", Rows=60000, Columns=60000)  # 3.6 gigapixels claimed by a 1 kB file


def _zero_dimensions(tmp: Path) -> Path:
    return _dicom(tmp / "zero.dcm", Rows=0)


# -- slides, photos ---------------------------------------------------------------------------------------------
def _slide(tmp: Path, name: str = "slide.tif", mpp: float | None = 0.5) -> Path:
    return write_pyramid_tiff(tmp / name, _rgb(), mpp=mpp, tile=128)


def _truncated_slide(tmp: Path) -> Callable[[], object]:
    data = _slide(tmp).read_bytes()
    (tmp / "cut.tif").write_bytes(data[: len(data) // 3])
    return lambda: open_slide(tmp / "cut.tif").read_level((0, 0), 0, (256, 256))


def _not_a_slide(tmp: Path) -> Callable[[], object]:
    (tmp / "junk.tif").write_bytes(b"II*\x00garbage" * 10)
    return lambda: open_slide(tmp / "junk.tif")


def _slide_without_mpp(tmp: Path) -> Callable[[], object]:
    path = _slide(tmp, "nompp.tif", mpp=None)
    return lambda: open_slide(path).read_region((0, 0), 32, mpp=0.5)


def _slide_implausible_mpp(tmp: Path) -> Callable[[], object]:
    path = _slide(tmp, "dpi72.tif", mpp=352.8)  # a 72-dpi default resolution tag: ignored, so no usable MPP
    return lambda: open_slide(path).read_region((0, 0), 32, mpp=0.5)


def _huge_region(tmp: Path) -> Callable[[], object]:
    path = _slide(tmp, "whole.tif")
    return lambda: open_slide(path).read_level((0, 0), 0, (20_000, 20_000))  # refused before any allocation


def _png_claiming_gigapixels(tmp: Path) -> Callable[[], object]:
    path = tmp / "bomb.png"
    Image.fromarray(_rgb(4)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 200_000, 200_000)  # IHDR width/height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep the chunk CRC valid
    path.write_bytes(bytes(data))
    return lambda: read_microscopy(path)


# -- annotations, metadata ----------------------------------------------------------------------------------------
def _malformed_xml(tmp: Path) -> Callable[[], object]:
    from mammopath.io.annotations import read_asap_xml

    (tmp / "ann.xml").write_text("<ASAP_Annotations><Annotations><Annotation Name='a'>")
    return lambda: read_asap_xml(tmp / "ann.xml")


def _wrong_xml_root(tmp: Path) -> Callable[[], object]:
    from mammopath.io.annotations import read_asap_xml

    (tmp / "other.xml").write_text("<Annotations><Annotation/></Annotations>")
    return lambda: read_asap_xml(tmp / "other.xml")


def _bad_coordinate_xml(tmp: Path) -> Callable[[], object]:
    from mammopath.io.annotations import read_asap_xml

    (tmp / "coord.xml").write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="0" X="1,5e" Y="2"/></Coordinates></Annotation></Annotations></ASAP_Annotations>'
    )
    return lambda: read_asap_xml(tmp / "coord.xml")


def _metadata_csv_missing_column(tmp: Path) -> Callable[[], object]:
    from mammopath.datasets.cbis_ddsm import _read_csv

    (tmp / "mass_case_description_train_set.csv").write_text("patient_id,abnormality id\nP_1,1\n")
    return lambda: _read_csv(tmp / "mass_case_description_train_set.csv")


MANIFEST_ROW = {
    "sample_id": "a",
    "patient_id": "p1",
    "modality": "mammo",
    "dataset": "d",
    "domain": "h1",
    "split": "train",
    "path": "m/a.dcm",
    "label": "1",
}


def _manifest(tmp: Path, rows: list[dict[str, str]]) -> Callable[[], object]:
    from mammopath.manifest import load_manifest

    root = tmp / "root"
    (root / "m").mkdir(parents=True, exist_ok=True)
    rows = [{**MANIFEST_ROW, **{"sample_id": f"s{i}", "path": f"m/s{i}.dcm"}, **row} for i, row in enumerate(rows)]
    for row in rows:
        target = root / row["path"]
        if not target.is_symlink() and target.parent.is_dir() and not target.exists():
            target.write_bytes(b"x")
    frame = pd.DataFrame(rows)
    path = tmp / "manifest.csv"
    frame.to_csv(path, index=False)
    return lambda: load_manifest(path, root, check_files=True)


def _traversal(tmp: Path) -> Callable[[], object]:
    return _manifest(tmp, [{"path": "m/../../outside.dcm"}])


def _absolute(tmp: Path) -> Callable[[], object]:
    return _manifest(tmp, [{"path": str(tmp / "abs.dcm")}])


def _symlink_out(tmp: Path) -> Callable[[], object]:
    (tmp / "secret.dcm").write_bytes(b"x")
    (tmp / "root" / "m").mkdir(parents=True)
    os.symlink(tmp / "secret.dcm", tmp / "root" / "m" / "link.dcm")
    return _manifest(tmp, [{"path": "m/link.dcm"}])


def _duplicate_ids(tmp: Path) -> Callable[[], object]:
    return _manifest(tmp, [{"sample_id": "x", "path": "m/a.dcm"}, {"sample_id": "x", "path": "m/b.dcm"}])


def _empty_domain(tmp: Path) -> Callable[[], object]:
    return _manifest(tmp, [{"domain": ""}])


def _missing_holdout_domain(tmp: Path) -> Callable[[], object]:
    from mammopath.manifest import load_manifest

    _manifest(tmp, [{}])
    return lambda: load_manifest(tmp / "manifest.csv", tmp / "root", required_domains=["h9"])


#: (case, builder, error class, message pattern). A builder returns a path (read as a mammogram) or a callable.
CASES: list[tuple[str, Callable[[Path], object], type[MammopathError], str]] = [
    ("dicom truncated in pixel data", _truncated_pixels, DicomReadError, r"cut\.dcm.*(truncated|cannot be decoded)"),
    ("dicom truncated in header", _truncated_header, DicomReadError, r"head\.dcm.*(not a readable|no PixelData)"),
    ("not a dicom", _not_dicom, DicomReadError, r"notes\.dcm.*not a DICOM file.*lacks PixelData"),
    ("empty file", _empty, DicomReadError, r"empty\.dcm.*not a"),
    ("dicom without pixel data", _no_pixel_data, DicomReadError, r"nopix\.dcm.*no PixelData"),
    ("unsupported transfer syntax", _unsupported_syntax, MissingDecoderError, r"mpeg2\.dcm.*MPEG2.*not supported"),
    ("rgb photometric", _rgb_dicom, DicomReadError, r"rgb\.dcm.*PhotometricInterpretation RGB is not a greyscale"),
    ("palette photometric", _palette_dicom, DicomReadError, r"palette\.dcm.*PALETTE COLOR is not a greyscale"),
    ("absurd dimensions", _absurd_dimensions, DicomReadError, r"huge\.dcm.*60000x60000x1 pixels.*more than the limit"),
    ("zero dimensions", _zero_dimensions, DicomReadError, r"zero\.dcm.*dimensions 0x20.*empty"),
    ("slide truncated", _truncated_slide, SlideReadError, r"cut\.tif.*cannot read region"),
    ("not a slide", _not_a_slide, SlideReadError, r"junk\.tif.*cannot open as a tiled TIFF"),
    ("slide without mpp", _slide_without_mpp, MissingMPPError, r"nompp\.tif.*no usable microns-per-pixel.*'mpp'"),
    ("slide implausible mpp", _slide_implausible_mpp, MissingMPPError, r"dpi72\.tif.*no usable microns-per-pixel"),
    ("slide region over budget", _huge_region, SlideReadError, r"whole\.tif.*20000x20000 pixels.*at most"),
    ("png claiming gigapixels", _png_claiming_gigapixels, DataFormatError, r"bomb\.png.*too many pixels.*40000000000"),
    ("xml not well-formed", _malformed_xml, AnnotationError, r"ann\.xml.*not well-formed XML"),
    ("xml wrong root", _wrong_xml_root, AnnotationError, r"other\.xml.*root element is <Annotations>"),
    ("xml bad coordinate", _bad_coordinate_xml, AnnotationError, r"coord\.xml.*'1,5e' is not a number"),
    ("metadata csv missing column", _metadata_csv_missing_column, DataFormatError, r"train_set\.csv.*column"),
    ("manifest traversal", _traversal, ManifestError, r"manifest\.csv.*row 1, column 'path'.*'\.\.'"),
    ("manifest absolute path", _absolute, ManifestError, r"manifest\.csv.*row 1, column 'path'.*absolute"),
    ("manifest symlink out of root", _symlink_out, ManifestError, r"row 1.*outside the data root"),
    ("manifest duplicate ids", _duplicate_ids, ManifestError, r"row 2.*duplicate"),
    ("manifest empty domain", _empty_domain, ManifestError, r"row 1, column 'domain'.*empty"),
    ("manifest missing held-out domain", _missing_holdout_domain, ManifestError, r"h9"),
]


@pytest.mark.parametrize(("case", "build", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_our_error_naming_the_file(
    tmp_path: Path, case: str, build: Callable[[Path], object], error: type[MammopathError], pattern: str
) -> None:
    before = Image.MAX_IMAGE_PIXELS
    target = build(tmp_path)
    call = (lambda: read_mammogram(target)) if isinstance(target, Path) else target
    assert callable(call)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=f"(?s){pattern}"):
            call()
    assert Image.MAX_IMAGE_PIXELS == before is not None  # Pillow's global bomb guard is never turned off


def test_dicom_without_preamble_reads_with_force(tmp_path: Path) -> None:
    """A file without the 128-byte preamble and 'DICM' (old archives) loads as the original; garbage does not."""
    full = _dicom(tmp_path / "full.dcm")
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(full.read_bytes()[132:])  # no preamble, no 'DICM' prefix
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(bare)  # pydicom itself refuses it without force
    image, meta = read_mammogram(bare)
    reference, _ = read_mammogram(full)
    np.testing.assert_array_equal(image, reference)
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.1"
    raw = tmp_path / "raw.dcm"  # no File Meta group at all: the transfer syntax comes from the encoding read
    ds = pydicom.dcmread(full)
    with open(raw, "wb") as handle:
        pydicom.filewriter.write_dataset(pydicom.filebase.DicomFileLike(handle), ds)
    np.testing.assert_array_equal(read_mammogram(raw)[0], reference)


def test_corrupt_tile_names_slide_and_handle_stays_usable(tmp_path: Path) -> None:
    """A zeroed JPEG tile raises naming the slide; the same reader then reads other tiles, other slides still read."""
    good = _slide(tmp_path, "good.tif")
    bad = _slide(tmp_path, "bad.tif")
    with tifffile.TiffFile(bad) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]  # tile (row 1, column 1)
    data = bytearray(bad.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    bad.write_bytes(bytes(data))
    reader = open_slide(bad)
    with pytest.raises(SlideReadError, match=r"bad\.tif.*level 0, x=128, y=128"):
        reader.read_level((128, 128), 0, (128, 128))
    expected = open_slide(good).read_level((0, 0), 0, (128, 128))
    np.testing.assert_array_equal(reader.read_level((0, 0), 0, (128, 128)), expected)
    with pytest.raises(SlideReadError, match=r"bad\.tif"):  # the bad tile stays bad (no cached garbage)
        reader.read_level((128, 128), 0, (16, 16))
    assert open_slide(good).read_level((128, 128), 0, (8, 8)).shape == (8, 8, 3)


def test_single_class_domain_auroc_is_undefined_not_a_crash() -> None:
    from mammopath.metrics.domain import per_domain_table, summarize_lodo

    df = pd.DataFrame(
        {
            "domain": ["h1"] * 4 + ["h2"] * 4,
            "modality": "mammo",
            "score": [0.1, 0.9, 0.2, 0.8, 0.3, 0.4, 0.5, 0.6],
            "label": [0, 1, 0, 1, 1, 1, 1, 1],  # h2 has positives only
            "patient_id": [f"p{i}" for i in range(8)],
        }
    )
    table = per_domain_table(df, n_boot=10)
    h2 = table[table["domain"] == "h2"].iloc[0]
    assert np.isnan(h2["auroc"]) and table[table["domain"] == "h1"].iloc[0]["auroc"] == 1.0
    assert len(summarize_lodo(table)) == 1


def _pydicom_test_files() -> list[Path]:
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))


def test_every_pydicom_test_file_loads_or_raises_our_error() -> None:
    """Every DICOM on disk in the installed pydicom: a correct [0, 1] image, or a DicomReadError; nothing else."""
    files = _pydicom_test_files()
    assert len(files) > 50, "pydicom's test files are not installed"
    loaded: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                image, meta = read_mammogram(path)
            except DicomReadError as exc:
                assert str(path) in str(exc) and str(exc) != f"{path}: ", path
                continue
            ds = pydicom.dcmread(path, force=True)
            assert image.dtype == np.float32 and image.shape == (ds.Rows, ds.Columns), path
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0, path
            raw = "WindowCenter" not in ds and "ModalityLUTSequence" not in ds and "VOILUTSequence" not in ds
            if raw and float(ds.get("RescaleSlope", 1) or 1) == 1 and float(ds.get("RescaleIntercept", 0) or 0) == 0:
                # independent path: pydicom's decode scaled by the BitsStored range, inverted for MONOCHROME1
                stored = ds.pixel_array.astype(np.float64)
                bits = int(ds.BitsStored)
                lo, hi = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                expected = np.clip((stored - lo) / (hi - lo), 0, 1)
                if meta["inverted"]:
                    expected = 1 - expected
                np.testing.assert_allclose(image, expected, atol=1e-6, err_msg=str(path))
            loaded.append(path.name)
    assert {"CT_small.dcm", "MR_small.dcm"} <= set(loaded)
