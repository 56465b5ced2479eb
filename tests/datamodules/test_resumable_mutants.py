"""`ResumableLoader` behaviours that `make mutation` found unpinned (docs/mutation.md)."""

from __future__ import annotations

from mammopath.datamodules.resumable import _SkipFirst


def test_the_skip_applies_to_the_first_iteration_only() -> None:
    """A DataLoader iterator kept across epochs (persistent workers) iterates its index sampler again."""
    skipping = _SkipFirst(range(6), 4)
    assert len(skipping) == 6
    assert list(skipping) == [4, 5]
    assert list(skipping) == [0, 1, 2, 3, 4, 5]
    assert list(skipping) == [0, 1, 2, 3, 4, 5]
