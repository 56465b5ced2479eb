"""Synthetic mammograms with a designed causal signal, written as real DICOM files.

Causal signal: malignant masses are irregular and spiculated, benign ones round and smooth; the
BI-RADS assessment follows the same shape cue with noise. Domain style (:class:`MammoStyle`) changes
intensity curve, noise, blur, bit depth, photometric interpretation, spacing tag and compression.
The shortcut is a burned-in bright marker in the corner away from the chest wall.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from scipy import ndimage

from mammopath.synth.styles import MammoStyle

#: Digital Mammography X-Ray Image Storage - For Presentation.
MAMMO_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.2")


@dataclass
class MammoCase:
    """Ground truth of one synthetic mammogram (before the domain style is applied)."""

    image: np.ndarray  # (H, W) float in [0, 1], tissue bright, breast against the left edge
    mask: np.ndarray  # (H, W) bool lesion mask
    malignant: bool
    birads: int
    marker: bool


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-8)


def lesion_mask(
    rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float], radius: float, malignant: bool
) -> np.ndarray:
    """A round smooth mass (benign) or an irregular spiculated one (malignant)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = yy - center[0], xx - center[1]
    theta = np.arctan2(dy, dx)
    dist = np.hypot(dy, dx)
    if malignant:
        r = np.full_like(theta, radius)
        for k in (3, 5, 7):
            r += radius * rng.uniform(0.08, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        mask = dist <= r
        for angle in rng.uniform(0, 2 * np.pi, size=rng.integers(6, 10)):
            length = radius * rng.uniform(1.6, 2.4)
            along = dx * np.cos(angle) + dy * np.sin(angle)
            across = np.abs(-dx * np.sin(angle) + dy * np.cos(angle))
            mask |= (along > 0) & (along < length) & (across < 1.5 + 1.0 * (1 - along / length))
    else:
        ratio = rng.uniform(0.8, 1.0)
        angle = rng.uniform(0, np.pi)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        mask = (u / radius) ** 2 + (v / (radius * ratio)) ** 2 <= 1.0
    return mask


def render_mammogram(
    rng: np.random.Generator,
    shape: tuple[int, int],
    malignant: bool,
    marker: bool,
    *,
    lesion_size: float | None = None,
    density: float | None = None,
) -> MammoCase:
    """Render one breast with one mass, chest wall on the left edge.

    Args:
        lesion_size: a patient's latent lesion size in [0, 1] (radius 7-16% of the short side); None
            draws the radius at random (10-14%).
        density: a patient's latent tissue density in [0, 1] (background 0.20-0.50); None draws it (0.25-0.45).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    breast_w = w * rng.uniform(0.65, 0.8)
    breast = (xx / breast_w) ** 2 + ((yy - h / 2) / (h * 0.48)) ** 2 <= 1.0
    level = rng.uniform(0.25, 0.45) if density is None else 0.2 + 0.3 * density
    tissue = level + 0.08 * _smooth_noise(rng, shape, 6) + 0.05 * _smooth_noise(rng, shape, 2)
    image = np.where(breast, np.clip(tissue, 0.05, 0.9), 0.0)
    radius = (rng.uniform(0.1, 0.14) if lesion_size is None else 0.07 + 0.09 * lesion_size) * min(h, w)
    ys, xs = np.nonzero(ndimage.binary_erosion(breast, iterations=int(radius * 1.5) + 2))
    pick = rng.integers(len(ys))
    mask = lesion_mask(rng, shape, (float(ys[pick]), float(xs[pick])), radius, malignant) & breast
    soft = ndimage.gaussian_filter(mask.astype(float), 0.8 if malignant else 1.5)
    image = np.clip(image + 0.32 * soft, 0.0, 1.0)
    if marker:  # burned-in marker in the corner away from the chest wall
        image[marker_region((h, w))] = 1.0
    if malignant:
        birads = int(rng.choice([4, 5, 3], p=[0.5, 0.4, 0.1]))
    else:
        birads = int(rng.choice([2, 3, 4], p=[0.45, 0.45, 0.1]))
    return MammoCase(image=image, mask=mask, malignant=malignant, birads=birads, marker=marker)


def marker_region(shape: tuple[int, int]) -> np.ndarray:
    """Where the burned-in marker goes: a square (1/10 of the height) in the top corner away from the chest wall.

    Large enough to survive the 64-px demo input (about 6 px there), as a lead marker letter would.
    """
    h, w = shape
    s = max(4, h // 10)
    region = np.zeros(shape, dtype=bool)
    region[2 : 2 + s, w - 2 - s : w - 2] = True
    return region


def marker_value(style: MammoStyle) -> int:
    """The stored value of a saturated burned-in marker in this hospital's format (no noise)."""
    maxval = 2**style.bits_stored - 1
    shown = round(float(np.clip(style.contrast + style.offset, 0.0, 1.0) ** style.gamma) * maxval)
    return maxval - shown if style.photometric == "MONOCHROME1" else shown


def apply_style(image: np.ndarray, style: MammoStyle, rng: np.random.Generator) -> np.ndarray:
    """Display-domain image → this hospital's *stored* values (before photometric inversion)."""
    out = image.copy()
    if style.blur > 0:
        out = ndimage.gaussian_filter(out, style.blur)
    out = np.clip(out * style.contrast + style.offset, 0.0, 1.0) ** style.gamma
    out = np.clip(out + rng.normal(0.0, style.noise, out.shape), 0.0, 1.0)
    maxval = 2**style.bits_stored - 1
    stored = np.round(out * maxval).astype(np.uint16)
    if style.photometric == "MONOCHROME1":
        stored = (maxval - stored).astype(np.uint16)
    return stored


def new_dataset(path: Path, pixels: np.ndarray, *, bits_stored: int, photometric: str = "MONOCHROME2") -> FileDataset:
    """A minimal, valid Digital Mammography DICOM dataset holding ``pixels`` (uint8 or uint16)."""
    # UIDs derived from the file's last path components: the same benchmark twice is byte-identical
    key = "/".join(Path(path).parts[-3:])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MAMMO_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sop", key])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MAMMO_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", key])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", key])
    ds.Modality = "MG"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    allocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()
    return ds


def write_mammogram_dicom(
    path: str | Path,
    stored: np.ndarray,
    style: MammoStyle,
    *,
    patient_id: str,
    laterality: str,
    view: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Write stored values as a mammogram DICOM in this hospital's format (bit depth, PI, spacing, codec)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = new_dataset(path, stored, bits_stored=style.bits_stored, photometric=style.photometric)
    if study_uid:
        ds.StudyInstanceUID = UID(study_uid)
    if series_uid:
        ds.SeriesInstanceUID = UID(series_uid)
    ds.PatientID = patient_id
    ds.PatientName = "SYNTHETIC^" + patient_id
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.PresentationIntentType = "FOR PRESENTATION"
    setattr(ds, style.spacing_tag, [style.spacing_mm, style.spacing_mm])
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if style.compression == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)
    return path


def write_mask_dicom(path: str | Path, mask: np.ndarray, *, patient_id: str) -> Path:
    """Write a binary lesion mask as an 8-bit 0/255 DICOM, like CBIS-DDSM ROI masks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = new_dataset(path, (mask.astype(np.uint8) * 255), bits_stored=8)
    ds.PatientID = patient_id
    ds.save_as(path, enforce_file_format=True)
    return path
