"""`BenchmarkDataModule`: one public benchmark from its release folder as downloaded.

``root`` is the release as downloaded (the folder ``mammopath synth`` also writes). ``prepare_data``
builds the manifest with the benchmark's builder (``mammopath.datasets.<name>.prepare``), tiles slides
into patches where the benchmark needs it, validates the result and caches it outside the release
(:mod:`mammopath.datamodules.cache`): a second run reuses it, a changed release or parameter rebuilds
it. A ready manifest can be given instead (``manifest:``). Everything else (LODO split, loaders) is
:class:`~mammopath.datamodules.lodo.LodoDataModule`'s.

Per-benchmark knowledge lives in the subclasses: the builder name, the modality, the official folder
name, the grade schemes, the input normalization, the patch size and resolution of slide benchmarks,
and (in their docstrings) what a domain is and where the official split comes from.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from mammopath.datamodules.cache import ManifestCache, cache_key, release_fingerprint
from mammopath.datamodules.lodo import DEFAULT_NORMALIZATION, LodoDataModule, Source
from mammopath.errors import ConfigError, DataFormatError
from mammopath.manifest import validate_manifest

log = logging.getLogger(__name__)


class BenchmarkDataModule(LodoDataModule):
    """A single public benchmark as a datamodule (use a subclass, e.g. ``CBISDDSMDataModule``).

    Args:
        root: the release folder as downloaded (default: its official folder name, relative to the
            composing datamodule's ``data_root`` or the working directory). Never written to.
        manifest: a ready manifest to use instead of building one (paths relative to ``root``).
        metadata: folder holding the metadata files when they are not inside the release.
        cache_dir: where built manifests are cached (default ``$MAMMOPATH_CACHE`` or ``~/.cache/mammopath``).
        **kwargs: the :class:`~mammopath.datamodules.lodo.LodoDataModule` arguments (``holdout_domains``,
            ``image_size``, ``batch_size``...); ``modalities`` is fixed by the benchmark.
    """

    #: ``mammopath prepare`` name of the builder.
    benchmark: ClassVar[str] = ""
    #: The modality of every row.
    modality: ClassVar[str] = "mammo"
    #: Folder name of the release as downloaded (the default ``root``).
    release_folder: ClassVar[str] = "."
    #: Top-level entries of ``root`` that belong to the release (glob patterns): only these enter the cache key.
    release_entries: ClassVar[tuple[str, ...]] = ("*",)
    #: Grade schemes the builder writes (the model's grading head is sized from them before any build).
    benchmark_grade_schemes: ClassVar[tuple[str, ...]] = ()
    #: Input normalization of the benchmark's modality.
    benchmark_normalization: ClassVar[dict[str, dict[str, list[float]]]] = DEFAULT_NORMALIZATION

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        metadata: str | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("modalities", None)
        if self.modality == "patho":
            kwargs.setdefault("canonical_side", None)
        super().__init__(modalities=[self.modality], **kwargs)
        self.release_root = Path(root if root is not None else self.release_folder)
        self.ready_manifest = Path(manifest) if manifest else None
        self.metadata = metadata
        self.cache = ManifestCache(cache_dir, self.benchmark)
        self._fingerprint: str | None = None

    # -- what the cache key depends on -----------------------------------------------------------
    def build_params(self) -> dict[str, Any]:
        """Parameters that change the built manifest (subclasses add theirs)."""
        return {"metadata": str(Path(self.metadata).resolve()) if self.metadata else None}

    def _release_paths(self) -> list[Path]:
        root = self.release_root
        if not root.is_dir():
            raise DataFormatError(root, f"{self.benchmark} release folder not found (set data.root or data.data_root)")
        entries = sorted(p for p in root.iterdir() if any(fnmatch.fnmatch(p.name, g) for g in self.release_entries))
        return entries or [root]

    def fingerprint(self) -> str:
        """Hash of the release's files (listing + metadata content), computed once per process."""
        if self._fingerprint is None:
            parts = []
            for path in self._release_paths():
                parts.append(path.name + ":" + (release_fingerprint(path) if path.is_dir() else _file_print(path)))
            self._fingerprint = "|".join(parts)
        return self._fingerprint

    def key(self) -> str:
        """The cache entry of this release and these parameters."""
        return cache_key(self.benchmark, self.fingerprint(), self.build_params())

    # -- building --------------------------------------------------------------------------------
    def build_manifest(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Run the builder on the release (and the subclass's post-processing); returns (manifest, info)."""
        from mammopath.datasets import builder

        root = self.release_root
        result = builder(self.benchmark).prepare(root, metadata=self.metadata)
        manifest = validate_manifest(result.manifest, root, source=f"{self.benchmark} builder on {root}")
        manifest, notes = self.postprocess(manifest)
        notes = list(result.notes) + notes
        for note in notes:
            log.info("%s: %s", self.benchmark, note)
        if len(result.dropped):
            log.warning("%s: %d item(s) dropped while building the manifest", self.benchmark, len(result.dropped))
        info = {
            "benchmark": self.benchmark,
            "release": str(root),
            "params": self.build_params(),
            "rows": len(manifest),
            "dropped": result.dropped.to_dict("records"),
            "notes": notes,
        }
        return manifest, info

    def postprocess(self, manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        """Turn the builder's manifest into the training manifest (slide benchmarks tile here)."""
        return manifest, []

    def prepare_data(self) -> None:
        """Build and cache the manifest unless a ready one is given or the cache already has it."""
        if self.ready_manifest is not None:
            return
        key = self.key()
        if self.cache.get(key) is not None:
            log.info("%s: reusing the cached manifest %s", self.benchmark, self.cache.get(key))
            return
        self.cache.build(key, self.build_manifest, release=self.release_root)

    @property
    def manifest_file(self) -> Path:
        """The manifest this datamodule reads: the ready one, else the cache entry (built now if missing)."""
        if self.ready_manifest is not None:
            return self.ready_manifest
        path = self.cache.get(self.key())
        if path is None:  # prepare_data was not called (direct use): build here
            self.prepare_data()
            path = self.cache.get(self.key())
            if path is None:  # pragma: no cover - build always writes the entry
                raise ConfigError(f"{self.benchmark}: the manifest cache entry was not written")
        return path

    # -- composition -----------------------------------------------------------------------------
    def rebase(self, data_root: Path) -> None:
        if not self.release_root.is_absolute():
            self.release_root = data_root / self.release_root
        self._fingerprint = None
        super().rebase(data_root)

    def own_sources(self) -> list[Source]:
        return [Source(f"{type(self).__name__}({self.release_root})", self.manifest_file, self.release_root)]

    def declared_grade_schemes(self) -> set[str]:
        return set(self.benchmark_grade_schemes)

    def own_normalization(self) -> list[tuple[str, str, dict[str, dict[str, list[float]]]]]:
        stats = self.benchmark_normalization[self.modality]
        return [(type(self).__name__, self.modality, {self.modality: {"mean": stats["mean"], "std": stats["std"]}})]


def _file_print(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.stat().st_size < 2**28 else str(path.stat().st_size)


class SlideBenchmarkDataModule(BenchmarkDataModule):
    """A benchmark of whole-slide images, tiled into patches when its manifest is built.

    Args:
        patch_size: patch side in pixels as read from the slide.
        mpp: patch resolution in µm/px (the slide level is chosen from it).
        min_tissue: minimum tissue fraction (Otsu) of a kept patch.
        **kwargs: the :class:`BenchmarkDataModule` arguments.
    """

    def __init__(
        self,
        root: str | None = None,
        patch_size: int = 224,
        mpp: float = 0.5,
        min_tissue: float = 0.5,
        **kwargs: Any,
    ) -> None:
        if patch_size <= 0 or mpp <= 0 or not 0 <= min_tissue <= 1:
            raise ConfigError(f"need patch_size > 0, mpp > 0, 0 <= min_tissue <= 1 ({patch_size}, {mpp}, {min_tissue})")
        super().__init__(root=root, **kwargs)
        self.patch_size, self.mpp, self.min_tissue = patch_size, mpp, min_tissue

    def build_params(self) -> dict[str, Any]:
        return {**super().build_params(), "patch_size": self.patch_size, "mpp": self.mpp, "min_tissue": self.min_tissue}

    def slide_rows(self, manifest: pd.DataFrame) -> pd.Series:
        """Rows to tile (default: every row without patch coordinates)."""
        return manifest["x"].isna()

    def postprocess(self, manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        from mammopath.datasets.tiling import tile_manifest

        slides = self.slide_rows(manifest)
        if not slides.any():
            return manifest, []
        try:
            result = tile_manifest(
                manifest[slides], self.release_root, size=self.patch_size, mpp=self.mpp, min_tissue=self.min_tissue
            )
        except ConfigError as exc:  # name the datamodule's own keys
            raise ConfigError(
                f"{self.benchmark} release {self.release_root}: {exc} (data.init_args.patch_size / mpp / min_tissue)"
            ) from exc
        notes = []
        if len(result.dropped):
            notes.append(f"{len(result.dropped)} slide(s) gave no patch: {', '.join(result.dropped['item'][:5])}")
        patches = validate_manifest(result.manifest, self.release_root, source=f"{self.benchmark} tiling")
        kept = manifest[~slides]
        combined = pd.concat([kept, patches], ignore_index=True) if len(kept) else patches
        n_slides = int(slides.sum())
        notes.append(
            f"tiled {n_slides} slide(s) into {len(patches)} patches of {self.patch_size} px at {self.mpp} µm/px"
        )
        return combined, notes
