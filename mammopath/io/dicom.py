"""Mammogram DICOM reader: stored values to a display-consistent float image in [0, 1].

Pipeline (PS3.3 C.7.6.3.1 / C.11, in this order): decode → modality LUT or rescale → VOI LUT or
window (only when present and ``voi="auto"``) → polarity (MONOCHROME1 or Presentation LUT Shape
INVERSE are inverted *after* VOI, never before) → scale to [0, 1] by the output range of the last
applied step (for raw data: the BitsStored range, so a 12-bit image is divided by 4095, not 65535).

Every applied step is recorded in ``meta["steps"]``. ``meta`` carries no patient-identifying value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from mammopath.errors import DicomReadError, MissingDecoderError

log = logging.getLogger(__name__)

#: Compressed transfer syntaxes -> the Python package that decodes them for pydicom.
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
}

#: Default pixel budget of one DICOM: 10x a large full-field digital mammogram (4096 x 5625).
MAX_PIXELS: int = 250_000_000

#: Attributes a dataset read without its File Meta header must have to be accepted as an image.
_REQUIRED_PIXEL_ATTRIBUTES = ("PixelData", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")


def _encoding_syntax(ds: pydicom.Dataset) -> str:
    """The transfer syntax a dataset was read with (for files whose File Meta header lacks one)."""
    implicit, little = getattr(ds, "original_encoding", (False, True))
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


def read_dataset(path: str | Path) -> pydicom.Dataset:
    """Read a DICOM image dataset, accepting a file without its preamble/File Meta header only if it is an image.

    A file without the 128-byte preamble and ``DICM`` prefix (common in old archives) is re-read with pydicom's
    ``force=True`` and kept only when it has every attribute of :data:`_REQUIRED_PIXEL_ATTRIBUTES` (``force``
    alone happily "reads" any bytes, pydicom#150); a missing Transfer Syntax UID is set from the encoding the
    file was read with.

    Raises:
        DicomReadError: not a DICOM file, truncated header, or no Pixel Data (names the file and the reason).
    """
    path = Path(path)
    forced = False
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise DicomReadError(path, "file not found") from exc
    except InvalidDicomError as exc:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            raise DicomReadError(path, f"not a readable DICOM file (InvalidDicomError: {exc})") from exc
        missing = [a for a in _REQUIRED_PIXEL_ATTRIBUTES if a not in ds]
        if missing:
            raise DicomReadError(
                path,
                f"not a DICOM file: no preamble/'DICM' prefix, and read without it the data lacks {', '.join(missing)}",
            ) from exc
        forced = True
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DicomReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise DicomReadError(path, "the DICOM has no PixelData element (not an image, or truncated header)")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = UID(_encoding_syntax(ds))
    if forced:
        log.warning("%s: no DICOM preamble/File Meta header; read with force=True (image attributes present)", path)
    return ds


def check_dimensions(ds: pydicom.Dataset, path: str | Path, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse absurd image dimensions before anything is decoded or allocated.

    Raises:
        DicomReadError: zero or missing Rows/Columns, more than one sample per pixel, or more than ``max_pixels``.
    """
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as exc:
        raise DicomReadError(path, "Rows, Columns, NumberOfFrames or SamplesPerPixel is not an integer") from exc
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise DicomReadError(path, f"image dimensions {rows}x{cols} ({frames} frame(s)) are empty")
    if samples != 1:
        raise DicomReadError(path, f"{samples} samples per pixel: not a greyscale mammogram")
    if rows * cols * frames > max_pixels:
        raise DicomReadError(
            path,
            f"header claims {rows}x{cols}x{frames} pixels ({rows * cols * frames:,}), more than the limit of "
            f"{max_pixels:,}; pass a larger max_pixels if the image is genuine",
        )


_VIEW_ALIASES = {"ML": "MLO", "MLO": "MLO", "CC": "CC", "XCCL": "XCCL", "LM": "LM", "FB": "FB"}


def _syntax_name(uid: str) -> str:
    try:
        return f"{UID(uid).name} ({uid})"
    except Exception:  # pragma: no cover - pydicom knows every standard UID
        return uid


def check_decoder(transfer_syntax: str, path: str | Path = "<dataset>") -> None:
    """Fail early when no installed plugin can decode ``transfer_syntax``.

    Raises:
        MissingDecoderError: naming the syntax and the package to install.
    """
    from pydicom.pixels import get_decoder

    uid = UID(transfer_syntax)
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise MissingDecoderError(path, f"transfer syntax {_syntax_name(uid)} is not supported by pydicom") from exc
    if not decoder.is_available:
        package = DECODER_PACKAGES.get(str(uid), "pylibjpeg with the matching plugin")
        raise MissingDecoderError(
            path, f"no installed decoder for transfer syntax {_syntax_name(uid)}; install '{package}'"
        )


def _output_range(ds: pydicom.Dataset, voi_step: str | None) -> tuple[float, float]:
    """Range of values after the last applied step, used to scale to [0, 1]."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if voi_step == "voi_lut":
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    lo, hi = lo * slope + intercept, hi * slope + intercept
    return (min(lo, hi), max(lo, hi))


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str | None]:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is not None and len(value) == 2:
            try:
                spacing = (float(value[0]), float(value[1]))
            except (TypeError, ValueError):
                continue
            if spacing[0] > 0 and spacing[1] > 0:
                return spacing, tag
    return None, None


def _laterality(ds: pydicom.Dataset) -> tuple[str | None, str | None]:
    for tag in ("ImageLaterality", "Laterality"):
        value = str(ds.get(tag, "") or "").strip().upper()
        if value in ("L", "R"):
            return value, tag
    return None, None


def infer_laterality(image: np.ndarray) -> str:
    """Guess laterality from where the tissue lies, for files without a laterality tag.

    Assumes the common convention (DDSM/CBIS-DDSM, INbreast) that the chest wall of a left breast is
    on the image's left edge. Only used when no tag is present, and recorded as
    ``laterality_source="inferred"`` so that users can audit it.
    """
    half = image.shape[1] // 2
    return "L" if float(image[:, :half].sum()) >= float(image[:, half:].sum()) else "R"


#: Uncompressed transfer syntaxes whose pixel bytes are the little-endian stored values as they are.
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_view(ds: pydicom.Dataset, syntax: str) -> np.ndarray | None:
    """The stored values of a single-frame greyscale native little-endian image, as a view on the file's bytes.

    This is what pydicom's native decoder returns for such data (``np.frombuffer`` of the Pixel Data bytes in the
    dtype of BitsAllocated and PixelRepresentation, reshaped), without its generic per-call setup, which costs
    more than the pixels. None for anything else (compressed, big endian, multi-frame, colour, 1-bit, odd
    lengths...), which then goes through pydicom itself.
    """
    if syntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    allocated = ds.get("BitsAllocated")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    frames = ds.get("NumberOfFrames", 1)
    if allocated not in (8, 16) or not rows or not cols or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if frames not in (None, "", 1, "1"):
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    data = ds.PixelData
    expected = int(rows) * int(cols) * dtype.itemsize
    if not isinstance(data, bytes | bytearray) or len(data) not in (expected, expected + 1):  # +1: even padding
        return None
    return np.frombuffer(data, dtype=dtype, count=int(rows) * int(cols)).reshape(int(rows), int(cols))


def _stored_values(ds: pydicom.Dataset, syntax: str) -> tuple[np.ndarray, bool]:
    """The stored pixel values exactly as ``ds.pixel_array`` decodes them, without its copies of native data.

    For uncompressed little-endian data pydicom's default decode copies the pixel bytes into a writeable array and,
    when BitsStored < BitsAllocated, shifts every value left and right to clear the unused high bits (PS3.5 8.1.1).
    Here the decode is a read-only view on the file's bytes (:func:`_native_view`, or pydicom's own
    ``view_only`` decode; every later step writes a new array) and the unused bits are cleared only when some value
    has one set (one max pass; a mask for unsigned data, pydicom's own shifts for signed data), which gives the
    same values. Compressed data goes through pydicom's default decode.

    Returns:
        ``(values, in_range)``: ``in_range`` says the values are known to lie within the BitsStored range.
    """
    uid = UID(syntax)
    allocated = int(ds.get("BitsAllocated", 16) or 16)
    bits = int(ds.get("BitsStored", allocated) or allocated)
    if uid.is_compressed or not uid.is_little_endian:
        return ds.pixel_array, True  # pydicom corrects unused bits itself (correct_unused_bits defaults to True)
    arr = _native_view(ds, syntax)
    if arr is None:
        ds.pixel_array_options(view_only=True, correct_unused_bits=False)
        arr = ds.pixel_array
    if arr.dtype.kind not in "iu" or bits >= allocated or arr.size == 0:
        return arr, True
    shift = allocated - bits
    if arr.dtype.kind == "u":
        top = (1 << bits) - 1
        if int(arr.max()) > top:
            arr = np.bitwise_and(arr, arr.dtype.type(top))
        return arr, True
    arr = arr.copy()
    np.left_shift(arr, shift, out=arr)
    np.right_shift(arr, shift, out=arr)
    return arr, True


def _to_unit_range(arr: np.ndarray, lo: float, hi: float, *, in_range: bool = False) -> np.ndarray:
    """``clip((arr - lo) / (hi - lo), 0, 1)`` in the float type of ``arr`` (float32 for integers), in few passes.

    Integer input (stored values without a LUT: the common case) is converted, shifted and scaled in one pass
    straight into a new float32 array; the clip pass is skipped when it is a no-op: every value within ``[lo, hi]``
    (``in_range``, or checked) and ``hi`` itself mapping to at most 1 (rounding is monotonic, so nothing else can
    exceed 1). The values are those of ``(float32(arr) - float32(lo)) * float32(1 / (hi - lo))`` then clipped, bit
    for bit.
    """
    if arr.dtype.kind not in "iu":  # float input (after a LUT): the arithmetic in its own precision
        image = arr - np.asarray(lo, dtype=arr.dtype)
        image *= np.asarray(1.0 / max(hi - lo, 1e-12), dtype=arr.dtype)
        return np.clip(image, 0.0, 1.0, out=image)
    scale = np.float32(1.0 / max(hi - lo, 1e-12))
    image = np.empty(arr.shape, dtype=np.float32)
    if lo == 0.0:  # x - 0 is exact: one multiplication
        np.multiply(arr, scale, out=image, dtype=np.float32)
    else:
        np.subtract(arr, np.float32(lo), out=image, dtype=np.float32)
        image *= scale
    if not in_range and arr.size:
        in_range = lo <= int(arr.min()) and int(arr.max()) <= hi
    top = (np.float32(hi) - np.float32(lo)) * scale
    if not in_range or top > 1.0:
        np.clip(image, 0.0, 1.0, out=image)
    return image


def read_mammogram(
    path: str | Path, *, voi: str = "auto", max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a mammogram DICOM as float32 in [0, 1] with tissue bright.

    Args:
        path: the DICOM file.
        voi: ``"auto"`` applies a VOI LUT or the first window when present; ``"none"`` skips VOI.
        max_pixels: the most pixels (Rows x Columns x frames) a file may claim; checked before decoding.

    Returns:
        ``(image, meta)``: a (H, W) float32 array and a dict with ``laterality``,
        ``laterality_source``, ``view``, ``pixel_spacing`` (row, col mm), ``pixel_spacing_source``
        (``PixelSpacing``/``ImagerPixelSpacing``/None), ``photometric``, ``transfer_syntax``,
        ``bits_stored``, ``inverted``, ``steps``.

    Raises:
        DicomReadError: unreadable, truncated or pixel-less file, colour or multi-frame data, absurd dimensions
            (names the file and the reason).
        MissingDecoderError: the transfer syntax needs a plugin that is not installed.
    """
    path = Path(path)
    if voi not in ("auto", "none"):
        raise ValueError(f"voi must be 'auto' or 'none', got {voi!r}")
    ds = read_dataset(path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(path, f"PhotometricInterpretation {photometric} is not a greyscale mammogram")
    check_dimensions(ds, path, max_pixels)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    check_decoder(syntax, path)
    try:
        stored, in_range = _stored_values(ds, syntax)
    except (ValueError, RuntimeError, EOFError, OSError, KeyError, AttributeError, TypeError) as exc:
        raise DicomReadError(
            path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc}); the file may be truncated"
        ) from exc
    if stored.ndim != 2:
        raise DicomReadError(path, f"expected one 2-D greyscale frame, got pixel array of shape {stored.shape}")

    steps: list[str] = []
    identity = float(ds.get("RescaleSlope", 1.0) or 1.0) == 1.0 and float(ds.get("RescaleIntercept", 0.0) or 0.0) == 0.0
    arr: np.ndarray
    if ds.get("ModalityLUTSequence"):
        arr = apply_modality_lut(stored, ds).astype(np.float64)
        steps.append("modality_lut")
    elif not identity:
        arr = apply_modality_lut(stored, ds).astype(np.float64)
        steps.append("rescale")
    else:  # the common case: no modality transform; integers stay integers until the one scaling pass below
        arr = stored

    voi_step: str | None = None
    if voi == "auto":
        if ds.get("VOILUTSequence"):
            voi_step = "voi_lut"
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            voi_step = "window"
        if voi_step is not None:
            source = arr.astype(np.float32) if arr.dtype.kind in "iu" else arr  # float32 is exact for <= 24 bits
            arr = apply_voi_lut(source, ds, index=0).astype(np.float64)
            steps.append(voi_step)
    lo, hi = _output_range(ds, voi_step)
    image = _to_unit_range(arr, lo, hi, in_range=in_range and arr is stored)

    inverse_shape = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    inverted = (photometric == "MONOCHROME1") != inverse_shape
    if inverted:
        np.subtract(1.0, image, out=image)
        steps.append("invert")

    laterality, laterality_source = _laterality(ds)
    if laterality is None:
        laterality, laterality_source = infer_laterality(image), "inferred"
    view = _VIEW_ALIASES.get(str(ds.get("ViewPosition", "") or "").strip().upper())
    spacing, spacing_source = _pixel_spacing(ds)
    meta: dict[str, Any] = {
        "laterality": laterality,
        "laterality_source": laterality_source,
        "view": view,
        "pixel_spacing": spacing,
        "pixel_spacing_source": spacing_source,
        "photometric": photometric,
        "transfer_syntax": syntax,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "inverted": inverted,
        "steps": steps,
        "shape": tuple(int(s) for s in image.shape),
    }
    return image.astype(np.float32, copy=False), meta


def canonical_laterality(image: np.ndarray, laterality: str | None, side: str = "L") -> np.ndarray:
    """Mirror an image horizontally so every breast faces the same way.

    Args:
        image: (H, W) or (H, W, C).
        laterality: the image's breast side, ``"L"`` or ``"R"``.
        side: canonical side; images of the other laterality are flipped left-right.
    """
    if laterality in ("L", "R") and laterality != side:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def breast_bbox(image: np.ndarray, threshold: float = 0.05, margin: int = 0) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of pixels above ``threshold`` (the breast, tissue bright).

    Returns the whole image when nothing is above the threshold.
    """
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    h, w = image.shape[:2]
    if rows.size == 0 or cols.size == 0:
        return 0, 0, w, h
    y0, y1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    x0, x1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    return x0, y0, x1, y1


def crop_breast(image: np.ndarray, threshold: float = 0.05, margin: int = 0) -> np.ndarray:
    """Crop a mammogram to its breast region (see :func:`breast_bbox`)."""
    x0, y0, x1, y1 = breast_bbox(image, threshold, margin)
    return image[y0:y1, x0:x1]


def read_roi_mask(path: str | Path) -> np.ndarray:
    """Read a binary lesion-mask DICOM (CBIS-DDSM ROI style, 0/255) as a bool array.

    Raises:
        DicomReadError: unreadable file or not a single 2-D frame.
    """
    path = Path(path)
    try:
        ds = read_dataset(path)
        check_dimensions(ds, path)
        check_decoder(str(ds.file_meta.TransferSyntaxUID), path)
        arr = ds.pixel_array
    except DicomReadError:
        raise
    except FileNotFoundError as exc:
        raise DicomReadError(path, "mask file not found") from exc
    except Exception as exc:
        raise DicomReadError(path, f"cannot read ROI mask ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise DicomReadError(path, f"ROI mask must be one 2-D frame, got shape {arr.shape}")
    return np.asarray(arr) > 0
