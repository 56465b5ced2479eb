"""Annotation readers/writers (ASAP, ImageScope, INbreast plist), rasterisation and CBIS-DDSM ROI classification."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from mammopath.errors import AnnotationError
from mammopath.io.annotations import (
    Polygon,
    bach_class,
    inbreast_name,
    read_asap_xml,
    read_imagescope_xml,
    read_inbreast_xml,
    write_asap_xml,
    write_imagescope_xml,
    write_inbreast_xml,
)
from mammopath.io.masks import rasterize

# --------------------------------------------------------------------------------------------- ASAP


def _asap(body: str, groups: str = "") -> str:
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>\n'
        + body
        + "\t</Annotations>\n\t<AnnotationGroups>\n"
        + groups
        + "\t</AnnotationGroups>\n</ASAP_Annotations>\n"
    )


def _ann(name: str, group: str, coords: list[tuple[str, str, str]], kind: str = "Polygon") -> str:
    rows = "".join(f'\t\t\t\t<Coordinate Order="{o}" X="{x}" Y="{y}" />\n' for o, x, y in coords)
    return (
        f'\t\t<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">\n'
        f"\t\t\t<Coordinates>\n{rows}\t\t\t</Coordinates>\n\t\t</Annotation>\n"
    )


def test_asap_round_trip_exact(tmp_path: Path) -> None:
    polys = [
        Polygon(np.array([[71184.3984375, 117880.5], [71300.25, 117900.125], [71250.0, 118000.7]]), "_0", True, "_0"),
        Polygon(np.array([[0.1, 0.2], [1e-3, 3.3], [2.0000000001, 1.0]]), "Annotation 1", True, "_1"),
        Polygon(np.array([[71200.5, 117910.0], [71220.5, 117915.0], [71210.0, 117950.0]]), "hole", False, "_2"),
        Polygon(np.array([[5.5, 6.25]]), "a dot", True, "metastases"),
    ]
    write_asap_xml(tmp_path / "tumor_001.xml", polys)
    back = read_asap_xml(tmp_path / "tumor_001.xml")
    assert back == polys
    assert back[1].points[1, 0] == 1e-3 and back[1].points[2, 0] == 2.0000000001


def test_asap_writer_layout(tmp_path: Path) -> None:
    polys = [
        Polygon(np.array([[1.5, 2.0], [3.0, 4.0], [5.0, 0.0]]), "Annotation 0", True, "_0"),
        Polygon(np.array([[2.0, 2.0], [3.0, 2.0], [2.5, 3.0]]), "Annotation 1", False, ""),  # empty group -> _2
    ]
    write_asap_xml(tmp_path / "a.xml", polys)
    text = (tmp_path / "a.xml").read_text()
    assert text.startswith('<?xml version="1.0"?>\n<ASAP_Annotations>')
    root = ET.fromstring(text)
    assert [c.tag for c in root] == ["Annotations", "AnnotationGroups"]
    anns = root.findall("Annotations/Annotation")
    assert [dict(a.attrib) for a in anns] == [
        {"Name": "Annotation 0", "Type": "Polygon", "PartOfGroup": "_0", "Color": "#F4FA58"},
        {"Name": "Annotation 1", "Type": "Polygon", "PartOfGroup": "_2", "Color": "#F4FA58"},
    ]
    coords = anns[0].findall("Coordinates/Coordinate")
    assert dict(coords[0].attrib) == {"Order": "0", "X": "1.5", "Y": "2.0"}
    assert [c.get("Order") for c in coords] == ["0", "1", "2"]
    groups = root.findall("AnnotationGroups/Group")
    assert [(g.get("Name"), g.get("PartOfGroup")) for g in groups] == [("_0", "None"), ("_2", "None")]
    assert all([c.tag for c in g] == ["Attributes"] for g in groups)


def test_asap_camelyon16_quirks_shuffled_order_and_decimals(tmp_path: Path) -> None:
    body = _ann("_0", "_0", [("2", "30.75", "40.0"), ("0", "10.5", "20.25"), ("1", "30.0", "20.0")])
    body += _ann("Annotation 1", "_2", [("1", "12", "21"), ("0", "11", "21"), ("2", "11.5", "22")])
    body += _ann("Annotation 2", "TUMOR", [("0", "1", "1"), ("1", "2", "1"), ("2", "2", "2")], kind="Spline")
    (tmp_path / "test_001.xml").write_text(_asap(body))
    polys = read_asap_xml(tmp_path / "test_001.xml")
    np.testing.assert_array_equal(polys[0].points, [[10.5, 20.25], [30.0, 20.0], [30.75, 40.0]])
    np.testing.assert_array_equal(polys[1].points, [[11, 21], [12, 21], [11.5, 22]])
    assert [(p.label, p.group, p.positive) for p in polys] == [
        ("_0", "_0", True),
        ("Annotation 1", "_2", False),
        ("Annotation 2", "TUMOR", True),
    ]


def test_asap_camelyon17_groups(tmp_path: Path) -> None:
    body = _ann("Annotation 0", "metastases", [("0", "0", "0"), ("1", "4", "0"), ("2", "4", "4"), ("3", "0", "4")])
    body += _ann("Annotation 1", "normal", [("0", "1", "1"), ("1", "3", "1"), ("2", "3", "3"), ("3", "1", "3")])
    body += _ann("Annotation 2", "None", [("0", "9", "9"), ("1", "9.5", "9"), ("2", "9", "9.5")])
    body += _ann("Annotation 3", "Exclusion", [("0", "7", "7"), ("1", "8", "7"), ("2", "7", "8")], kind="Rectangle")
    groups = '\t\t<Group Name="metastases" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>\n'
    (tmp_path / "patient_004_node_4.xml").write_text(_asap(body, groups))
    polys = read_asap_xml(tmp_path / "patient_004_node_4.xml")
    assert [p.positive for p in polys] == [True, False, False, False]
    mask = rasterize(polys, (5, 5))
    assert mask.sum() == 16 - 4 and not mask[1:3, 1:3].any()


def test_asap_dot_and_pointset_kept_as_points(tmp_path: Path) -> None:
    body = _ann("d", "_0", [("0", "3.5", "4.5")], kind="Dot")
    body += _ann("ps", "_1", [("1", "2", "2"), ("0", "1", "1")], kind="PointSet")
    (tmp_path / "dots.xml").write_text(_asap(body))
    polys = read_asap_xml(tmp_path / "dots.xml")
    assert [p.points.tolist() for p in polys] == [[[3.5, 4.5]], [[1.0, 1.0]], [[2.0, 2.0]]]
    assert not rasterize(polys, (8, 8)).any()  # points have no area


@pytest.mark.parametrize(
    ("x", "y", "pattern"),
    [
        ("12,5a", "3", r"'12,5a' is not a number"),
        ("12,5", "3", r"'12,5' is not a number \(a decimal comma"),
        ("nan", "3", r"'nan' is not a finite number"),
        ("12", None, r"the value is missing"),
    ],
)
def test_asap_malformed_coordinate(tmp_path: Path, x: str, y: str | None, pattern: str) -> None:
    bad = f'X="{x}"' + (f' Y="{y}"' if y is not None else "")
    body = _ann("ok", "_0", [("0", "0", "0"), ("1", "1", "0"), ("2", "1", "1")])
    body += (
        '<Annotation Name="Annotation 7" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>'
        '<Coordinate Order="1" X="1" Y="1" /><Coordinate Order="3" ' + bad + " /></Coordinates></Annotation>\n"
    )
    (tmp_path / "tumor_042.xml").write_text(_asap(body))
    with pytest.raises(AnnotationError, match=r"tumor_042\.xml: annotation #1 \(Name='Annotation 7'\), coordinate "
                       r"Order=3, [XY]: " + pattern):  # fmt: skip
        read_asap_xml(tmp_path / "tumor_042.xml")


def test_asap_bad_order_attribute(tmp_path: Path) -> None:
    body = _ann("x", "_0", [("0", "0", "0"), ("0", "1", "0"), ("2", "1", "1")])
    (tmp_path / "dup.xml").write_text(_asap(body))
    with pytest.raises(AnnotationError, match=r"dup\.xml: annotation #0 .*coordinate #1: Order='0' .*repeated"):
        read_asap_xml(tmp_path / "dup.xml")


def test_asap_unknown_group_and_overrides(tmp_path: Path) -> None:
    tri = [("0", "0", "0"), ("1", "4", "0"), ("2", "0", "4")]
    (tmp_path / "custom.xml").write_text(_asap(_ann("a", "Carcinoma", tri) + _ann("b", "Stroma", tri)))
    with pytest.raises(AnnotationError, match=r"custom\.xml: annotation #0 \(Name='a'\): PartOfGroup='Carcinoma'"):
        read_asap_xml(tmp_path / "custom.xml")
    polys = read_asap_xml(tmp_path / "custom.xml", positive_groups={"carcinoma"}, negative_groups=["STROMA"])
    assert [p.positive for p in polys] == [True, False]
    with pytest.raises(ValueError, match="both positive and negative"):
        read_asap_xml(tmp_path / "custom.xml", positive_groups={"x"}, negative_groups={"X"})


def test_asap_nested_group_resolves_through_parent(tmp_path: Path) -> None:
    tri = [("0", "0", "0"), ("1", "4", "0"), ("2", "0", "4")]
    groups = (
        '<Group Name="Tumor region A" PartOfGroup="Tumor" Color="#FF0000"><Attributes /></Group>\n'
        '<Group Name="Tumor" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>\n'
        '<Group Name="Orphan" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>\n'
    )
    (tmp_path / "nested.xml").write_text(_asap(_ann("a", "Tumor region A", tri), groups))
    assert read_asap_xml(tmp_path / "nested.xml")[0].positive is True
    # a top-level group's PartOfGroup="None" means "no parent", not "negative"
    (tmp_path / "orphan.xml").write_text(_asap(_ann("a", "Orphan", tri), groups))
    with pytest.raises(AnnotationError, match="PartOfGroup='Orphan'"):
        read_asap_xml(tmp_path / "orphan.xml")


def test_asap_structural_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(AnnotationError, match=r"broken\.xml: not well-formed XML"):
        read_asap_xml(tmp_path / "broken.xml")
    (tmp_path / "other.xml").write_text("<Annotations />")
    with pytest.raises(AnnotationError, match=r"other\.xml: root element is <Annotations>, expected <ASAP_"):
        read_asap_xml(tmp_path / "other.xml")
    (tmp_path / "t.xml").write_text(_asap(_ann("e", "_0", [("0", "0", "0")], kind="Ellipse")))
    with pytest.raises(AnnotationError, match=r"t\.xml: annotation #0 \(Name='e'\): Type='Ellipse'"):
        read_asap_xml(tmp_path / "t.xml")


def test_asap_writer_refuses_contradictory_polarity(tmp_path: Path) -> None:
    bad = Polygon(np.array([[0, 0], [1, 0], [0, 1]]), "x", True, "_2")
    with pytest.raises(ValueError, match="group '_2' is negative"):
        write_asap_xml(tmp_path / "x.xml", [bad])


# --------------------------------------------------------------------------------------- ImageScope


def test_bach_class_mapping() -> None:
    cases = {
        "Benign": "Benign",
        "benign lesion": "Benign",
        "Carcinoma in situ": "InSitu",
        "INSITU": "InSitu",
        "in-situ": "InSitu",
        "Invasive carcinoma": "Invasive",
        "": "Normal",
        "background": "Normal",
    }
    assert {k: bach_class(k) for k in cases} == cases


def test_imagescope_round_trip_and_positional_layout(tmp_path: Path) -> None:
    polys = [
        Polygon(np.array([[100.0, 200.0], [150.5, 200.0], [150.5, 260.25]]), "Benign", False, "Benign"),
        Polygon(np.array([[10.0, 20.0], [30.0, 20.0], [30.0, 40.0], [10.0, 40.0]]), "InSitu", True, "in situ"),
        Polygon(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 1.0]]), "Invasive", True, ""),
    ]
    write_imagescope_xml(tmp_path / "A01.xml", polys, microns_per_pixel=0.467)
    back = read_imagescope_xml(tmp_path / "A01.xml")
    assert [p.points.tolist() for p in back] == [p.points.tolist() for p in polys]
    assert [(p.label, p.positive, p.group) for p in back] == [
        ("Benign", False, "Benign"),
        ("InSitu", True, "in situ"),
        ("Invasive", True, "Invasive"),
    ]
    # the official ICIAR2018 reader is positional: root[0][1] = Regions, Region[0][0]@Value, Region[1] = Vertices
    root = ET.parse(tmp_path / "A01.xml").getroot()
    regions = root[0][1].findall("Region")
    assert [r[0][0].get("Value") for r in regions] == ["Benign", "in situ", "Invasive"]
    assert [(int(float(v.get("X"))), int(float(v.get("Y")))) for v in regions[1][1]] == [
        (10, 20),
        (30, 20),
        (30, 40),
        (10, 40),
    ]
    assert regions[1].get("Area") == "400.0"


def test_imagescope_label_fallback_to_text(tmp_path: Path) -> None:
    xml = """<Annotations MicronsPerPixel="0.467000">
<Annotation Id="1"><Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes><Regions>
<Region Id="1" Type="0" Text="Invasive carcinoma"><Attributes/>
<Vertices><Vertex X="1" Y="1" Z="0"/><Vertex X="5" Y="1" Z="0"/><Vertex X="5" Y="5" Z="0"/></Vertices></Region>
<Region Id="2" Type="0" Text="ignored"><Attributes><Attribute Name="1" Id="0" Value="Benign"/></Attributes>
<Vertices><Vertex X="2" Y="2"/><Vertex X="3" Y="2"/><Vertex X="3" Y="3"/></Vertices></Region>
<Region Id="3" Type="0" Text="In Situ"><Attributes><Attribute Name="1" Id="0" Value=""/></Attributes>
<Vertices><Vertex X="7.5" Y="7"/><Vertex X="8" Y="7"/><Vertex X="8" Y="8"/></Vertices></Region>
</Regions></Annotation></Annotations>"""
    (tmp_path / "A05.xml").write_text(xml)
    polys = read_imagescope_xml(tmp_path / "A05.xml")
    assert [(p.label, p.group) for p in polys] == [
        ("Invasive", "Invasive carcinoma"),
        ("Benign", "Benign"),
        ("InSitu", "In Situ"),
    ]
    assert polys[2].points.tolist() == [[7.5, 7.0], [8.0, 7.0], [8.0, 8.0]]


def test_imagescope_malformed_vertex(tmp_path: Path) -> None:
    xml = (
        '<Annotations><Annotation Id="1"><Regions><Region Id="9" Text="Benign"><Vertices>'
        '<Vertex X="1" Y="1"/><Vertex X="2" Y="x2"/></Vertices></Region></Regions></Annotation></Annotations>'
    )
    (tmp_path / "A02.xml").write_text(xml)
    with pytest.raises(AnnotationError, match=r"A02\.xml: Annotation #0, Region #0 \(Id='9'\), vertex #1, Y: 'x2'"):
        read_imagescope_xml(tmp_path / "A02.xml")


def test_imagescope_writer_refuses_mismatched_label(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reads back as 'Normal'"):
        write_imagescope_xml(tmp_path / "x.xml", [Polygon(np.array([[0, 0], [1, 0], [0, 1]]), "Invasive", True, "ca")])


# ------------------------------------------------------------------------------------------ INbreast

_INBREAST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Images</key>
	<array>
		<dict>
			<key>ImageIndex</key>
			<integer>0</integer>
			<key>NumberOfROIs</key>
			<integer>{n}</integer>
			<key>ROIs</key>
			<array>
{rois}			</array>
		</dict>
	</array>
</dict>
</plist>
"""


def _roi(name: str, points: list[str], count: int | None = None) -> str:
    px = "".join(f"\t\t\t\t\t\t<string>{p}</string>\n" for p in points)
    return (
        "\t\t\t\t<dict>\n"
        "\t\t\t\t\t<key>Area</key>\n\t\t\t\t\t<real>0.0</real>\n"
        "\t\t\t\t\t<key>Center</key>\n\t\t\t\t\t<string>(0.0, 0.0, 0.0)</string>\n"
        "\t\t\t\t\t<key>IndexInImage</key>\n\t\t\t\t\t<integer>0</integer>\n"
        f"\t\t\t\t\t<key>Name</key>\n\t\t\t\t\t<string>{name}</string>\n"
        f"\t\t\t\t\t<key>NumberOfPoints</key>\n\t\t\t\t\t<integer>{len(points) if count is None else count}</integer>\n"
        f"\t\t\t\t\t<key>Point_px</key>\n\t\t\t\t\t<array>\n{px}\t\t\t\t\t</array>\n"
        "\t\t\t\t\t<key>Type</key>\n\t\t\t\t\t<integer>15</integer>\n"
        "\t\t\t\t</dict>\n"
    )


def test_inbreast_name_normalisation() -> None:
    names = {
        "Mass": ("mass", "mass"),
        "Mass ": ("mass", "mass"),
        "Spiculated region": ("spiculated region", "mass"),
        "Espiculated  Region": ("spiculated region", "mass"),
        "Calcifications ": ("calcification", "calcification"),
        "CALCIFICATION": ("calcification", "calcification"),
        "Cluster": ("cluster", "calcification"),
        "Assymetry": ("asymmetry", "asymmetry"),
        "Distortion": ("distortion", "distortion"),
        "Point 3": ("point 3", "other"),
        "Unnamed": ("unnamed", "other"),
    }
    assert {k: inbreast_name(k) for k in names} == names


def test_inbreast_real_layout_quirks(tmp_path: Path) -> None:
    rois = _roi("Mass ", ["(1340.550049, 1870.270020)", "(1350,1880.5)", "( 1345.25 , 1890 )"])
    rois += _roi("Calcifications", ["(512.5, 600.75)"])
    rois += _roi("Point 1", ["(10, 10)", "(12, 12)"])
    (tmp_path / "22678622.xml").write_text(_INBREAST.format(n=3, rois=rois))
    polys = read_inbreast_xml(tmp_path / "22678622.xml")
    np.testing.assert_array_equal(polys[0].points, [[1340.550049, 1870.270020], [1350, 1880.5], [1345.25, 1890]])
    assert polys[1].points.tolist() == [[512.5, 600.75]]
    assert [(p.label, p.group, p.positive) for p in polys] == [
        ("mass", "mass", True),
        ("calcification", "calcification", True),
        ("point 1", "other", False),
    ]


def test_inbreast_round_trip_and_key_layout(tmp_path: Path) -> None:
    rois = [
        ("Mass", np.array([[100.25, 200.5], [140.0, 200.5], [140.0, 260.125], [100.25, 260.125]])),
        ("Calcification", np.array([[7.5, 9.0]])),
        ("Espiculated Region", [[1.0, 1.0], [2.0, 1.0], [1.5, 3.0]]),
    ]
    write_inbreast_xml(tmp_path / "50997250.xml", rois)
    back = read_inbreast_xml(tmp_path / "50997250.xml")
    for (_, pts), poly in zip(rois, back, strict=True):
        np.testing.assert_array_equal(poly.points, np.asarray(pts, dtype=float))
    assert [p.label for p in back] == ["mass", "calcification", "spiculated region"]

    with open(tmp_path / "50997250.xml", "rb") as f:
        data = plistlib.load(f, fmt=plistlib.FMT_XML)
    image = data["Images"][0]
    assert list(image) == ["ImageIndex", "NumberOfROIs", "ROIs"] and image["NumberOfROIs"] == 3
    assert list(image["ROIs"][0]) == [
        "Area", "Center", "Dev", "IndexInImage", "Max", "Mean", "Min", "Name", "NumberOfPoints", "Point_mm",
        "Point_px", "Total", "Type",
    ]  # fmt: skip
    assert image["ROIs"][0]["Point_px"][0] == "(100.25, 200.5)"
    assert image["ROIs"][0]["Area"] == pytest.approx(39.75 * 59.625 * 0.07**2)
    # positional ElementTree parsers (itzortzis): roi[15]=Name, roi[17]=NumberOfPoints, roi[21]=Point_px
    roi = ET.parse(tmp_path / "50997250.xml").getroot()[0][1][0][5][0]
    assert roi[15].text == "Mass" and roi[17].text == "4"
    assert [s.text for s in roi[21]][1] == "(140.0, 200.5)"


@pytest.mark.parametrize(
    ("point", "pattern"),
    [
        ("(12.5; 3)", r"'\(12\.5; 3\)' is not of the form '\(x, y\)'"),
        ("(12.5, 3a)", r", y: ' 3a' is not a number"),
    ],
)
def test_inbreast_malformed_point(tmp_path: Path, point: str, pattern: str) -> None:
    rois = _roi("Mass", ["(1, 1)", "(2, 1)", "(2, 2)"]) + _roi("Cluster", [point, "(5, 5)"])
    (tmp_path / "24065530.xml").write_text(_INBREAST.format(n=2, rois=rois))
    where = r"24065530\.xml: ROI #1 \(Name='Cluster'\), Point_px #0"
    with pytest.raises(AnnotationError, match=where + ".*" + pattern):
        read_inbreast_xml(tmp_path / "24065530.xml")


def test_inbreast_count_mismatches_and_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(_INBREAST.format(n=1, rois=_roi("Mass", ["(1, 1)", "(2, 2)"], count=3)))
    with pytest.raises(AnnotationError, match=r"a\.xml: ROI #0 \(Name='Mass'\): NumberOfPoints=3 but Point_px has 2"):
        read_inbreast_xml(tmp_path / "a.xml")
    (tmp_path / "b.xml").write_text(_INBREAST.format(n=2, rois=_roi("Mass", ["(1, 1)"])))
    with pytest.raises(AnnotationError, match=r"b\.xml: Images\[0\]: NumberOfROIs=2 but 1 ROIs"):
        read_inbreast_xml(tmp_path / "b.xml")
    (tmp_path / "c.xml").write_text("<ASAP_Annotations />")
    with pytest.raises(AnnotationError, match=r"c\.xml: not an Apple plist"):
        read_inbreast_xml(tmp_path / "c.xml")
