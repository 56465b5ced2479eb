"""`SkippedSamples` without a fit: what it records, where, what it logs and when it stops the run.

The end-to-end tests (tests/datamodules/test_bad_samples.py) drive it through a real fit on the synthetic
benchmark; these pin each rule down on hand-written reports, fast enough for `make mutation` (docs/mutation.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from mammopath.datamodules.bad_samples import COLUMNS, SkippedSamples
from mammopath.errors import DataFormatError


class Logger:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append((metrics, step))


def _trainer(root: Path, stage: str = "train", rank: int = 0, epoch: int = 3, step: int = 17) -> SimpleNamespace:
    return SimpleNamespace(
        default_root_dir=str(root),
        global_rank=rank,
        current_epoch=epoch,
        global_step=step,
        state=SimpleNamespace(stage=SimpleNamespace(value=stage)),
        loggers=[Logger(), Logger()],
    )


def _report(sample_id: str, modality: str = "mammo", domain: str = "site_a") -> dict[str, str]:
    return {"sample_id": sample_id, "modality": modality, "domain": domain, "file": f"{sample_id}.dcm", "reason": "bad"}


def _batch(*reports: list[dict[str, str]]) -> dict[str, Any]:
    """One modality's collated batch: the ``skipped`` field is one JSON string per sample ("" = none)."""
    return {"label": [0] * len(reports), "skipped": [json.dumps(r) if r else "" for r in reports]}


def test_every_report_becomes_one_row_with_the_stage_epoch_and_step(tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=1.0)
    trainer = _trainer(tmp_path, stage="train", epoch=3, step=17)
    batch = _batch([_report("a")], [], [_report("b"), _report("c", domain="site_b")])
    returned = skipped.record(batch, trainer, {"train": 100})
    assert returned is batch and "skipped" not in batch and batch["label"] == [0, 0, 0]
    frame = pd.read_csv(tmp_path / "skipped.csv", keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    assert frame.to_dict("records") == [
        {"stage": "train", "epoch": 3, "step": 17, "sample_id": "a", "modality": "mammo", "domain": "site_a",
         "file": "a.dcm", "reason": "bad"},
        {"stage": "train", "epoch": 3, "step": 17, "sample_id": "b", "modality": "mammo", "domain": "site_a",
         "file": "b.dcm", "reason": "bad"},
        {"stage": "train", "epoch": 3, "step": 17, "sample_id": "c", "modality": "mammo", "domain": "site_b",
         "file": "c.dcm", "reason": "bad"},
    ]  # fmt: skip
    for logger in trainer.loggers:
        assert logger.calls == [({"data/skipped": 3.0}, 17)]


def test_a_training_batch_of_both_modalities_is_read_per_modality(tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=1.0)
    batch = {"mammo": _batch([_report("m1")]), "patho": _batch([], [_report("p1", modality="patho")])}
    assert skipped.record(batch, _trainer(tmp_path), {"train": 10}) is batch
    assert "skipped" not in batch["mammo"] and "skipped" not in batch["patho"]
    assert [r["sample_id"] for r in skipped.rows] == ["m1", "p1"]


def test_nothing_is_written_or_logged_for_a_batch_without_reports(tmp_path: Path) -> None:
    skipped = SkippedSamples()
    trainer = _trainer(tmp_path)
    batch = _batch([], [])
    assert skipped.record(batch, trainer, {"train": 2}) is batch and "skipped" not in batch
    assert not (tmp_path / "skipped.csv").exists() and skipped.rows == []
    assert all(logger.calls == [] for logger in trainer.loggers)
    # no trainer (a dataloader iterated by hand): the reports are taken out, nothing is recorded
    batch = _batch([_report("a")])
    assert skipped.record(batch, None, {"train": 2}) is batch and "skipped" not in batch and skipped.rows == []


def test_rows_accumulate_across_batches_and_the_csv_is_rewritten_whole(tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=1.0)
    trainer = _trainer(tmp_path, step=1)
    skipped.record(_batch([_report("a")]), trainer, {"train": 10})
    trainer.global_step = 2
    skipped.record(_batch([_report("a")], [_report("b")]), trainer, {"train": 10})
    frame = pd.read_csv(tmp_path / "skipped.csv")
    assert frame["sample_id"].tolist() == ["a", "a", "b"] and frame["step"].tolist() == [1, 2, 2]
    assert trainer.loggers[0].calls[-1] == ({"data/skipped": 3.0}, 2)  # every skip counts, repeats included
    assert skipped.distinct == {"train": {("mammo", "a"), ("mammo", "b")}}  # the stop rule counts distinct samples


@pytest.mark.parametrize(("stage", "split"), [("train", "train"), ("sanity_check", "val"), ("validate", "val"),
                                              ("test", "test"), ("predict", "predict")])  # fmt: skip
def test_the_stage_decides_the_split_whose_size_the_fraction_is_of(tmp_path: Path, stage: str, split: str) -> None:
    skipped = SkippedSamples(max_bad_fraction=0.5)
    sizes = {"train": 1000, "val": 1000, "test": 1000, "predict": 1000, split: 2}
    with pytest.raises(DataFormatError):  # 2 of the split's 2 rows: above 0.5 only with the right split's size
        skipped.record(_batch([_report("a")], [_report("b")]), _trainer(tmp_path, stage=stage), sizes)
    assert skipped.distinct == {split: {("mammo", "a"), ("mammo", "b")}}
    assert pd.read_csv(tmp_path / "skipped.csv")["stage"].tolist() == [stage, stage]


def test_the_run_stops_only_above_the_bad_fraction_of_distinct_samples(tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=0.25)
    trainer = _trainer(tmp_path)
    skipped.record(_batch([_report("a")]), trainer, {"train": 8})  # 1/8
    skipped.record(_batch([_report("a")], [_report("a")]), trainer, {"train": 8})  # still 1 distinct
    skipped.record(_batch([_report("b")]), trainer, {"train": 8})  # 2/8 = 0.25: not above
    skipped.record(_batch([_report("b", modality="patho")]), trainer, {"train": 0})  # unknown split size: no stop
    with pytest.raises(DataFormatError) as raised:
        skipped.record(_batch([_report("c")]), trainer, {"train": 8})  # 4 distinct (b twice: two modalities)
    assert raised.value.path == tmp_path / "skipped.csv"
    assert "4 of 8 train samples are unreadable" in raised.value.problem
    assert "data.max_bad_fraction=0.25" in raised.value.problem
    assert "check the data root" in raised.value.problem  # and how to fix it (CONVENTIONS: errors say how)
    assert raised.value.problem.endswith("run `mammopath validate-manifest --decode`)")
    assert len(pd.read_csv(tmp_path / "skipped.csv")) == 6  # the CSV is written before the run stops


def test_other_ranks_write_their_own_file(tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=1.0)
    skipped.record(_batch([_report("a")]), _trainer(tmp_path, rank=2), {"train": 10})
    assert (tmp_path / "skipped.rank2.csv").exists() and not (tmp_path / "skipped.csv").exists()
    trainer = _trainer(tmp_path / "nested" / "run", rank=0)
    assert skipped.path(trainer) == tmp_path / "nested" / "run" / "skipped.csv"
    skipped.record(_batch([_report("b")]), trainer, {"train": 10})  # the run folder is created
    assert (tmp_path / "nested" / "run" / "skipped.csv").exists()


@pytest.mark.parametrize("fraction", [-0.01, 1.01])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="max_bad_fraction"):
        SkippedSamples(max_bad_fraction=fraction)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_the_bounds_are_allowed(fraction: float, tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=fraction)
    assert skipped.max_bad_fraction == fraction
    if fraction == 0.0:  # a single bad sample stops the run
        with pytest.raises(DataFormatError):
            skipped.record(_batch([_report("a")]), _trainer(tmp_path), {"train": 1000})


def test_the_default_fraction_is_five_percent(tmp_path: Path) -> None:
    skipped = SkippedSamples()
    trainer = _trainer(tmp_path)
    skipped.record(_batch(*[[_report(f"s{i}")] for i in range(5)]), trainer, {"train": 100})  # 5 %: not above
    with pytest.raises(DataFormatError):
        skipped.record(_batch([_report("s5")]), trainer, {"train": 100})


def test_a_trainer_without_ranks_writes_the_main_file(tmp_path: Path) -> None:
    """A trainer-like object without ``global_rank`` (a loop driven by hand) is rank 0."""
    trainer = _trainer(tmp_path)
    del trainer.global_rank
    skipped = SkippedSamples(max_bad_fraction=1.0)
    assert skipped.path(trainer) == tmp_path / "skipped.csv"
    trainer.global_rank = None  # Lightning before the strategy is set up
    assert skipped.path(trainer) == tmp_path / "skipped.csv"


def test_batches_without_reports_pass_untouched(tmp_path: Path) -> None:
    """``on_bad_sample: raise`` batches carry no ``skipped`` field; a training batch may have it in one modality."""
    import torch

    skipped = SkippedSamples(max_bad_fraction=1.0)
    plain = {"image": torch.zeros(2, 1, 4, 4), "label": torch.tensor([0, 1]), "meta": {"a": 1}, "modality": "mammo"}
    assert skipped.record(plain, _trainer(tmp_path), {"train": 10}) is plain and set(plain) == {
        "image", "label", "meta", "modality"
    }  # fmt: skip
    both = {"mammo": {"label": torch.tensor([0])}, "patho": _batch([_report("p", modality="patho")])}
    assert skipped.record(both, _trainer(tmp_path), {"train": 10}) is both
    assert both["mammo"] == {"label": torch.tensor([0])} and "skipped" not in both["patho"]
    assert [r["sample_id"] for r in skipped.rows] == ["p"]


@pytest.mark.parametrize(("state", "stage"), [
    (SimpleNamespace(stage="validate"), "validate"),  # a plain string stage (no enum .value)
    (SimpleNamespace(stage=None), ""),  # no stage running
    (None, ""),  # a trainer-like object without a state
])  # fmt: skip
def test_the_stage_is_read_from_strings_and_missing_states(tmp_path: Path, state: Any, stage: str) -> None:
    trainer = _trainer(tmp_path)
    if state is None:
        del trainer.state
    else:
        trainer.state = state
    skipped = SkippedSamples(max_bad_fraction=1.0)
    skipped.record(_batch([_report("a")]), trainer, {"val": 10, "": 10})
    assert pd.read_csv(tmp_path / "skipped.csv", keep_default_na=False)["stage"].tolist() == [stage]
    assert set(skipped.distinct) == {"val" if stage else ""}


def test_a_report_without_some_fields_leaves_their_cells_empty(tmp_path: Path) -> None:
    skipped = SkippedSamples(max_bad_fraction=1.0)
    report = {"sample_id": "a", "modality": "mammo", "file": "a.dcm", "reason": "bad"}  # no domain
    skipped.record(_batch([report]), _trainer(tmp_path), {"train": 10})
    row = pd.read_csv(tmp_path / "skipped.csv", keep_default_na=False).iloc[0]
    assert row["domain"] == "" and row["sample_id"] == "a"


def test_a_split_of_unknown_size_never_stops_the_run_and_loggers_are_optional(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, stage="predict")
    del trainer.loggers
    skipped = SkippedSamples(max_bad_fraction=0.0)  # any bad sample of a known split would stop the run
    skipped.record(_batch([_report("a")], [_report("b")]), trainer, {"train": 10})  # no size for predict
    assert len(pd.read_csv(tmp_path / "skipped.csv")) == 2
