"""`alignment_metrics` on a constructed set against the definitions written out with loops (docs/mutation.md).

The end-to-end test (tests/callbacks/test_alignment.py) checks that every curve is logged; this one checks the
numbers: patient means, R@k and its two chance levels, P@k, mAP@R, positive-minus-negative and uniformity.
"""

from __future__ import annotations

import math

import pytest
import torch

from mammopath.callbacks.alignment import alignment_metrics

# patients 0-2 are truly paired (both modalities); 7-9 are unpaired; class -1 = unknown
MAMMO = {"patient": [0, 0, 1, 2, 9, 8], "cls": [1, 1, 0, 1, 0, -1], "paired": [True, True, True, True, False, False]}
PATHO = {"patient": [0, 1, 2, 7, 2], "cls": [1, 0, 1, 1, 1], "paired": [True, True, True, False, True]}


def _keys(table: dict[str, list]) -> dict[str, torch.Tensor]:
    return {
        "patient": torch.tensor(table["patient"]),
        "cls": torch.tensor(table["cls"]),
        "paired": torch.tensor(table["paired"]),
    }


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in rows]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _top(sims: list[float], k: int) -> list[int]:
    return sorted(range(len(sims)), key=lambda j: -sims[j])[:k]


def _patient_means(z: list[list[float]], table: dict[str, list]) -> dict[int, list[float]]:
    rows: dict[int, list[list[float]]] = {}
    for r, p, paired in zip(z, table["patient"], table["paired"], strict=True):
        if paired:
            rows.setdefault(p, []).append(r)
    return {p: _unit([[sum(c) for c in zip(*rs, strict=True)]])[0] for p, rs in rows.items()}


def _expected(zm: list[list[float]], zp: list[list[float]], k_p: int) -> dict[str, float]:
    """Every number of alignment_metrics, from the definitions (docs/alignment.md, metrics/retrieval.py)."""
    out: dict[str, float] = {"n_mammo": len(zm), "n_patho": len(zp)}
    pos, neg = [], []
    for i, a in enumerate(zm):
        for j, b in enumerate(zp):
            both = MAMMO["paired"][i] and PATHO["paired"][j]
            neither = not MAMMO["paired"][i] and not PATHO["paired"][j]
            positive = (both and MAMMO["patient"][i] == PATHO["patient"][j]) or (
                neither and MAMMO["cls"][i] == PATHO["cls"][j] and MAMMO["cls"][i] >= 0
            )
            (pos if positive else neg).append(_dot(a, b))
    out["pos_minus_neg"] = sum(pos) / len(pos) - sum(neg) / len(neg)

    def uniformity(x: list[list[float]]) -> float:
        pairs = [(a, b) for i, a in enumerate(x) for b in x[i + 1 :]]
        return math.log(sum(math.exp(-2 * sum((p - q) ** 2 for p, q in zip(a, b, strict=True))) for a, b in pairs)
                        / len(pairs))  # fmt: skip

    out["uniformity"] = 0.5 * (uniformity(zm) + uniformity(zp))
    um, up = _patient_means(zm, MAMMO), _patient_means(zp, PATHO)
    common = sorted(set(um) & set(up))  # [0, 1, 2]
    out["n_paired_patients"] = len(common)
    out["alignment"] = sum(sum((x - y) ** 2 for x, y in zip(um[p], up[p], strict=True)) for p in common) / len(common)
    cls = {p: c for p, c in zip(MAMMO["patient"], MAMMO["cls"], strict=True)}
    for k in (1, 2):
        hits = []
        for queries, candidates in ((um, up), (up, um)):
            for p in common:
                ranked = _top([_dot(queries[p], candidates[q]) for q in common], k)
                hits.append(float(common.index(p) in ranked))
        out[f"R@{k}"] = sum(hits) / len(hits)
        n = len(common)
        out[f"R@{k}_chance"] = k / n  # one correct candidate among n: k of them drawn at random
        # a model that knows only the class ranks the query's class first: 1 of n_same, k drawn among them
        same = [sum(cls[q] == cls[p] for q in common) for p in common]
        out[f"R@{k}_label_chance"] = sum(min(1.0, k / s) for s in same) / n
    queries = [i for i, c in enumerate(MAMMO["cls"]) if c >= 0]
    relevant = [[PATHO["cls"][j] == MAMMO["cls"][i] for j in range(len(zp))] for i in queries]
    precisions, aps = [], []
    for i, rel in zip(queries, relevant, strict=True):
        sims = [_dot(zm[i], b) for b in zp]
        order = _top(sims, len(sims))
        precisions.append(sum(rel[j] for j in order[:k_p]) / k_p)
        r = sum(rel)
        aps.append(sum(sum(rel[j] for j in order[: n + 1]) / (n + 1) for n in range(r) if rel[order[n]]) / r)
    out[f"P@{k_p}"] = sum(precisions) / len(precisions)
    out[f"P@{k_p}_chance"] = sum(sum(rel) / len(rel) for rel in relevant) / len(relevant)
    out["mAP@R"] = sum(aps) / len(aps)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_number_matches_its_definition(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    zm = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    zp = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    got = alignment_metrics(zm, zp, _keys(MAMMO), _keys(PATHO), ks=(1, 2), seed=0)
    want = _expected(zm.tolist(), zp.tolist(), k_p=2)
    chance = got.pop("mAP@R_chance")
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # a random ranking's mAP@R lies between the worst and the best ranking's
    assert 0.0 < chance < 1.0
    assert chance == alignment_metrics(zm, zp, _keys(MAMMO), _keys(PATHO), ks=(1, 2), seed=0)["mAP@R_chance"]


def test_a_perfect_embedding_retrieves_every_patient_and_class() -> None:
    """Each patient its own direction, shared by both modalities; unpaired rows on their class's direction."""
    eye = torch.eye(8, dtype=torch.float64)
    zm = eye[[0, 0, 1, 2, 5, 6]]  # P0 twice, P1, P2, an unpaired class-0 row, an unknown-class row
    zp = eye[[0, 1, 2, 3, 2]]
    got = alignment_metrics(zm, zp, _keys(MAMMO), _keys(PATHO), ks=(1, 5))
    assert got["R@1"] == 1.0 and got["R@5"] == 1.0 and got["alignment"] == pytest.approx(0.0)
    assert got["R@1_chance"] == pytest.approx(1 / 3) and got["R@5_chance"] == 1.0
    assert got["R@1_label_chance"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_what_is_left_out_when_a_part_is_missing() -> None:
    zm = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    zp = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    assert alignment_metrics(zm[:0], zp, _keys(MAMMO), _keys(PATHO)) == {"n_mammo": 0.0, "n_patho": 5.0}
    assert alignment_metrics(zm, zp[:0], _keys(MAMMO), _keys(PATHO)) == {"n_mammo": 6.0, "n_patho": 0.0}
    # no paired patients in common (mammography's paired patients 0-2, pathology's only patient 2): no R@k
    one = {k: v[[2, 3]] for k, v in _keys(PATHO).items()}
    got = alignment_metrics(zm, zp[[2, 3]], _keys(MAMMO), one)
    assert not any(name.startswith(("R@", "alignment", "n_paired")) for name in got) and "mAP@R" in got
    # no mammography row of a known class: no class-consistent retrieval
    unknown = _keys(MAMMO) | {"cls": torch.full((6,), -1)}
    got = alignment_metrics(zm, zp, unknown, _keys(PATHO))
    assert not any(name.startswith(("P@", "mAP")) for name in got) and "R@1" in got
