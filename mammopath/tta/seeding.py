"""The seeded generators of test-time adaptation: every draw reproducible from its key, whatever came before.

A key is (seed, purpose, domain, position of the batch in its domain's stream[, sample]): the domain enters as
``zlib.crc32`` of its name, so two hospitals get decorrelated draws while a domain's draws stay independent of
the domains before it; a per-image draw adds the sample (``crc32`` of its ``sample_id``, else its index in the
batch), so an image's draws never depend on its batch-mates.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch


def seeded_generator(seed: int, purpose: int, domain: str, position: int, sample: int | None = None) -> torch.Generator:
    """A CPU generator seeded by the key (seed, purpose, crc32(domain), position[, sample])."""
    key = [seed, purpose, zlib.crc32(domain.encode()), position]
    state = np.random.SeedSequence(key if sample is None else [*key, sample]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def sample_keys(batch: dict[str, Any]) -> list[int]:
    """Each image's key: ``crc32`` of its ``sample_id`` where the batch has them, else its index in the batch."""
    ids = batch.get("sample_id")
    if ids is None:
        return list(range(len(batch["image"])))
    return [zlib.crc32(str(i).encode()) for i in ids]
