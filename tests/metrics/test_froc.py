"""Lesion-level FROC: a hand-worked 3-slide example and agreement with the official CAMELYON16 logic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mammopath.errors import ConfigError
from mammopath.metrics import froc


def _hand_example() -> tuple[dict, dict, dict, dict]:
    # Slide A (tumour): lesion 1 top-left, lesion 2 bottom-right, lesion 3 a one-pixel ITC.
    mask_a = np.zeros((10, 10), dtype=np.int32)
    mask_a[0:3, 0:3] = 1
    mask_a[6:9, 6:9] = 2
    mask_a[5, 0] = 3
    # Slide B (tumour): one lesion, never hit.
    mask_b = np.zeros((10, 10), dtype=np.int32)
    mask_b[0:2, 0:2] = 1
    detections = {
        "A": np.array(
            [
                [0.9, 1, 1],  # hits lesion 1
                [0.6, 2, 2],  # hits lesion 1 again: lesion 1 keeps 0.9, not an FP
                [0.8, 5, 5],  # background: FP
                [0.7, 0, 5],  # x=0, y=5: the ITC, neither hit nor FP
                [0.8, 7, 7],  # hits lesion 2 (ties with the FP at 0.8)
            ]
        ),
        "B": np.array([[0.5, 9, 9]]),  # FP
        "C": np.array([[0.95, 3, 3], [0.4, 1, 1]]),  # normal slide: both FPs
    }
    masks = {"A": mask_a, "B": mask_b}
    tumor = {"A": True, "B": True, "C": False}
    itc = {"A": {3}}
    return detections, masks, tumor, itc


def test_froc_hand_worked_three_slides() -> None:
    detections, masks, tumor, itc = _hand_example()
    r = froc(detections, masks, is_tumor_slide=tumor, exclude_itc=itc)
    # 3 slides; non-ITC lesions A1, A2, B1. FPs: 0.95 (C), 0.8 (A), 0.5 (B), 0.4 (C); hits: A1 0.9, A2 0.8.
    # Curve (threshold: FP/slide, sensitivity): inf (0, 0), .95 (1/3, 0), .9 (1/3, 1/3), .8 (2/3, 2/3),
    # .5 (1, 2/3), .4 (4/3, 2/3).
    assert r["n_slides"] == 3 and r["n_lesions"] == 3
    np.testing.assert_allclose(r["thresholds"], [np.inf, 0.95, 0.9, 0.8, 0.5, 0.4])
    np.testing.assert_allclose(r["fp_per_slide"], [0, 1 / 3, 1 / 3, 2 / 3, 1, 4 / 3])
    np.testing.assert_allclose(r["sensitivity"], [0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    # 0.25: between (0, 0) and (1/3, 0); 0.5: halfway from (1/3, 1/3) to (2/3, 2/3); >= 1: 2/3.
    np.testing.assert_allclose(r["sensitivities"], [0, 0.5, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert r["score"] == pytest.approx(19 / 36)


def test_itc_hit_becomes_a_lesion_when_not_excluded() -> None:
    detections, masks, tumor, _ = _hand_example()
    r = froc(detections, masks, is_tumor_slide=tumor)
    assert r["n_lesions"] == 4  # the ITC now counts and its 0.7 detection hits it
    # at threshold 0.7: hits A1 (0.9), A2 (0.8), A3 (0.7) of 4; FPs 0.95, 0.8 -> 2/3 per slide
    i = int(np.nonzero(r["thresholds"] == 0.7)[0][0])
    assert r["sensitivity"][i] == pytest.approx(3 / 4)
    assert r["fp_per_slide"][i] == pytest.approx(2 / 3)


def test_tumor_flag_inferred_from_masks_and_coordinates_downsampled() -> None:
    detections, masks, tumor, itc = _hand_example()
    expected = froc(detections, masks, is_tumor_slide=tumor, exclude_itc=itc)
    # Level-0 coordinates on a level-5 mask (factor 32), and no explicit tumour flags.
    scaled = {k: v * np.array([1, 32, 32]) + np.array([0, 7, 31]) for k, v in detections.items()}
    r = froc(scaled, masks, exclude_itc=itc, downsample=32)
    assert r["score"] == pytest.approx(expected["score"])
    np.testing.assert_allclose(r["sensitivities"], expected["sensitivities"])


def _official(detections: dict, masks: dict, tumor: dict, itc: dict, rates: tuple) -> list[float]:
    """Transcription of compute_FP_TP_Probs + computeFROC (Evaluation_FROC.py) and the np.interp scoring step."""
    fp_all, tp_all, n_tumors = [], [], []
    for slide in tumor:
        det = detections.get(slide, np.zeros((0, 3)))
        if not tumor[slide]:
            fp_all.append(list(det[:, 0]))
            tp_all.append([])
            n_tumors.append(0)
            continue
        mask = masks[slide]
        max_label = int(mask.max())
        tp_probs = np.zeros(max_label)
        fps = []
        for p, x, y in det:
            label = mask[int(y), int(x)]
            if label == 0:
                fps.append(p)
            elif label not in itc.get(slide, set()) and p > tp_probs[label - 1]:
                tp_probs[label - 1] = p
        fp_all.append(fps)
        tp_all.append(list(tp_probs))
        n_tumors.append(max_label - len(itc.get(slide, set())))
    unlisted_fps = [v for s in fp_all for v in s]
    unlisted_tps = [v for s in tp_all for v in s]
    total_fps, total_tps = [], []
    for t in sorted(set(unlisted_fps + unlisted_tps))[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= t).sum())
        total_tps.append((np.asarray(unlisted_tps) >= t).sum())
    total_fps.append(0)
    total_tps.append(0)
    fps_per_slide = np.asarray(total_fps) / float(len(tumor))
    sens = np.asarray(total_tps) / float(sum(n_tumors))
    return list(np.interp(rates, fps_per_slide[::-1], sens[::-1]))


def _random_case(seed: int) -> tuple[dict, dict, dict, dict]:
    rng = np.random.default_rng(seed)
    detections, masks, tumor, itc = {}, {}, {}, {}
    for k in range(7):
        slide = f"s{k}"
        tumor[slide] = k < 4
        if tumor[slide]:
            mask = np.zeros((40, 40), dtype=np.int32)
            n_les = int(rng.integers(1, 5))
            for lab in range(1, n_les + 1):  # disjoint horizontal bands, so labels are 1..n
                y0 = (lab - 1) * 10 + int(rng.integers(0, 3))
                x0 = int(rng.integers(0, 30))
                mask[y0 : y0 + int(rng.integers(2, 7)), x0 : x0 + int(rng.integers(2, 10))] = lab
            masks[slide] = mask
            itc[slide] = {int(v) for v in rng.choice(np.arange(1, n_les + 1), int(rng.integers(0, 2)), replace=False)}
        n_det = int(rng.integers(0, 15))
        probs = np.round(rng.uniform(0.05, 1.0, n_det), 1)  # coarse: ties between hits and FPs
        xy = rng.integers(0, 40, size=(n_det, 2))
        if tumor[slide] and n_det:  # aim some detections at lesions
            ys, xs = np.nonzero(masks[slide])
            pick = rng.integers(0, ys.size, size=n_det // 2)
            xy[: n_det // 2] = np.stack([xs[pick], ys[pick]], axis=1)
        detections[slide] = np.column_stack([probs, xy]).astype(float)
    return detections, masks, tumor, itc


@pytest.mark.parametrize("seed", range(8))
def test_matches_official_script(seed: int) -> None:
    detections, masks, tumor, itc = _random_case(seed)
    rates = (0.25, 0.5, 1, 2, 4, 8)
    expected = _official(detections, masks, tumor, itc, rates)
    compat = froc(detections, masks, is_tumor_slide=tumor, exclude_itc=itc, drop_lowest_threshold=True)
    np.testing.assert_allclose(compat["sensitivities"], expected, atol=1e-12)
    assert compat["score"] == pytest.approx(float(np.mean(expected)))
    # With a missed or ITC lesion and positive probabilities, sweeping every probability gives the same numbers.
    default = froc(detections, masks, is_tumor_slide=tumor, exclude_itc=itc)
    hit_all = default["sensitivity"][-1] == 1.0 and not any(itc.values())
    if not hit_all:
        np.testing.assert_allclose(default["sensitivities"], expected, atol=1e-12)


def test_no_lesions_gives_nan_and_errors_name_the_slide() -> None:
    r = froc({"n1": np.array([[0.9, 1, 1]])}, {}, is_tumor_slide={"n1": False})
    assert math.isnan(r["score"]) and r["n_lesions"] == 0
    mask = np.zeros((4, 4), dtype=int)
    mask[0, 0] = 1
    with pytest.raises(ConfigError, match="'t1' has no lesion mask"):
        froc({"t1": np.array([[0.9, 1, 1]])}, {}, is_tumor_slide={"t1": True})
    with pytest.raises(ConfigError, match="outside the mask"):
        froc({"t1": np.array([[0.9, 10, 1]])}, {"t1": mask})
    with pytest.raises(ConfigError, match="missing from is_tumor_slide"):
        froc({"t1": np.array([[0.9, 1, 1]])}, {"t1": mask}, is_tumor_slide={"t2": True})
    with pytest.raises(ConfigError, match="not in its mask"):
        froc({}, {"t1": mask}, exclude_itc={"t1": {2}})
    with pytest.raises(ConfigError, match=r"\(K, 3\)"):
        froc({"t1": np.array([0.9, 1])}, {"t1": mask})


def test_official_quirk_drops_the_lowest_probability_when_every_lesion_is_hit() -> None:
    mask = np.zeros((4, 4), dtype=int)
    mask[0, 0] = 1
    detections = {"t1": np.array([[0.9, 3, 3], [0.3, 0, 0]])}  # an FP at 0.9, the only lesion hit at 0.3
    default = froc(detections, {"t1": mask})
    np.testing.assert_allclose(default["sensitivities"], [0, 0, 1, 1, 1, 1])
    # The official sweep skips its lowest probability (0.3 here), so the hit never counts.
    official = _official(detections, {"t1": mask}, {"t1": True}, {}, (0.25, 0.5, 1, 2, 4, 8))
    compat = froc(detections, {"t1": mask}, drop_lowest_threshold=True)
    np.testing.assert_allclose(compat["sensitivities"], official)
    np.testing.assert_allclose(official, [0, 0, 0, 0, 0, 0])
