"""Per-domain acquisition styles of the synthetic multi-hospital benchmark (DESIGN.md §5).

A style is the *domain shift*: it changes how an image looks, never what it shows. The shortcut
(``marker_rate`` = (P(marker | label 0), P(marker | label 1))) is the spurious cue: the burned-in marker
of a mammogram, ink dots on a slide patch. Its agreement with the label differs between the source
domains (0.9 and 0.75 in the hospitals, 0.9 and 0.8 in the centres) and is reversed in the held-out ones
(0.2), while the causal appearance agrees with the label at a fixed rate everywhere (label noise): see
:mod:`mammopath.synth.cohort`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MammoStyle:
    """How one hospital's mammography system renders the same breast."""

    name: str
    bits_stored: int = 16
    photometric: str = "MONOCHROME2"
    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    noise: float = 0.01
    blur: float = 0.0
    spacing_tag: str = "ImagerPixelSpacing"
    spacing_mm: float = 0.1
    compression: str = "none"  # "none" | "jpeg2000" (lossless)
    marker_rate: tuple[float, float] = (0.1, 0.9)  # P(marker | benign), P(marker | malignant)


@dataclass(frozen=True)
class PathoStyle:
    """How one centre's staining, scanner and compression render the same tissue."""

    name: str
    h_vector: tuple[float, float, float] = (0.65, 0.70, 0.29)
    e_vector: tuple[float, float, float] = (0.07, 0.99, 0.11)
    h_scale: float = 1.0
    e_scale: float = 1.0
    blur: float = 0.0
    jpeg_quality: int = 90
    mpp: float = 0.5
    compression: str = "jpeg"  # "jpeg" | "jpeg2000"
    marker_rate: tuple[float, float] = (0.1, 0.9)  # P(ink | label 0), P(ink | label 1), per patch


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the default synthetic benchmark (small enough for `make demo` on 2 CPU cores)."""

    mammo_patients_per_domain: int = 150  # training + validation patients per hospital (75/25)
    mammo_test_patients: int = 150  # test patients per hospital: a source-test AUROC to about ±0.05
    mammo_shape: tuple[int, int] = (160, 128)
    mammo_label_noise: float = 0.3  # P(the mass looks malignant != the label)
    slides_per_domain: int = 16  # training + validation slides per centre
    test_slides_per_domain: int = 20
    patho_label_noise: float = 0.25  # P(the patch looks tumour != the label)
    oracle: bool = True  # also write every image without the marker
    slide_size: int = 1024
    tile: int = 256
    patch_size: int = 64
    patch_mpp: float = 1.0
    paired_patients: int = 160  # 32 test patients (60/20/20 per class): patient-level R@1 in steps of 1/32
    paired_patches: int = 6  # patches per paired slide (lesion patches first, as in the multi-hospital cohort)
    mammo_styles: tuple[MammoStyle, ...] = field(
        default_factory=lambda: (
            MammoStyle("hospital_a", bits_stored=16, gamma=1.0, noise=0.01, spacing_tag="ImagerPixelSpacing"),
            MammoStyle(
                "hospital_b",
                marker_rate=(0.25, 0.75),
                bits_stored=12,
                photometric="MONOCHROME1",
                gamma=0.7,
                contrast=0.9,
                noise=0.02,
                spacing_tag="PixelSpacing",
                spacing_mm=0.07,
            ),
            MammoStyle(
                "hospital_c",
                bits_stored=14,
                gamma=1.5,
                contrast=1.1,
                offset=0.05,
                noise=0.03,
                blur=0.8,
                compression="jpeg2000",
                marker_rate=(0.8, 0.2),
            ),
        )
    )
    patho_styles: tuple[PathoStyle, ...] = field(
        default_factory=lambda: (
            PathoStyle("centre_1", jpeg_quality=92, mpp=0.5),
            PathoStyle(
                "centre_2",
                h_vector=(0.55, 0.75, 0.36),
                e_vector=(0.15, 0.95, 0.25),
                h_scale=1.2,
                e_scale=0.8,
                blur=0.6,
                jpeg_quality=75,
                mpp=0.46,
                marker_rate=(0.2, 0.8),
            ),
            PathoStyle(
                "centre_3",
                h_vector=(0.72, 0.62, 0.32),
                e_vector=(0.05, 0.92, 0.38),
                h_scale=0.85,
                e_scale=1.25,
                blur=1.6,
                jpeg_quality=60,
                mpp=0.5,
                compression="jpeg2000",
                marker_rate=(0.8, 0.2),
            ),
        )
    )
    holdout: tuple[str, ...] = ("hospital_c", "centre_3")
