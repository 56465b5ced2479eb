"""Generator v2: the evidence suite's scenarios, one per mechanism, with a causal signal a small model learns.

Why a second generator (docs/evidence.md): in v1 the marker-free oracle learned nothing causal in mammography
(label noise 0.3, a lesion of 1-4 tokens after an anisotropic resize), the held-out shift reversed the shortcut
*and* changed the style on the same domain, and the auxiliary targets carried the causal appearance without the
label noise. v2 fixes each:

- **Learnable causal signal, little label noise** (``label_noise`` 0.03 in both modalities): a square,
  isotropic mammogram whose mass is large relative to the token grid and differs by shape
  (:mod:`mammopath.synth.lesions`); pathology cells that differ by nuclear shape and arrangement, not total stain
  (:mod:`mammopath.synth.tissue`).
- **Auxiliary targets are derived like the label**: BI-RADS (mammography) and the bach4 grade (pathology) are
  drawn from the *label*, and the pathology tumour polygons follow the label: they carry exactly the label's
  noise, no hidden causal channel. The mammography lesion mask marks where the mass is, in both classes.
- **One mechanism per scenario** (:data:`SCENARIOS`): a domain has a style (acquisition / stain), a cue
  agreement ``P(cue = label)`` (``None``: no cue drawn; 0.5: independent of the label) and, for M3, a
  style-label confounding, drawn **exactly** (in each domain and class, the share of cue = label is the
  agreement, rounded), so a target's independence is not left to sampling luck. The primary scenario P is a
  hospital shift: per-source style, a cue whose agreement
  differs across the sources (0.90 / 0.75 / 0.60) and is independent at the target, the target's style outside
  the source range.
- Every image is also written **without the cue** (``*_oracle/``, ``manifest_oracle.csv``), identical
  elsewhere: the oracle (ceiling) trains, selects and tests on the causal signal alone.

Scenario M4 is a paired cohort (the same patients in both modalities, few mammography labels) for the alignment
mechanism, with a negative variant M4N whose pathology label is not the mammography one.

Files are the real formats: mammograms as DICOM (per-domain bit depth and photometric interpretation), pathology
as tiled pyramidal TIFF slides with ASAP XML tumour polygons and patch rows (x, y, size, mpp). Every row also
carries the ground truth (``causal``: the appearance is malignant; ``cue``; ``style_tilt``) for the tests and the
probes. ``truth.json`` records the scenario, its domains and the generator version.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mammopath.errors import ConfigError
from mammopath.synth.styles import MammoStyle, PathoStyle

#: 2.6: 2.4 (ladder step 3: 1.5 × training sizes) with 40% of a tumour patch irregular (amendment 4, step 5;
#: 2.5: 50%, step 4)
GENERATOR_VERSION = "2.6"


@dataclass(frozen=True)
class Domain:
    """One hospital (mammography) or centre (pathology) of a scenario.

    Args:
        style: the acquisition or stain style (:class:`MammoStyle` / :class:`PathoStyle`; its ``marker_rate``
            is ignored here).
        role: ``source`` (train / val / test splits) or ``target`` (test only, never seen in training).
        cue: ``P(cue present = label)``; ``None``: no cue at all; 0.5: the cue is independent of the label.
        confound: style-label confounding in [0, 1] (scenario M3): each image's style tilt equals
            ``2·label − 1`` with probability ``(1 + confound) / 2`` (0: independent of the label).
    """

    style: MammoStyle | PathoStyle
    role: str = "source"
    cue: float | None = None
    confound: float = 0.0

    @property
    def name(self) -> str:
        return self.style.name

    @property
    def modality(self) -> str:
        return "mammo" if isinstance(self.style, MammoStyle) else "patho"


@dataclass(frozen=True)
class Sizes:
    """How much of each domain is written (demo scale: one scenario in about 30 s on 2 cores)."""

    mammo_patients: int = 150  # train + val patients per source hospital (75/25); two views each (2.0-2.3: 100)
    mammo_test_patients: int = 60  # test patients per hospital (source test split, or a target)
    slides: int = 36  # train + val slides per source centre (2.0-2.3: 24)
    test_slides: int = 16  # test slides per centre
    grid: int = 4  # cells per slide side: grid² patches of 64 px at 1 µm/px per slide
    label_noise: float = 0.03  # P(appearance != label), both modalities


@dataclass(frozen=True)
class Scenario:
    """A named configuration of the generator with its ground truth and the theory it tests."""

    name: str
    description: str
    domains: tuple[Domain, ...]
    sizes: Sizes = field(default_factory=Sizes)
    #: paired cohort (M4): ``shared`` (one malignancy label per patient drives both modalities) or
    #: ``independent`` (the pathology label is drawn apart: the negative control); ``None``: separate cohorts
    paired: str | None = None
    #: share of the training patients whose mammography label is kept (the rest are written unlabelled)
    mammo_labelled: float = 1.0

    def domain(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise ConfigError(f"scenario {self.name} has no domain {name!r}; it has {[d.name for d in self.domains]}")

    def targets(self, modality: str | None = None) -> list[str]:
        return [d.name for d in self.domains if d.role == "target" and modality in (None, d.modality)]


# -- styles ------------------------------------------------------------------------------------------------
def _m(name: str, **kw: Any) -> MammoStyle:
    return MammoStyle(name, **kw)


def _p(name: str, **kw: Any) -> PathoStyle:
    return PathoStyle(name, **kw)


#: source styles: moderate gamma / contrast / noise / blur; bit depth and photometric vary as in real systems
MAMMO_SOURCES = (
    _m("hospital_a", bits_stored=16, gamma=1.0, contrast=1.0, noise=0.010),
    _m("hospital_b", bits_stored=12, photometric="MONOCHROME1", gamma=0.85, contrast=0.95, noise=0.015,
       spacing_tag="PixelSpacing", spacing_mm=0.07),
    _m("hospital_d", bits_stored=14, gamma=1.15, contrast=1.05, offset=0.02, noise=0.012, blur=0.4),
)  # fmt: skip
#: inside the source range (between hospital_a and hospital_d)
MAMMO_NEAR = _m("hospital_n", bits_stored=14, gamma=1.08, contrast=1.02, offset=0.01, noise=0.012, blur=0.2)
#: outside the source range on every style axis (generator 2.3, pre-registration amendments 2 and 3; 2.0-2.1 had
#: gamma 1.9, contrast 0.75, offset 0.08, noise 0.035, blur 1.2, where even the cue-free oracle fell to 0.60;
#: 2.2: gamma 1.2, contrast 0.9, offset 0.04, noise 0.025, blur 0.8, where it fell to 0.82)
MAMMO_FAR = _m("hospital_c", bits_stored=14, gamma=1.2, contrast=0.92, offset=0.03, noise=0.02, blur=0.6)
PATHO_SOURCES = (
    _p("centre_1", h_vector=(0.65, 0.70, 0.29), e_vector=(0.07, 0.99, 0.11), jpeg_quality=92),
    _p("centre_2", h_vector=(0.58, 0.74, 0.34), e_vector=(0.12, 0.96, 0.22), h_scale=1.1, e_scale=0.9, blur=0.4,
       jpeg_quality=80, mpp=0.5),
    _p("centre_4", h_vector=(0.70, 0.66, 0.27), e_vector=(0.05, 0.97, 0.20), h_scale=0.92, e_scale=1.08, blur=0.2,
       jpeg_quality=88),
)  # fmt: skip
PATHO_NEAR = _p("centre_n", h_vector=(0.64, 0.70, 0.30), e_vector=(0.08, 0.98, 0.17), h_scale=1.0, e_scale=1.0,
                blur=0.2, jpeg_quality=88)  # fmt: skip
PATHO_FAR = _p("centre_3", h_vector=(0.45, 0.80, 0.40), e_vector=(0.25, 0.90, 0.36), h_scale=1.45, e_scale=0.6,
               blur=1.4, jpeg_quality=65)  # fmt: skip

#: scenario M4's paired site (one style per modality) and its sizes: one slide of 2 × 2 cells per patient
PAIRED_MAMMO = _m("paired_site", bits_stored=14, gamma=1.05, noise=0.012)
PAIRED_PATHO = _p("paired_site", h_vector=(0.65, 0.70, 0.29), e_vector=(0.07, 0.99, 0.11), jpeg_quality=90)
PAIRED_SIZES = Sizes(mammo_patients=120, mammo_test_patients=60, grid=2)

#: the per-source cue agreement of scenario P: differs across sources (what IRM needs)
P_AGREEMENT = (0.90, 0.75, 0.60)


def _with_roles(
    sources: tuple[Any, ...], cues: tuple[float | None, ...], targets: tuple[tuple[Any, float | None], ...],
    confound: float = 0.0,
) -> tuple[Domain, ...]:  # fmt: skip
    out = [Domain(s, "source", c, confound) for s, c in zip(sources, cues, strict=True)]
    out += [Domain(s, "target", c) for s, c in targets]
    return tuple(out)


def _both(cues: tuple[float | None, ...], mammo_targets: Any, patho_targets: Any, confound: float = 0.0) -> tuple:
    return _with_roles(MAMMO_SOURCES, cues, mammo_targets, confound) + _with_roles(
        PATHO_SOURCES, cues, patho_targets, confound
    )


def _renamed(style: Any, name: str) -> Any:
    return replace(style, name=name)


def _paired_scenario(name: str, description: str, paired: str) -> Scenario:
    """M4 and its negative variant: one paired site, 20% of the training mammograms labelled."""
    domains = (Domain(PAIRED_MAMMO), Domain(PAIRED_PATHO))
    return Scenario(name, description, domains, sizes=PAIRED_SIZES, paired=paired, mammo_labelled=0.2)


SCENARIOS: dict[str, Scenario] = {
    "P": Scenario(
        "P",
        "primary hospital shift: per-source style, a cue whose agreement differs across the sources "
        "(0.90/0.75/0.60) and is independent of the label at the target, the target's style outside the source "
        "range. Secondary targets: a near-source style with no cue, and the reversed cue (stress row).",
        _both(
            P_AGREEMENT,
            ((MAMMO_FAR, 0.5), (MAMMO_NEAR, None), (_renamed(MAMMO_NEAR, "hospital_r"), 0.2)),
            ((PATHO_FAR, 0.5), (PATHO_NEAR, None), (_renamed(PATHO_NEAR, "centre_r"), 0.2)),
        ),
    ),
    "M1": Scenario(
        "M1",
        "style only: no cue anywhere; an unseen style outside the source range and a near-source style.",
        _both((None, None, None), ((MAMMO_FAR, None), (MAMMO_NEAR, None)), ((PATHO_FAR, None), (PATHO_NEAR, None))),
    ),
    "M2": Scenario(
        "M2",
        "constant cue: the same cue agreement (0.80) in every source, independent at the target (near style): "
        "IRM has no cross-environment variation to identify.",
        _both((0.8, 0.8, 0.8), ((MAMMO_NEAR, 0.5),), ((PATHO_NEAR, 0.5),)),
    ),
    "M3": Scenario(
        "M3",
        "style confounded with the label inside the sources (confounding 0.8: the style tilt agrees with the label "
        "in 90% of images), independent at the target (near style): marginalizing over source styles has its "
        "causal meaning here.",
        _both((None, None, None), ((MAMMO_NEAR, None),), ((PATHO_NEAR, None),), confound=0.8),
    ),
    "M4": _paired_scenario(
        "M4",
        "paired alignment: one site, the same patients in both modalities, one malignancy label per patient, "
        "mammography labels kept for 20% of the training patients (pathology fully labelled). Arms: no alignment, "
        "true pairs, shuffled pairs (manifest_shuffled.csv).",
        "shared",
    ),
    "M4N": _paired_scenario(
        "M4N",
        "M4's negative variant: the pathology label is drawn independently of the mammography label, so the "
        "true pairs carry no information about the mammogram's class.",
        "independent",
    ),
}


def scenario(name: str, sizes: Sizes | None = None) -> Scenario:
    """The named scenario (``P``, ``M1``, ``M2``, ``M3``, ``M4``, ``M4N``), optionally resized."""
    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)} (docs/evidence.md)")
    found = SCENARIOS[name]
    return replace(found, sizes=sizes) if sizes is not None else found
