"""`ResumableLoader` inside Lightning's ``max_size_cycle`` CombinedLoader: a resume at any step equals no resume.

The shorter modality's loader cycles within an epoch (its second pass starts before the longer loader's first
ends), so its position to resume at is the completed batches modulo its length, not the completed batches.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import Dataset

from mammopath.datamodules.resumable import ResumableLoader
from mammopath.datamodules.samplers import EpochSampler

BATCH = 2
LONG, SHORT = 14, 6  # 7 and 3 batches per pass: the short loader is in its 2nd pass from step 3, 3rd from step 6


class Augmented(Dataset):
    """Index plus one augmentation draw from the dataset's own generator (the datasets' contract)."""

    def __init__(self, size: int, offset: int) -> None:
        self.size, self.offset = size, offset
        self.generator = torch.Generator().manual_seed(offset)

    def augment_generator(self) -> torch.Generator:
        return self.generator

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": self.offset + i, "draw": torch.rand((), generator=self.generator)}


def _combined(progress: list[int]) -> CombinedLoader:
    loaders = {}
    for name, size, offset in (("mammo", LONG, 0), ("patho", SHORT, 100)):
        loader = ResumableLoader(Augmented(size, offset), batch_size=BATCH, sampler=EpochSampler(size, seed=3))
        loader.progress = lambda: progress[0]  # batches whose training step ran (the datamodule's contract)
        loader.epoch_length = lambda: float(LONG // BATCH)
        loaders[name] = loader
    return CombinedLoader(loaders, "max_size_cycle")


def _flat(batch: Any) -> list[tuple[str, int, float]]:
    data = batch[0] if isinstance(batch, tuple) else batch
    return [
        (m, int(i), round(float(d), 7))
        for m in sorted(data)
        for i, d in zip(data[m]["index"], data[m]["draw"], strict=True)
    ]


def _epoch(combined: CombinedLoader) -> list[list[tuple[str, int, float]]]:
    return [_flat(b) for b in combined]


@pytest.mark.parametrize("stop", range(1, LONG // BATCH))
def test_a_resume_at_any_step_equals_the_uninterrupted_epoch(stop: int) -> None:
    progress = [0]
    reference = _epoch(_combined(progress))
    assert len(reference) == LONG // BATCH
    # the short loader really cycles: its samples repeat inside the epoch
    patho = [i for batch in reference for (m, i, _) in batch if m == "patho"]
    assert len(patho) == 2 * len(set(patho)) + BATCH and len(set(patho)) == SHORT
    # interrupted: `stop` steps ran, Lightning had fetched one batch ahead, then the checkpoint was taken
    progress = [0]
    first = _combined(progress)
    iterator = iter(first)
    seen = []
    for _ in range(stop + 1):
        seen.append(_flat(next(iterator)))
    progress[0] = stop
    states = first._state_dicts()
    # resumed in a fresh process: new loaders, the saved states, the rest of the same epoch (Lightning's epoch
    # loop stops at num_training_batches, counted on from the restored progress)
    resumed = _combined([stop])
    resumed._load_state_dicts(states)
    rest = _epoch(resumed)[: LONG // BATCH - stop]
    assert seen[:stop] + rest == reference
