"""Lesion annotations: ASAP XML, Aperio ImageScope XML and INbreast plist XML to polygons and masks.

Every reader returns :class:`Polygon` objects in level-0 pixel coordinates (``x`` = column, ``y`` = row)
of the image the file annotates. The writers produce the exact on-disk layouts (reference
``dataset_formats.md`` §2.4, §3.4, §4.4, §5.3) so the synthetic benchmark and the tests exercise the
same parsers as the real releases. Masks are made from the polygons by
:func:`mammopath.io.masks.rasterize`.

Degenerate shapes (ASAP ``Dot``, INbreast single calcification points, anything with fewer than 3
vertices) are kept as polygons with 1-2 points so point-level tasks can use them; they have no area,
so rasterisation skips them.
"""

from __future__ import annotations

import logging
import math
import plistlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import numpy as np
from numpy.typing import ArrayLike

from mammopath.errors import AnnotationError

log = logging.getLogger(__name__)

#: ASAP ``PartOfGroup`` names (case-insensitive). CAMELYON16: ``_0``/``_1`` tumour, ``_2`` non-tumour cut
#: out of tumour; CAMELYON17: ``metastases``/``normal``; converters also use ``Tumor``/``Exclusion``/``None``.
ASAP_POSITIVE_GROUPS: frozenset[str] = frozenset({"_0", "_1", "tumor", "metastases"})
ASAP_NEGATIVE_GROUPS: frozenset[str] = frozenset({"_2", "exclusion", "normal", "none"})
_ASAP_AREA_TYPES = {"polygon", "spline", "rectangle"}
_ASAP_POINT_TYPES = {"dot", "pointset"}

#: BACH classes; regions of the last two are lesions.
BACH_CLASSES: tuple[str, ...] = ("Normal", "Benign", "InSitu", "Invasive")

#: INbreast ROI ``Name`` (stripped, lowercased, single-spaced) -> (label, lesion group); typos included.
INBREAST_NAMES: dict[str, tuple[str, str]] = {
    "mass": ("mass", "mass"),
    "spiculated region": ("spiculated region", "mass"),
    "espiculated region": ("spiculated region", "mass"),
    "calcification": ("calcification", "calcification"),
    "calcifications": ("calcification", "calcification"),
    "cluster": ("cluster", "calcification"),
    "distortion": ("distortion", "distortion"),
    "asymmetry": ("asymmetry", "asymmetry"),
    "assymetry": ("asymmetry", "asymmetry"),
}


@dataclass(eq=False)
class Polygon:
    """One annotated region.

    Attributes:
        points: ``(K, 2)`` float64 vertices ``x, y`` in level-0 pixels, in drawing order (not closed).
        label: the region's name/class (ASAP annotation ``Name``, BACH class, INbreast normalised name).
        positive: True for lesion/tumour regions; False for exclusions, which :func:`rasterize` cuts out.
        group: the grouping as written or derived (ASAP ``PartOfGroup``, ImageScope raw label text,
            INbreast lesion group ``mass``/``calcification``/``distortion``/``asymmetry``/``other``).
    """

    points: np.ndarray
    label: str
    positive: bool
    group: str

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.size == 0:
            pts = pts.reshape(0, 2)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"Polygon points must have shape (K, 2), got {pts.shape}")
        self.points = pts
        self.positive = bool(self.positive)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Polygon):
            return NotImplemented
        return (self.label, self.positive, self.group) == (other.label, other.positive, other.group) and bool(
            np.array_equal(self.points, other.points)
        )

    @property
    def area(self) -> float:
        """Enclosed area in level-0 px² (shoelace formula; 0 for fewer than 3 points)."""
        return _shoelace(self.points)


def _shoelace(pts: np.ndarray) -> float:
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _num(path: str | Path, text: str | None, where: str) -> float:
    """Parse a decimal coordinate string, raising an AnnotationError that says where and why."""
    if text is None:
        raise AnnotationError(path, f"{where}: the value is missing")
    try:
        value = float(text.strip())
    except ValueError:
        hint = " (a decimal comma? write '.' as the decimal separator)" if "," in text else ""
        raise AnnotationError(path, f"{where}: {text!r} is not a number{hint}") from None
    if not math.isfinite(value):
        raise AnnotationError(path, f"{where}: {text!r} is not a finite number")
    return value


def _parse_xml(path: str | Path, root_tag: str, fmt: str) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(path, f"not well-formed XML ({e}); expected an {fmt} file") from None
    except OSError as e:
        raise AnnotationError(path, f"cannot read the file ({e.strerror or e})") from None
    if root.tag != root_tag:
        raise AnnotationError(path, f"root element is <{root.tag}>, expected <{root_tag}> ({fmt} format)")
    return root


def _fmt(value: float) -> str:
    return repr(float(value))  # shortest string that parses back to the same float


def _write_xml(path: str | Path, root: ET.Element, declaration: str) -> None:
    ET.indent(root, space="\t")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(declaration + ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- ASAP


def _group_sets(
    positive_groups: Collection[str] | None, negative_groups: Collection[str] | None
) -> tuple[frozenset[str], frozenset[str]]:
    pos = ASAP_POSITIVE_GROUPS if positive_groups is None else frozenset(g.casefold() for g in positive_groups)
    neg = ASAP_NEGATIVE_GROUPS if negative_groups is None else frozenset(g.casefold() for g in negative_groups)
    if pos & neg:
        raise ValueError(f"groups both positive and negative: {sorted(pos & neg)}")
    return pos, neg


def _asap_polarity(group: str, parents: dict[str, str], pos: frozenset[str], neg: frozenset[str]) -> bool | None:
    """Polarity of ``group``, following ``AnnotationGroups`` parents (``PartOfGroup="None"`` = no parent)."""
    seen: set[str] = set()
    current: str | None = group
    while current is not None and current.casefold() not in seen:
        key = current.casefold()
        if key in pos:
            return True
        if key in neg:
            return False
        seen.add(key)
        parent = parents.get(current)
        current = None if parent is None or parent.casefold() == "none" else parent
    return None


def read_asap_xml(
    path: str | Path,
    *,
    positive_groups: Collection[str] | None = None,
    negative_groups: Collection[str] | None = None,
) -> list[Polygon]:
    """Read an ASAP annotation file (CAMELYON16/17 lesion XML).

    Coordinates are sorted by their ``Order`` attribute (files are not guaranteed to list them in
    order) and parsed as floats. ``Polygon``/``Spline``/``Rectangle`` give area polygons (a spline is
    approximated by the polygon through its control points); ``Dot`` gives a 1-point polygon and
    ``PointSet`` one 1-point polygon per point. Polarity comes from ``PartOfGroup`` (case-insensitive),
    following parent groups declared under ``AnnotationGroups``.

    Args:
        path: the ``.xml`` file.
        positive_groups: group names counted as tumour, replacing :data:`ASAP_POSITIVE_GROUPS`.
        negative_groups: group names cut out of tumour, replacing :data:`ASAP_NEGATIVE_GROUPS`.

    Raises:
        AnnotationError: malformed XML, an unknown group or type, or a bad coordinate; the message names
            the file, the annotation (index and name) and the coordinate ``Order``.
    """
    pos, neg = _group_sets(positive_groups, negative_groups)
    root = _parse_xml(path, "ASAP_Annotations", "ASAP")
    parents = {g.get("Name", ""): g.get("PartOfGroup", "None") for g in root.iterfind("AnnotationGroups/Group")}
    polygons: list[Polygon] = []
    for i, ann in enumerate(root.iterfind("Annotations/Annotation")):
        name = ann.get("Name", "")
        where = f"annotation #{i} (Name={name!r})"
        group = ann.get("PartOfGroup", "None")  # ASAP writes "None" for ungrouped annotations
        positive = _asap_polarity(group, parents, pos, neg)
        if positive is None:
            raise AnnotationError(
                path,
                f"{where}: PartOfGroup={group!r} is not a known group (positive: {sorted(pos)}, negative: "
                f"{sorted(neg)}); pass positive_groups=/negative_groups= to map it",
            )
        kind = ann.get("Type", "Polygon")
        if kind.casefold() not in _ASAP_AREA_TYPES | _ASAP_POINT_TYPES:
            raise AnnotationError(
                path, f"{where}: Type={kind!r} is not one of Polygon, Spline, Rectangle, Dot, PointSet"
            )
        ordered: dict[int, tuple[float, float]] = {}
        for k, coord in enumerate(ann.iterfind("Coordinates/Coordinate")):
            order_text = coord.get("Order")
            try:
                order = int(order_text) if order_text is not None else None
            except ValueError:
                order = None
            if order is None or order in ordered:
                raise AnnotationError(
                    path, f"{where}, coordinate #{k}: Order={order_text!r} is missing, not an integer or repeated"
                )
            at = f"{where}, coordinate Order={order}"
            ordered[order] = (_num(path, coord.get("X"), f"{at}, X"), _num(path, coord.get("Y"), f"{at}, Y"))
        if not ordered:
            log.warning("%s: %s has no coordinates; skipped", path, where)
            continue
        pts = np.array([ordered[k] for k in sorted(ordered)], dtype=np.float64)
        if kind.casefold() == "pointset":
            polygons.extend(Polygon(p[None, :], name, positive, group) for p in pts)
        else:
            polygons.append(Polygon(pts, name, positive, group))
    return polygons


def write_asap_xml(path: str | Path, polygons: Sequence[Polygon]) -> None:
    """Write polygons as an ASAP annotation file, in the CAMELYON layout.

    Each polygon becomes an ``Annotation`` (``Type="Dot"`` for a single point, else ``"Polygon"``) named
    by its ``label`` and in its ``group`` (``_0`` for positive, ``_2`` for negative when empty); every
    group used is declared under ``AnnotationGroups``. Coordinates are written with the shortest
    decimal that reads back to the same float.

    Raises:
        ValueError: an empty polygon, or a group whose standard polarity contradicts ``positive``.
    """
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    groups: dict[str, bool] = {}
    for i, poly in enumerate(polygons):
        if len(poly.points) == 0:
            raise ValueError(f"polygon #{i} has no points")
        group = poly.group or ("_0" if poly.positive else "_2")
        standard = _asap_polarity(group, {}, ASAP_POSITIVE_GROUPS, ASAP_NEGATIVE_GROUPS)
        if standard is not None and standard != poly.positive:
            raise ValueError(
                f"polygon #{i}: group {group!r} is {'positive' if standard else 'negative'} in ASAP "
                f"files but the polygon has positive={poly.positive}"
            )
        groups.setdefault(group, poly.positive)
        ann = ET.SubElement(anns, "Annotation", {
            "Name": poly.label or f"Annotation {i}", "Type": "Dot" if len(poly.points) == 1 else "Polygon",
            "PartOfGroup": group, "Color": "#F4FA58",
        })  # fmt: skip
        coords = ET.SubElement(ann, "Coordinates")
        for k, (x, y) in enumerate(poly.points):
            ET.SubElement(coords, "Coordinate", {"Order": str(k), "X": _fmt(x), "Y": _fmt(y)})
    declared = ET.SubElement(root, "AnnotationGroups")
    for group, positive in groups.items():
        if group.casefold() == "none":
            continue  # ASAP's "no group"; never declared as a group
        g = ET.SubElement(declared, "Group", {"Name": group, "PartOfGroup": "None",
                                              "Color": "#FF0000" if positive else "#64FE2E"})  # fmt: skip
        ET.SubElement(g, "Attributes")
    _write_xml(path, root, '<?xml version="1.0"?>\n')


# --------------------------------------------------------------------------------------- ImageScope


def bach_class(text: str) -> str:
    """Map a BACH region label to its class by case-insensitive substring (official ICIAR2018 script)."""
    low = text.casefold()
    if "benign" in low:
        return "Benign"
    if "insitu" in re.sub(r"[\s_\-]", "", low):  # 'in situ', 'insitu', 'In-Situ'
        return "InSitu"
    if "invasive" in low:
        return "Invasive"
    return "Normal"


def read_imagescope_xml(path: str | Path) -> list[Polygon]:
    """Read an Aperio ImageScope annotation file (BACH WSI ``A01.xml``...).

    Every ``Annotations/Annotation/Regions/Region`` gives one polygon from its ``Vertices/Vertex``
    ``X``/``Y`` (level 0). The raw label is ``Region/Attributes/Attribute@Value`` or, when missing or
    empty, ``Region@Text``; :func:`bach_class` maps it to ``label``; ``group`` keeps the raw text;
    ``positive`` is True for ``InSitu`` and ``Invasive``.

    Raises:
        AnnotationError: malformed XML or a bad vertex, naming the file, the region and the vertex.
    """
    root = _parse_xml(path, "Annotations", "Aperio ImageScope")
    polygons: list[Polygon] = []
    for a, ann in enumerate(root.iterfind("Annotation")):
        for r, region in enumerate(ann.iterfind("Regions/Region")):
            where = f"Annotation #{a}, Region #{r} (Id={region.get('Id')!r})"
            attr = region.find("Attributes/Attribute")
            raw = (attr.get("Value") if attr is not None else None) or region.get("Text") or ""
            pts = [
                (_num(path, v.get("X"), f"{where}, vertex #{k}, X"), _num(path, v.get("Y"), f"{where}, vertex #{k}, Y"))
                for k, v in enumerate(region.iterfind("Vertices/Vertex"))
            ]
            if not pts:
                log.warning("%s: %s has no vertices; skipped", path, where)
                continue
            label = bach_class(raw)
            polygons.append(Polygon(np.array(pts), label, label in ("InSitu", "Invasive"), raw))
    return polygons


def write_imagescope_xml(path: str | Path, polygons: Sequence[Polygon], microns_per_pixel: float = 0.0) -> None:
    """Write polygons as an Aperio ImageScope file in the BACH layout (one Annotation, one Region each).

    The label text (``group``, else ``label``) goes to both ``Region@Text`` and the region's first
    ``Attribute@Value``; ``Attributes`` and ``Vertices`` are the region's first two children, as the
    official positional reader expects.

    Raises:
        ValueError: an empty polygon, or a label text whose BACH class is not the polygon's ``label``.
    """
    root = ET.Element("Annotations", {"MicronsPerPixel": f"{microns_per_pixel:.6f}"})
    ann = ET.SubElement(root, "Annotation", {
        "Id": "1", "Name": "", "ReadOnly": "0", "NameReadOnly": "0", "LineColorReadOnly": "0", "Incremental": "0",
        "Type": "4", "LineColor": "65280", "Visible": "1", "Selected": "1", "MarkupImagePath": "", "MacroName": "",
    })  # fmt: skip
    ET.SubElement(ET.SubElement(ann, "Attributes"), "Attribute", {"Name": "Description", "Id": "0", "Value": ""})
    regions = ET.SubElement(ann, "Regions")
    headers = ET.SubElement(regions, "RegionAttributeHeaders")
    ET.SubElement(headers, "AttributeHeader", {"Id": "9999", "Name": "Region", "ColumnWidth": "-1"})
    for i, poly in enumerate(polygons, start=1):
        text = poly.group or poly.label
        if len(poly.points) == 0:
            raise ValueError(f"polygon #{i - 1} has no points")
        if bach_class(text) != poly.label:
            raise ValueError(
                f"polygon #{i - 1}: label text {text!r} reads back as {bach_class(text)!r}, not {poly.label!r}"
            )
        region = ET.SubElement(regions, "Region", {
            "Id": str(i), "Type": "0", "Zoom": "1", "Selected": "0", "ImageLocation": "", "ImageFocus": "-1",
            "Length": "0", "Area": f"{poly.area:.1f}", "LengthMicrons": "0",
            "AreaMicrons": f"{poly.area * microns_per_pixel**2:.1f}", "Text": text, "NegativeROA": "0",
            "InputRegionId": "0", "Analyze": "1", "DisplayId": str(i),
        })  # fmt: skip
        ET.SubElement(ET.SubElement(region, "Attributes"), "Attribute", {"Name": "1", "Id": "0", "Value": text})
        vertices = ET.SubElement(region, "Vertices")
        for x, y in poly.points:
            ET.SubElement(vertices, "Vertex", {"X": _fmt(x), "Y": _fmt(y), "Z": "0"})
    ET.SubElement(ann, "Plots")
    _write_xml(path, root, "")


# ------------------------------------------------------------------------------------------ INbreast


def inbreast_name(name: str) -> tuple[str, str]:
    """Normalise an INbreast ROI ``Name`` to ``(label, group)``; unknown names give ``(lowercased, 'other')``."""
    key = " ".join(name.split()).casefold()
    return INBREAST_NAMES.get(key, (key, "other"))


def _point_px(path: str | Path, text: Any, where: str) -> tuple[float, float]:
    if not isinstance(text, str):
        raise AnnotationError(path, f"{where}: expected a string '(x, y)', got {type(text).__name__}")
    parts = text.strip().strip("()").split(",")
    if len(parts) != 2:
        raise AnnotationError(path, f"{where}: {text!r} is not of the form '(x, y)'")
    return _num(path, parts[0], f"{where}, x"), _num(path, parts[1], f"{where}, y")


def read_inbreast_xml(path: str | Path) -> list[Polygon]:
    """Read an INbreast ``AllXML/<FileName>.xml`` (OsiriX ROI export, Apple plist XML).

    Uses ``Images[0].ROIs`` (the only image in every file). ``Point_px`` items are strings ``"(x, y)"``
    in pixels (x = column). ``label``/``group`` come from :func:`inbreast_name`; ``positive`` is True
    for lesion ROIs (group other than ``'other'``). Non-lesion ROIs (``Point 1``, ``Unnamed``) are
    returned with ``positive=False``: drop them before :func:`rasterize`, which would cut them out.

    Raises:
        AnnotationError: not a plist, missing keys, counts that disagree with ``NumberOfROIs``/
            ``NumberOfPoints``, or a malformed point; the message names the file, the ROI and the point.
    """
    try:
        with open(path, "rb") as f:
            data = plistlib.load(f, fmt=plistlib.FMT_XML)
    except (ExpatError, ValueError) as e:
        raise AnnotationError(path, f"not an Apple plist XML file ({e})") from None
    except OSError as e:
        raise AnnotationError(path, f"cannot read the file ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise AnnotationError(path, "not an Apple plist XML file with a top-level <dict> (OsiriX ROI export)")
    images = data.get("Images")
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        raise AnnotationError(path, "no 'Images' array with at least one image dict")
    rois = images[0].get("ROIs")
    if not isinstance(rois, list):
        raise AnnotationError(path, "Images[0] has no 'ROIs' array")
    declared = images[0].get("NumberOfROIs")
    if declared is not None and declared != len(rois):
        raise AnnotationError(path, f"Images[0]: NumberOfROIs={declared} but {len(rois)} ROIs are listed")
    polygons: list[Polygon] = []
    for i, roi in enumerate(rois):
        name = str(roi.get("Name", "")) if isinstance(roi, dict) else ""
        where = f"ROI #{i} (Name={name!r})"
        raw = roi.get("Point_px") if isinstance(roi, dict) else None
        if not isinstance(raw, list):
            raise AnnotationError(path, f"{where}: no 'Point_px' array")
        n = roi.get("NumberOfPoints")
        if n is not None and n != len(raw):
            raise AnnotationError(path, f"{where}: NumberOfPoints={n} but Point_px has {len(raw)} points")
        pts = [_point_px(path, s, f"{where}, Point_px #{k}") for k, s in enumerate(raw)]
        label, group = inbreast_name(name)
        if group == "other":
            log.debug("%s: %s is not a lesion name; kept with positive=False", path, where)
        polygons.append(Polygon(np.array(pts).reshape(-1, 2), label, group != "other", group))
    return polygons


def write_inbreast_xml(
    path: str | Path, rois: Sequence[tuple[str, ArrayLike]], pixel_spacing_mm: float = 0.07, image_index: int = 0
) -> None:
    """Write ROIs ``(Name, points (K, 2) px)`` as an INbreast plist XML with the real key layout.

    ``Images`` holds one dict (``ImageIndex``, ``NumberOfROIs``, ``ROIs``); each ROI has the 13 keys
    in alphabetical order (positional parsers rely on it). ``Point_px`` items are ``"(x, y)"``
    strings; ``Point_mm``/``Center``/``Area`` are derived from ``pixel_spacing_mm`` (their real units
    are unverified; readers ignore them); intensity statistics are 0.

    Raises:
        ValueError: a ROI without points or with points not of shape ``(K, 2)``.
    """
    s = float(pixel_spacing_mm)
    out = []
    for i, (name, points) in enumerate(rois):
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise ValueError(f"ROI #{i} ({name!r}): points must have shape (K>0, 2), got {pts.shape}")
        cx, cy = pts.mean(axis=0) * s
        out.append({
            "Area": _shoelace(pts) * s * s, "Center": f"({cx:.6f}, {cy:.6f}, 0.000000)", "Dev": 0.0,
            "IndexInImage": i, "Max": 0.0, "Mean": 0.0, "Min": 0.0, "Name": name, "NumberOfPoints": len(pts),
            "Point_mm": [f"({_fmt(x * s)}, {_fmt(y * s)}, 0)" for x, y in pts],
            "Point_px": [f"({_fmt(x)}, {_fmt(y)})" for x, y in pts],
            "Total": 0.0, "Type": 19 if len(pts) == 1 else 15,  # OsiriX t2DPoint / tPencil
        })  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        plistlib.dump({"Images": [{"ImageIndex": image_index, "NumberOfROIs": len(out), "ROIs": out}]}, f,
                      fmt=plistlib.FMT_XML, sort_keys=True)  # fmt: skip
