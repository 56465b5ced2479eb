"""The evidence suite's statistics (pre-registration §5): paired t-intervals over replicates, a two-stage
bootstrap (replicates, then patients within them), Holm across the pre-registered predictions, verdicts,
the per-scenario tables and the calibration gates.

A replicate's AUROC is computed from the test run's ``predictions.csv`` (image-level scores, the rows of one
target domain of one modality); a patient-level resample keeps all of a patient's images together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

SESOI = 0.02


@dataclass(frozen=True)
class Prediction:
    """One pre-registered prediction: ``arm`` vs ``baseline`` on ``target`` (a kind of ScenarioPlan.targets)."""

    id: str
    scenario: str
    arm: str
    baseline: str
    target: str
    predicted: str  # "helps", "harms" or "neutral"


PREDICTIONS = (
    Prediction("P1", "P", "mixstyle", "erm", "far", "helps"),
    Prediction("P2", "P", "irm", "erm", "far", "helps"),
    Prediction("P3", "P", "align", "erm", "far", "neutral"),
    Prediction("P4", "P", "full", "erm", "far", "helps"),
    Prediction("P5", "P", "full_causal_tta", "full", "far", "helps"),
    Prediction("P6", "P", "full_tent", "full", "far", "neutral"),
    Prediction("A1", "P", "erm_no_aux", "erm", "far", "harms"),
    Prediction("M1a", "M1", "mixstyle", "erm", "far", "helps"),
    Prediction("M1b", "M1", "mixstyle", "erm", "near", "neutral"),
    Prediction("M1c", "M1", "irm", "erm", "far", "neutral"),
    Prediction("M1d", "M1", "erm_causal_tta", "erm", "far", "helps"),
    Prediction("M2a", "M2", "irm", "erm", "near", "neutral"),
    Prediction("M3a", "M3", "mixstyle", "erm", "near", "helps"),
    Prediction("M3b", "M3", "irm", "erm", "near", "neutral"),
    Prediction("M4a", "M4", "align", "erm", "test", "helps"),
    Prediction("M4b", "M4", "align_shuffled", "erm", "test", "neutral"),
    Prediction("M4c", "M4N", "align", "erm", "test", "neutral"),
)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC with midranks (ties count one half); NaN with a single class."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def target_rows(predictions: pd.DataFrame, modality: str, domain: str) -> pd.DataFrame:
    """Labelled test rows of one domain of one modality (the source's own test split for a source domain)."""
    rows = predictions[(predictions["modality"] == modality) & (predictions["domain"] == domain)]
    return rows[rows["label"].notna() & (rows["label"] >= 0)]


def source_auroc(predictions: pd.DataFrame, modality: str) -> float:
    """Mean over the source domains of one modality of their test-split AUROC (in-distribution)."""
    rows = predictions[(predictions["modality"] == modality) & (predictions["role"] == "source")]
    rows = rows[rows["label"].notna() & (rows["label"] >= 0)]
    values = [auroc(g["label"].to_numpy(), g["score"].to_numpy()) for _, g in rows.groupby("domain")]
    return float(np.nanmean(values)) if values else float("nan")


def paired(base: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """The rows both runs scored, aligned by sample (label, patient, base score, other score)."""
    joined = base[["sample_id", "patient_id", "label", "score"]].merge(
        other[["sample_id", "score"]], on="sample_id", suffixes=("_base", "_other"), validate="one_to_one"
    )
    return joined


def replicate_delta(pairs: list[pd.DataFrame]) -> float:
    """Δ AUROC (other − base), averaged over the modalities' aligned rows of one replicate."""
    return float(np.mean([auroc(p["label"], p["score_other"]) - auroc(p["label"], p["score_base"]) for p in pairs]))


def two_stage_bootstrap(replicates: list[list[pd.DataFrame]], n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the mean Δ: draw replicates with replacement, then patients within each
    drawn replicate (per modality, a patient's images together); Δ recomputed on the drawn patients."""
    rng = np.random.default_rng(seed)
    prepared = []
    for pairs in replicates:
        per_modality = []
        for p in pairs:
            codes, patients = pd.factorize(p["patient_id"])
            members = [np.flatnonzero(codes == k) for k in range(len(patients))]
            per_modality.append((p["label"].to_numpy(), p["score_base"].to_numpy(), p["score_other"].to_numpy(),
                                 members))  # fmt: skip
        prepared.append(per_modality)
    out = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, len(prepared), size=len(prepared))
        deltas = []
        for r in drawn:
            values = []
            for labels, base, other, members in prepared[r]:
                idx = np.concatenate([members[i] for i in rng.integers(0, len(members), size=len(members))])
                values.append(auroc(labels[idx], other[idx]) - auroc(labels[idx], base[idx]))
            deltas.append(np.nanmean(values))
        out[b] = np.nanmean(deltas)
    return out


def t_interval(deltas: np.ndarray, level: float) -> tuple[float, float]:
    n = len(deltas)
    if n < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * deltas.std(ddof=1) / np.sqrt(n)
    return float(deltas.mean() - half), float(deltas.mean() + half)


def p_values(deltas: np.ndarray) -> dict[str, float]:
    """One-sided paired t-test p-values for "helps" (Δ > 0) and "harms" (Δ < 0), and the TOST p for "neutral"."""
    n = len(deltas)
    if n < 2 or deltas.std(ddof=1) == 0:
        return {"helps": float("nan"), "harms": float("nan"), "neutral": float("nan")}
    se = deltas.std(ddof=1) / np.sqrt(n)
    mean, df = deltas.mean(), n - 1
    tost = max(1 - stats.t.cdf((mean + SESOI) / se, df), stats.t.cdf((mean - SESOI) / se, df))
    return {"helps": float(1 - stats.t.cdf(mean / se, df)), "harms": float(stats.t.cdf(mean / se, df)),
            "neutral": float(tost)}  # fmt: skip


def holm(p: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN stays NaN and is not counted)."""
    values = np.asarray(p, dtype=float)
    valid = np.flatnonzero(~np.isnan(values))
    order = valid[np.argsort(values[valid])]
    adjusted = np.full(len(values), np.nan)
    running, m = 0.0, len(valid)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def verdict(mean: float, adjusted: dict[str, float], t90: tuple[float, float], boot95: tuple[float, float],
            boot90: tuple[float, float]) -> str:  # fmt: skip
    """The pre-registered verdict from the (family-adjusted) p-values, checked against the bootstrap."""
    if adjusted["helps"] < 0.05 and mean >= SESOI:
        return "helps" if boot95[0] > 0 else "inconclusive"
    if adjusted["harms"] < 0.05 and mean <= -SESOI:
        return "harms" if boot95[1] < 0 else "inconclusive"
    if adjusted["neutral"] < 0.05 and t90[0] > -SESOI and t90[1] < SESOI:
        return "neutral" if boot90[0] > -SESOI and boot90[1] < SESOI else "inconclusive"
    return "inconclusive"


def outcome(predicted: str, found: str) -> str:
    if found == "inconclusive":
        return "open"
    return "confirmed" if found == predicted else "refuted"


def scorecard(deltas: dict[str, np.ndarray], boots: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per pre-registered prediction that has results: Δ, intervals, adjusted p, verdict, outcome.

    Holm runs over the predictions' own tests (the predicted direction, or TOST for "neutral"); the tests of the
    other verdicts are Bonferroni-adjusted over the same family (conservative)."""
    rows = [p for p in PREDICTIONS if p.id in deltas]
    raw = {p.id: p_values(deltas[p.id]) for p in rows}
    own = holm([raw[p.id][p.predicted] for p in rows])
    out = []
    for p, own_adjusted in zip(rows, own, strict=True):
        adjusted = {k: min(1.0, v * len(rows)) for k, v in raw[p.id].items()}
        adjusted[p.predicted] = own_adjusted
        d, b = deltas[p.id], boots[p.id]
        t95, t90 = t_interval(d, 0.95), t_interval(d, 0.90)
        b95 = (float(np.nanquantile(b, 0.025)), float(np.nanquantile(b, 0.975)))
        b90 = (float(np.nanquantile(b, 0.05)), float(np.nanquantile(b, 0.95)))
        found = verdict(float(d.mean()), adjusted, t90, b95, b90)
        out.append({"id": p.id, "scenario": p.scenario, "comparison": f"{p.arm} vs {p.baseline}", "target": p.target,
                    "replicates": len(d), "predicted": p.predicted, "delta": float(d.mean()), "t95_low": t95[0],
                    "t95_high": t95[1], "boot95_low": b95[0], "boot95_high": b95[1],
                    "p_adjusted": adjusted[p.predicted], "verdict": found,
                    "outcome": outcome(p.predicted, found)})  # fmt: skip
    return pd.DataFrame(out)


def read_predictions(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    frame["label"] = pd.to_numeric(frame["label"], errors="coerce")
    return frame
