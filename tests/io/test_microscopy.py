"""Microscopy photo reader: conversions to uint8 RGB, Pillow fallback, and the pre-decode size guard."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mammopath.errors import DataFormatError
from mammopath.io.microscopy import read_microscopy


def _rgb(h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding fail loudly, so a guard that fires after decoding is caught."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", boom)
    monkeypatch.setattr(Image.Image, "load", boom)
    monkeypatch.setattr(Image.Image, "convert", boom)


def _claim_size(path: Path, width: int, height: int) -> None:
    """Rewrite the ImageWidth/ImageLength tags in place; the file keeps its tiny pixel data."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        offsets = {name: (tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")}
    raw = bytearray(path.read_bytes())
    for name, value in (("ImageWidth", width), ("ImageLength", height)):
        off, dtype = offsets[name]
        assert int(dtype) == 4, "expected a LONG tag"
        raw[off : off + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(raw))


def test_rgb_tiff_read_exactly(tmp_path: Path) -> None:
    img = _rgb()
    tifffile.imwrite(tmp_path / "iv001.tif", img, photometric="rgb")
    out = read_microscopy(tmp_path / "iv001.tif")
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, img)


def test_compressed_and_planar_tiffs_match_contiguous(tmp_path: Path) -> None:
    img = _rgb(seed=1)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "zlib.tif", img, photometric="rgb", compression="zlib")
    tifffile.imwrite(tmp_path / "bigendian.tif", img, photometric="rgb", byteorder=">")
    for name in ("planar.tif", "zlib.tif", "bigendian.tif"):
        np.testing.assert_array_equal(read_microscopy(tmp_path / name), img, err_msg=name)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    tifffile.imwrite(tmp_path / "g.tif", gray, photometric="minisblack")
    out = read_microscopy(tmp_path / "g.tif")
    assert out.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_miniswhite_is_inverted(tmp_path: Path) -> None:
    stored = np.array([[0, 55], [200, 255]], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "w.tif", stored, photometric="miniswhite")
    np.testing.assert_array_equal(read_microscopy(tmp_path / "w.tif")[..., 1], 255 - stored)


def test_16bit_scaled_by_full_range(tmp_path: Path) -> None:
    # round(v * 255 / 65535): 257*k -> k exactly; 32768 -> 127.5019.. -> 128; 128 -> 0.498 -> 0; 129 -> 0.502 -> 1
    values = np.array([[0, 257, 257 * 100, 65535], [32768, 128, 129, 65534]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", values, photometric="minisblack")
    out = read_microscopy(tmp_path / "g16.tif")
    expected = np.array([[0, 1, 100, 255], [128, 0, 1, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def test_16bit_rgb_tiff(tmp_path: Path) -> None:
    img = _rgb(seed=2)
    tifffile.imwrite(tmp_path / "rgb16.tif", img.astype(np.uint16) * 257, photometric="rgb")
    np.testing.assert_array_equal(read_microscopy(tmp_path / "rgb16.tif"), img)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    img = _rgb(seed=3)
    alpha = np.zeros((*img.shape[:2], 1), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", np.concatenate([img, alpha], axis=2), photometric="rgb", extrasamples=[2])
    np.testing.assert_array_equal(read_microscopy(tmp_path / "a.tif"), img)


def test_pillow_fallback_for_png_named_tif(tmp_path: Path) -> None:
    img = _rgb(seed=4)
    Image.fromarray(img).save(tmp_path / "b001.tif", format="PNG")  # misnamed file: not a TIFF at all
    np.testing.assert_array_equal(read_microscopy(tmp_path / "b001.tif"), img)
    Image.fromarray(img[..., 0]).convert("P").save(tmp_path / "pal.png")
    out = read_microscopy(tmp_path / "pal.png")
    np.testing.assert_array_equal(out, np.repeat(img[..., :1], 3, axis=2))


def test_palette_tiff_goes_through_pillow(tmp_path: Path) -> None:
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 0], cmap[:, 1], cmap[:, 2] = [65535, 0, 0], [0, 257 * 100, 0], [0, 0, 65535]
    tifffile.imwrite(tmp_path / "p.tif", np.array([[0, 1], [2, 1]], np.uint8), photometric="palette", colormap=cmap)
    out = read_microscopy(tmp_path / "p.tif")
    assert out.tolist() == [[[255, 0, 0], [0, 100, 0]], [[0, 0, 255], [0, 100, 0]]]


def test_pillow_and_tifffile_paths_agree_on_16bit(tmp_path: Path) -> None:
    values = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    tifffile.imwrite(tmp_path / "g16.tif", values, photometric="minisblack")
    np.testing.assert_array_equal(read_microscopy(tmp_path / "g16.png"), read_microscopy(tmp_path / "g16.tif"))


def test_size_guard_fires_before_decoding_tiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tifffile.imwrite(tmp_path / "n001.tif", _rgb(16, 32), photometric="rgb")
    _forbid_decoding(monkeypatch)
    with pytest.raises(DataFormatError, match=r"n001\.tif.*32x16 pixels \(512\).*limit of 100"):
        read_microscopy(tmp_path / "n001.tif", max_pixels=100)


def test_tiny_file_claiming_gigapixels_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, _rgb(4, 4), photometric="rgb")
    _claim_size(path, 200_000, 200_000)
    assert path.stat().st_size < 1000
    _forbid_decoding(monkeypatch)
    with pytest.raises(DataFormatError, match=r"bomb\.tif.*200000x200000 pixels \(40,000,000,000\)"):
        read_microscopy(path)


def test_size_guard_in_pillow_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_rgb(10, 10)).save(tmp_path / "photo.png")
    _forbid_decoding(monkeypatch)
    with pytest.raises(DataFormatError, match=r"photo\.png.*10x10 pixels"):
        read_microscopy(tmp_path / "photo.png", max_pixels=99)


def test_image_at_the_limit_is_read(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ok.tif", _rgb(10, 10), photometric="rgb")
    assert read_microscopy(tmp_path / "ok.tif", max_pixels=100).shape == (10, 10, 3)


def test_pillow_global_limit_untouched(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    Image.fromarray(_rgb()).save(tmp_path / "x.png")
    read_microscopy(tmp_path / "x.png")
    assert Image.MAX_IMAGE_PIXELS == before is not None


def test_truncated_tiff_raises_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "is007.tif"
    tifffile.imwrite(path, _rgb(64, 64), photometric="rgb")
    path.write_bytes(path.read_bytes()[:4000])  # header intact, pixel strip cut short
    with pytest.raises(DataFormatError, match=r"is007\.tif.*(cannot decode|not a readable)"):
        read_microscopy(path)


def test_garbage_and_missing_files_raise(tmp_path: Path) -> None:
    (tmp_path / "junk.tif").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataFormatError, match=r"junk\.tif.*not a readable image"):
        read_microscopy(tmp_path / "junk.tif")
    with pytest.raises(DataFormatError, match=r"absent\.tif.*cannot open"):
        read_microscopy(tmp_path / "absent.tif")


def test_unsupported_pixel_type_raises(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((4, 4), np.float32), photometric="minisblack")
    with pytest.raises(DataFormatError, match=r"f\.tif.*unsupported pixel type float32"):
        read_microscopy(tmp_path / "f.tif")
