"""Datasets: the manifest-backed dataset and one builder module per public benchmark.

``BUILDERS`` maps the ``mammopath prepare <benchmark>`` name to the module that builds its manifest.
Each module exposes ``prepare(root, *, metadata=None, progress=None) -> PrepareResult``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

import pandas as pd

#: ``mammopath prepare`` name → builder module (imported on use).
BUILDERS: dict[str, str] = {
    "cbis-ddsm": "mammopath.datasets.cbis_ddsm",
    "inbreast": "mammopath.datasets.inbreast",
    "bach": "mammopath.datasets.bach",
    "camelyon16": "mammopath.datasets.camelyon16",
    "camelyon17": "mammopath.datasets.camelyon17",
    "folder": "mammopath.datasets.folder",  # your own folder of DICOMs / slides (needs --domain)
}


@dataclass
class PrepareResult:
    """What a builder produced: the manifest rows and every dropped item with its reason."""

    manifest: pd.DataFrame
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["item", "reason"]))
    notes: list[str] = field(default_factory=list)


def builder(name: str) -> ModuleType:
    """The builder module of a benchmark name (see :data:`BUILDERS`)."""
    from mammopath.errors import ConfigError

    if name not in BUILDERS:
        raise ConfigError(f"unknown benchmark '{name}'; choose one of {sorted(BUILDERS)}")
    return importlib.import_module(BUILDERS[name])
