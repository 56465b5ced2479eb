from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from mammopath.errors import DicomReadError, MissingDecoderError
from mammopath.io.dicom import (
    breast_bbox,
    canonical_laterality,
    check_decoder,
    crop_breast,
    read_mammogram,
    read_roi_mask,
)
from mammopath.synth.mammo import new_dataset, write_mask_dicom


def stored_image(bits: int = 16, seed: int = 0, shape: tuple[int, int] = (24, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, dtype=np.float64)
    img[4 : shape[0] - 4, : shape[1] // 2] = rng.uniform(0.2, 0.9, size=(shape[0] - 8, shape[1] // 2))
    return np.round(img * (2**bits - 1)).astype(np.uint16)


def write(path: Path, pixels: np.ndarray, bits: int, photometric: str = "MONOCHROME2", **tags) -> Path:
    ds = new_dataset(path, pixels, bits_stored=bits, photometric=photometric)
    ds.PatientName = "CANARY^SECRET"
    ds.PatientID = "CANARY-ID"
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_twin_loads_equal(tmp_path: Path) -> None:
    pixels = stored_image(14)
    a, meta_a = read_mammogram(write(tmp_path / "m2.dcm", pixels, 14))
    b, meta_b = read_mammogram(write(tmp_path / "m1.dcm", (2**14 - 1 - pixels).astype(np.uint16), 14, "MONOCHROME1"))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert meta_b["inverted"] and not meta_a["inverted"] and "invert" in meta_b["steps"]
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    assert a[0, 0] == 0.0  # background dark, tissue bright


def test_presentation_lut_inverse_twin(tmp_path: Path) -> None:
    pixels = stored_image(12)
    a, _ = read_mammogram(write(tmp_path / "a.dcm", pixels, 12))
    b, meta = read_mammogram(
        write(tmp_path / "b.dcm", (4095 - pixels).astype(np.uint16), 12, PresentationLUTShape="INVERSE")
    )
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert meta["inverted"]


def test_bit_depths_normalise_identically(tmp_path: Path) -> None:
    p12 = stored_image(12)
    a, _ = read_mammogram(write(tmp_path / "12.dcm", p12, 12))
    b, _ = read_mammogram(write(tmp_path / "16.dcm", (p12.astype(np.uint32) * 16 + p12 // 256).astype(np.uint16), 16))
    np.testing.assert_allclose(a, b, atol=2e-4)
    np.testing.assert_allclose(a, p12 / 4095.0, atol=1e-6)


def test_jpeg2000_lossless_equals_uncompressed(tmp_path: Path) -> None:
    pixels = stored_image(14, seed=3, shape=(64, 48))  # J2K needs >= 32 px for its resolutions
    raw = write(tmp_path / "raw.dcm", pixels, 14)
    ds = pydicom.dcmread(raw)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    a, _ = read_mammogram(raw)
    b, meta = read_mammogram(tmp_path / "j2k.dcm")
    assert meta["transfer_syntax"] == JPEG2000Lossless
    np.testing.assert_array_equal(a, b)


def test_window_applied_after_rescale(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000, 2000, 3000, 4000]], dtype=np.uint16)
    path = write(tmp_path / "w.dcm", pixels, 12, WindowCenter=2000, WindowWidth=2000)
    img, meta = read_mammogram(path)
    assert meta["steps"] == ["window"]
    # linear window (PS3.3 C.11.2.1.2): <= c-0.5-(w-1)/2 → min, > c-0.5+(w-1)/2 → max
    assert img[0, 0] == 0.0 and img[0, 1] == pytest.approx(0.0, abs=1e-3) and img[0, 4] == 1.0
    assert img[0, 2] == pytest.approx(0.5, abs=1e-3)
    raw, meta_raw = read_mammogram(path, voi="none")
    assert meta_raw["steps"] == [] and raw[0, 2] == pytest.approx(2000 / 4095, abs=1e-6)


def test_meta_spacing_source_and_no_phi(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.dcm", stored_image(), 16, ImagerPixelSpacing=[0.07, 0.07], ImageLaterality="R", ViewPosition="ML"
    )
    _, meta = read_mammogram(path)
    assert meta["pixel_spacing"] == (0.07, 0.07) and meta["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert meta["laterality"] == "R" and meta["laterality_source"] == "ImageLaterality" and meta["view"] == "MLO"
    assert "CANARY" not in repr(meta)
    _, meta2 = read_mammogram(write(tmp_path / "n.dcm", stored_image(), 16))
    assert meta2["pixel_spacing"] is None and meta2["laterality_source"] == "inferred"


def test_truncated_dicom_names_file(tmp_path: Path) -> None:
    path = write(tmp_path / "full.dcm", stored_image(), 16)
    data = path.read_bytes()
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(data[: len(data) - 300])
    with pytest.raises(DicomReadError, match=r"truncated\.dcm.*truncated|truncated\.dcm"):
        read_mammogram(cut)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom at all")
    with pytest.raises(DicomReadError, match="garbage.dcm"):
        read_mammogram(garbage)
    with pytest.raises(DicomReadError, match="file not found"):
        read_mammogram(tmp_path / "missing.dcm")


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write(tmp_path / "p.dcm", stored_image(), 16)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(DicomReadError, match="nopix.dcm.*no PixelData"):
        read_mammogram(tmp_path / "nopix.dcm")


def test_missing_decoder_names_syntax_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(
        MissingDecoderError, match=r"x\.dcm.*JPEG 2000.*1\.2\.840\.10008\.1\.2\.4\.90.*pylibjpeg-openjpeg"
    ):
        check_decoder("1.2.840.10008.1.2.4.90", "x.dcm")
    check_decoder("1.2.840.10008.1.2.1", "x.dcm")  # uncompressed needs no plugin


def test_laterality_flip_and_crop() -> None:
    img = np.zeros((6, 8), dtype=np.float32)
    img[1:5, 0:3] = 0.7
    mirrored = img[:, ::-1]
    np.testing.assert_array_equal(canonical_laterality(mirrored, "R", "L"), img)
    np.testing.assert_array_equal(canonical_laterality(img, "L", "L"), img)
    assert breast_bbox(img) == (0, 1, 3, 5)
    assert crop_breast(img).shape == (4, 3)


def test_roi_mask(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    back = read_roi_mask(write_mask_dicom(tmp_path / "roi.dcm", mask, patient_id="x"))
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize(
    ("bits", "signed", "photometric", "garbage"),
    [
        (14, False, "MONOCHROME2", True),  # unused high bits set: must be cleared as pydicom does
        (14, False, "MONOCHROME1", False),
        (12, True, "MONOCHROME2", True),  # signed: sign-extended from BitsStored
        (16, False, "MONOCHROME2", False),
        (16, True, "MONOCHROME1", False),
        (8, False, "MONOCHROME2", False),
    ],
)
def test_fast_native_path_equals_pydicom_decode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bits: int, signed: bool, photometric: str, garbage: bool
) -> None:
    # two paths must agree: the copy-free decode + one scaling pass vs pydicom's default decode scaled in float64
    rng = np.random.default_rng(bits)
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = rng.integers(0, 2**bits, size=(33, 27)).astype(dtype)
    if garbage:
        pixels |= np.uint16(0b11 << 14)
    ds = new_dataset(tmp_path / "f.dcm", pixels, bits_stored=bits, photometric=photometric)
    ds.PixelRepresentation = int(signed)
    ds.ImageLaterality = "L"
    ds.save_as(tmp_path / "f.dcm", enforce_file_format=True)
    from mammopath.io.dicom import _native_view

    assert _native_view(pydicom.dcmread(tmp_path / "f.dcm"), ds.file_meta.TransferSyntaxUID) is not None  # fast path
    with caplog.at_level("DEBUG", logger="pydicom"):
        image, meta = read_mammogram(tmp_path / "f.dcm")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # no "cannot return a view" warning
    decoded = pydicom.dcmread(tmp_path / "f.dcm").pixel_array.astype(np.float64)
    lo = -(2 ** (bits - 1)) if signed else 0
    expected = np.clip((decoded - lo) / (2**bits - 1), 0, 1)
    if photometric == "MONOCHROME1":
        expected = 1 - expected
    assert image.dtype == np.float32 and image.flags.writeable and image.flags.c_contiguous
    np.testing.assert_allclose(image, expected, atol=2e-7, rtol=0)
    assert meta["steps"] == (["invert"] if photometric == "MONOCHROME1" else [])
