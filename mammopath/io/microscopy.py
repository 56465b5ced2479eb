"""Microscopy photo reader (BACH ``Photos/<class>/*.tif``): any TIFF/PNG/JPEG photo to ``(H, W, 3)`` uint8 RGB.

tifffile reads the file first; files it cannot handle (not a TIFF, e.g. a JPEG named ``.tif``, a
palette or CMYK TIFF, an unsupported codec) go to Pillow. Both paths check the pixel count the
header claims against ``max_pixels`` *before* anything is decoded, so a tiny file that claims
gigapixels is refused without allocating (pitfalls §6.4, item 47). Pillow's process-wide
``Image.MAX_IMAGE_PIXELS`` is never changed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from mammopath.errors import DataFormatError

log = logging.getLogger(__name__)

#: Default pixel budget: 16x a BACH photo (2048 x 1536).
MAX_PIXELS: int = 50_000_000

_TIFFFILE_PHOTOMETRIC = {
    tifffile.PHOTOMETRIC.MINISBLACK,
    tifffile.PHOTOMETRIC.MINISWHITE,
    tifffile.PHOTOMETRIC.RGB,
    tifffile.PHOTOMETRIC.YCBCR,  # tifffile returns RGB for JPEG-compressed YCbCr
}


class _UseFallback(Exception):
    """tifffile cannot read this file; the message says why (reported if Pillow fails too)."""


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise DataFormatError(path, f"header claims an empty image ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise DataFormatError(
            path,
            f"header claims {width}x{height} pixels ({width * height:,}), more than the limit of {max_pixels:,} "
            "(decompression-bomb guard); pass a larger max_pixels if the image is genuine",
        )


def _read_tifffile(path: Path, max_pixels: int) -> np.ndarray:
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError as e:
        raise _UseFallback(f"tifffile: {e}") from None
    except OSError as e:
        raise DataFormatError(path, f"cannot open the file ({e.strerror or e})") from None
    with tif:
        if not tif.pages:
            raise _UseFallback("tifffile: no image in the file")
        page = tif.pages[0]
        if not isinstance(page, tifffile.TiffPage):
            raise _UseFallback("tifffile: first page is not a full TIFF page")
        _check_size(path, int(page.imagewidth), int(page.imagelength), max_pixels)
        if page.photometric not in _TIFFFILE_PHOTOMETRIC:
            kind = getattr(page.photometric, "name", page.photometric)
            raise _UseFallback(f"tifffile: photometric {kind} left to Pillow")
        if page.axes not in ("YX", "YXS", "SYX"):
            raise _UseFallback(f"tifffile: axes {page.axes!r} are not a 2-D image")
        try:
            data = page.asarray()
        except Exception as e:  # codec errors are RuntimeError/ValueError subclasses from many packages
            raise _UseFallback(f"tifffile could not decode ({type(e).__name__}: {e})") from None
    if page.axes == "SYX":  # planar configuration "separate"
        data = np.moveaxis(data, 0, -1)
    if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        data = ~data if data.dtype == bool else np.iinfo(data.dtype).max - data
    return data


def _read_pillow(path: Path, max_pixels: int, tiff_problem: str) -> np.ndarray:
    with warnings.catch_warnings():
        # our own budget decides; Pillow's warning threshold is global and not ours to change
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise DataFormatError(path, f"header claims too many pixels ({e})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataFormatError(path, f"not a readable image ({tiff_problem}; Pillow: {e})") from None
        with im:
            _check_size(path, *im.size, max_pixels)
            try:
                im.load()
                if im.mode == "I":  # 16-bit PNG/TIFF greyscale on some Pillow versions
                    data = np.asarray(im)
                    if data.min() < 0 or data.max() > 65535:
                        raise ValueError("32-bit integer pixels outside the 16-bit range")
                    return data.astype(np.uint16)
                if im.mode not in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I;16N"):
                    return np.asarray(im.convert("RGB"))  # palette, CMYK, YCbCr, LAB...
                return np.asarray(im)
            except (OSError, ValueError, SyntaxError) as e:
                raise DataFormatError(path, f"cannot decode the image ({tiff_problem}; Pillow: {e})") from None


def _to_rgb8(data: np.ndarray, path: Path) -> np.ndarray:
    """Greyscale (+alpha) to 3 channels, RGBA to RGB (alpha dropped), 16-bit to 8-bit by the full range."""
    if not data.dtype.isnative:  # big-endian TIFF/PNG data
        data = data.astype(data.dtype.newbyteorder("="))
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] == 0:
        raise DataFormatError(path, f"pixel array of shape {data.shape} is not a 2-D image")
    rgb = np.repeat(data[..., :1], 3, axis=2) if data.shape[2] < 3 else data[..., :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    if rgb.dtype == bool:
        return rgb.astype(np.uint8) * np.uint8(255)
    if rgb.dtype == np.uint16:
        # round(v * 255 / 65535), exact in integers: 257 * k -> k, 65535 -> 255
        return ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise DataFormatError(path, f"unsupported pixel type {rgb.dtype}; expected 8- or 16-bit unsigned integers")


def read_microscopy(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a microscopy photo as an ``(H, W, 3)`` uint8 RGB array.

    Greyscale is repeated to three channels, an alpha channel is dropped (as Pillow's ``convert``
    does), MINISWHITE TIFFs are inverted, and 16-bit data are scaled by the full 16-bit range
    (``round(v * 255 / 65535)``) so brightness stays comparable across images.

    Args:
        path: the image file (BACH ``.tif``; any TIFF, PNG or JPEG works).
        max_pixels: the most pixels (width x height) the header may claim; checked before decoding.

    Raises:
        DataFormatError: the header claims more than ``max_pixels`` pixels, or the file is missing,
            unreadable, truncated or of an unsupported pixel type; the message names the file.
    """
    path = Path(path)
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    try:
        data = _read_tifffile(path, max_pixels)
    except _UseFallback as e:
        log.debug("%s: %s; reading with Pillow", path, e)
        data = _read_pillow(path, max_pixels, str(e))
    return _to_rgb8(data, path)
