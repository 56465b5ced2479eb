"""The official protocols on tiny constructed cases whose answers are computed independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mammopath.io.annotations import Polygon
from mammopath.metrics.froc import froc
from mammopath.metrics.protocols import (
    PN_STAGES,
    aggregate_auroc,
    camelyon16_froc,
    lesion_masks,
    pn_kappa,
    slide_scores,
    slide_stage,
)


def test_per_breast_and_per_slide_aggregation() -> None:
    images = pd.DataFrame({
        "patient_id": ["a", "a", "a", "b", "b", "c", "c"], "laterality": ["L", "L", "R", "L", "L", "R", "R"],
        "score": [0.9, 0.1, 0.3, 0.4, 0.2, 0.8, 0.7], "label": [1, 1, 0, 0, 0, 1, 0],
    })  # fmt: skip
    # breasts: a/L (0.9, 1), a/R (0.3, 0), b/L (0.4, 0), c/R (0.8, 1)
    assert aggregate_auroc(images, ["patient_id", "laterality"]) == pytest.approx(
        roc_auc_score([1, 0, 0, 1], [0.9, 0.3, 0.4, 0.8])
    )
    patches = pd.DataFrame({"parent_id": ["s1"] * 3 + ["s2"] * 3, "score": [0.1, 0.9, 0.5, 0.2, 0.3, 0.4],
                            "slide_label": [1] * 3 + [0] * 3})  # fmt: skip
    top = slide_scores(patches, "topk", k=2).set_index("parent_id")
    assert top.loc["s1", "score"] == pytest.approx(0.7) and top.loc["s2", "score"] == pytest.approx(0.35)
    assert slide_scores(patches, "max")["score"].tolist() == [0.9, 0.4]


def _slide(cells: list[tuple[int, int]], extent: int = 224, mpp: float = 0.5, grade: int = 0, patient: str = "p",
           slide: str = "s") -> pd.DataFrame:  # fmt: skip
    grid = [(r, c) for r in range(12) for c in range(12)]
    return pd.DataFrame({
        "x": [c * extent for _, c in grid], "y": [r * extent for r, _ in grid], "extent": extent, "slide_mpp": mpp,
        "score": [0.9 if rc in cells else 0.1 for rc in grid], "slide_grade": grade, "patient_id": patient,
        "parent_id": slide,
    })  # fmt: skip


def test_slide_stage_from_the_largest_positive_group_and_pn_kappa() -> None:
    # patches of 224 px at 0.5 µm/px are 112 µm wide
    assert slide_stage(_slide([])) == "negative"
    assert slide_stage(_slide([(3, 3)])) == "itc"  # 0.112 mm
    assert slide_stage(_slide([(3, 3), (3, 4)])) == "micro"  # 0.224 mm
    assert slide_stage(_slide([(5, c) for c in range(11)] + [(0, 0)])) == "micro"  # 1.232 mm
    assert slide_stage(_slide([(r, 2) for r in range(12)] + [(11, c) for c in range(12)])) == "micro"  # 1.344 mm
    assert slide_stage(_slide([(r, 2) for r in range(12)], extent=448)) == "macro"  # 12 x 0.224 = 2.688 mm
    # patient 1: a macro and a negative slide (truth: macro, itc) -> predicted pN1, true pN1
    # patient 2: nothing predicted, truth micro -> predicted pN0, true pN1mi
    rows = pd.concat([
        _slide([(r, 2) for r in range(12)], extent=448, grade=3, patient="p1", slide="a"),
        _slide([], grade=1, patient="p1", slide="b"),
        _slide([], grade=2, patient="p2", slide="c"),
        _slide([(0, 0)], grade=0, patient="p3", slide="d"),
    ])  # fmt: skip
    kappa, table = pn_kappa(rows)
    assert table.set_index("patient_id").loc["p1", "predicted"] == "pN1"
    expected = cohen_kappa_score(
        [PN_STAGES.index(s) for s in ("pN1", "pN1mi", "pN0")],
        [PN_STAGES.index(s) for s in ("pN1", "pN0", "pN0(i+)")],
        weights="quadratic", labels=list(range(5)),
    )  # fmt: skip
    assert kappa == pytest.approx(expected, abs=1e-6)


def test_pn_stage_is_counted_per_slide_for_a_patient_with_four_positive_slides() -> None:
    # the challenge rule: macro-metastases in 4 or more positive slides -> pN2; each slide is staged on its own
    macro = [(r, 2) for r in range(12)]  # 12 x 0.224 mm = 2.688 mm at extent 448
    four = pd.concat([_slide(macro, extent=448, grade=3, patient="p4", slide=f"s{i}") for i in range(4)])
    three = pd.concat([_slide(macro, extent=448, grade=3, patient="p3", slide=f"t{i}") for i in range(3)])

    def mixed(patient: str, micro: int) -> pd.DataFrame:  # 2 macro, `micro` micro and 1 ITC slides
        return pd.concat([
            *[_slide(macro, extent=448, grade=3, patient=patient, slide=f"{patient}a{i}") for i in range(2)],
            *[_slide([(3, 3), (3, 4)], grade=2, patient=patient, slide=f"{patient}i{i}") for i in range(micro)],
            _slide([(3, 3)], grade=1, patient=patient, slide=f"{patient}t"),
        ])  # fmt: skip

    _, table = pn_kappa(pd.concat([four, three, mixed("m2", 2), mixed("m1", 1)]))
    stages = table.set_index("patient_id")
    # written out: true == predicted here (every slide's patches score its own stage)
    expected = {"p4": "pN2", "p3": "pN1", "m2": "pN2", "m1": "pN1"}  # an ITC slide is not a positive node
    assert stages["true"].to_dict() == expected and stages["predicted"].to_dict() == expected


def test_froc_from_patch_detections_equals_froc_on_the_same_masks() -> None:
    square = lambda x0, y0, s: Polygon(np.array([[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]], float),  # noqa: E731
                                       "Tumor", True, "_0")  # fmt: skip
    # a 1 mm lesion and a 0.1 mm one (ITC) on a 4096-px slide at 0.5 µm/px
    mask, itc = lesion_masks([square(400, 400, 2000), square(3600, 200, 200)], (4096, 4096), 0.5, downsample=16)
    assert mask.max() == 2 and len(itc) == 1
    patches = pd.DataFrame({
        "parent_id": ["t"] * 3 + ["n"] * 2, "x": [1000, 3580, 100, 0, 500], "y": [1000, 100, 3900, 0, 500],
        "extent": 224, "score": [0.9, 0.8, 0.7, 0.95, 0.2], "slide_label": [1, 1, 1, 0, 0],
    })  # fmt: skip
    ours = camelyon16_froc(patches, {"t": (mask, itc)}, downsample=16)
    cx, cy = patches["x"] + 112, patches["y"] + 112
    detections = {
        s: np.column_stack([patches.loc[g, "score"], cx[g], cy[g]])
        for s, g in patches.groupby("parent_id").groups.items()
    }
    direct = froc(
        detections, {"t": mask}, is_tumor_slide={"t": True, "n": False}, exclude_itc={"t": itc}, downsample=16
    )
    assert ours == pytest.approx(direct["score"])
    # by hand: one non-ITC lesion hit at 0.9; FPs at 0.95 (normal slide) and 0.7 (background), 0.2: FROC 1.0 at >= 1/2
    assert direct["sensitivities"][2:] == [1.0, 1.0, 1.0, 1.0]
