"""The manifest cache of the benchmark datamodules.

A benchmark datamodule builds its manifest (and, for slide benchmarks, the tiled patch table) from the
release folder as downloaded, once, and keeps it under a cache folder **outside the release** (which may
be read-only and is never written to). The cache entry is keyed by

- the benchmark and the cache format version,
- a fingerprint of the release: every file's relative path and size, plus the content of its metadata
  files (CSV, spreadsheets, XML, JSON, text),
- the parameters that change the result (metadata folder, patch size, µm/px, tissue threshold...).

A second run with the same key reuses the entry without calling the builder; a changed parameter or a
changed release gives another key, hence a rebuild. Entries are written atomically (temporary folder,
then rename), so an interrupted build never leaves a half entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mammopath.errors import DataFormatError
from mammopath.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

#: Bump when what a builder writes changes, so that old cache entries are not reused.
CACHE_VERSION = 1
#: Suffixes of files whose *content* enters the fingerprint (the rest enter by name and size).
METADATA_SUFFIXES = (".csv", ".tsv", ".xls", ".xlsx", ".xml", ".json", ".txt", ".plist")
MAX_HASHED_BYTES = 256 * 2**20  # metadata files larger than this enter by name and size only
MANIFEST_FILE = "manifest.csv"
INFO_FILE = "info.json"


def default_cache_dir() -> Path:
    """``$MAMMOPATH_CACHE``, else ``~/.cache/mammopath``."""
    return Path(os.environ.get("MAMMOPATH_CACHE") or Path.home() / ".cache" / "mammopath")


def release_fingerprint(root: str | Path) -> str:
    """A hash of the release's file listing (path, size) and of its metadata files' content."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "release folder not found (check data.root / data.data_root)")
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            try:
                size = path.stat().st_size
            except OSError as exc:  # a dangling link: part of the listing, with its problem
                digest.update(f"{rel}\0missing:{type(exc).__name__}\n".encode())
                continue
            digest.update(f"{rel}\0{size}\n".encode())
            if path.suffix.lower() in METADATA_SUFFIXES and size <= MAX_HASHED_BYTES:
                with path.open("rb") as handle:
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def cache_key(benchmark: str, fingerprint: str, params: Mapping[str, Any]) -> str:
    """The entry name of one (benchmark, release, parameters) combination."""
    payload = json.dumps(
        {"benchmark": benchmark, "version": CACHE_VERSION, "release": fingerprint, "params": dict(params)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class ManifestCache:
    """One benchmark's cache folder: ``<cache_dir>/<benchmark>/<key>/manifest.csv`` (+ ``info.json``).

    Args:
        cache_dir: the cache root (default :func:`default_cache_dir`).
        benchmark: the benchmark name (its folder in the cache).
    """

    def __init__(self, cache_dir: str | Path | None, benchmark: str) -> None:
        self.root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.benchmark = benchmark

    def entry(self, key: str) -> Path:
        """The folder of one cache entry."""
        return self.root / self.benchmark / key

    def get(self, key: str) -> Path | None:
        """The manifest of an existing entry, or None."""
        manifest = self.entry(key) / MANIFEST_FILE
        return manifest if manifest.is_file() else None

    def build(self, key: str, build: Callable[[], tuple[pd.DataFrame, dict[str, Any]]], *, release: Path) -> Path:
        """Run ``build() -> (manifest, info)`` and store its result atomically; returns the manifest path.

        Refuses a cache folder inside the release, which must stay untouched.
        """
        target = self.entry(key)
        resolved, release_resolved = target.resolve(), release.resolve()
        if resolved == release_resolved or release_resolved in resolved.parents:
            raise DataFormatError(
                target, f"the manifest cache must live outside the release {release}; set data.cache_dir elsewhere"
            )
        manifest, info = build()
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_manifest(manifest, tmp / MANIFEST_FILE)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
            if target.exists():  # another process built the same entry meanwhile: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("%s: manifest cached in %s (%d rows)", self.benchmark, target, len(manifest))
        return target / MANIFEST_FILE

    @staticmethod
    def read(path: Path) -> pd.DataFrame:
        """Read a cached manifest."""
        return read_manifest(path)
