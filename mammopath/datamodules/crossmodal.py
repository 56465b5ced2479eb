"""`CrossModalDataModule`: mammography ⨯ pathology data composed from manifests and benchmark datamodules.

Data comes from *sources*, composed per modality:

- plain manifests (``manifest:``, each with its ``root:``), e.g. institutional data you wrote yourself;
- datamodules listed under ``mammo:`` and ``patho:`` (``class_path: CBISDDSMDataModule`` ...), each of
  which builds and caches its manifest from the release as downloaded (``prepare_data``). A child
  contributes only its data (manifest, root, grade schemes, normalization); loaders, image size and
  the LODO split are the composing datamodule's (:class:`~mammopath.datamodules.lodo.LodoDataModule`).
  Relative child roots are resolved against ``data_root``.

The held-out domains are validated across the whole composition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammopath.datamodules.lodo import DEFAULT_NORMALIZATION, LodoDataModule, Source
from mammopath.errors import ConfigError
from mammopath.io.location import Location, as_location, is_url
from mammopath.manifest import read_manifest


class CrossModalDataModule(LodoDataModule):
    """Cross-modal LODO data composed from manifests and datamodules.

    Args:
        manifest: manifest CSV/Parquet (docs/datasets.md), or a list of manifests to compose; sample ids must be
            unique across every source.
        root: data root the paths are relative to (default: each manifest's folder); with several manifests,
            one root per manifest.
        mammo: datamodules (benchmark ones, or others) whose mammography rows join the composition.
        patho: datamodules whose pathology rows join the composition.
        data_root: folder that relative roots (of the children, and of ``manifest``/``root``) are resolved against.
        **kwargs: the :class:`~mammopath.datamodules.lodo.LodoDataModule` arguments (``holdout_domains``,
            ``image_size``, ``batch_size``, ...).
    """

    def __init__(
        self,
        manifest: str | list[str] | None = None,
        root: str | list[str] | None = None,
        mammo: list[LodoDataModule] | None = None,
        patho: list[LodoDataModule] | None = None,
        data_root: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        paths = [Path(m) for m in ([manifest] if isinstance(manifest, str) else (manifest or []))]
        roots: list[str | None]
        if isinstance(root, str):
            roots = [root]
        elif root:
            roots = list(root)
        else:
            roots = [None] * len(paths)
        if len(roots) != len(paths):
            raise ConfigError(
                f"data.root has {len(roots)} entries for {len(paths)} manifests: give one root per manifest"
            )
        self.manifest_paths = paths
        self.roots: list[Location] = [as_location(r) if r else p.parent for r, p in zip(roots, paths, strict=True)]
        self.children = {"mammo": list(mammo or []), "patho": list(patho or [])}
        self.data_root = Path(data_root) if data_root else None
        if self.data_root is not None:
            self.rebase(self.data_root)

    def rebase(self, data_root: Path) -> None:
        self.roots = [r if is_url(r) or Path(r).is_absolute() else data_root / r for r in self.roots]
        self.manifest_paths = [p if p.is_absolute() else data_root / p for p in self.manifest_paths]
        super().rebase(data_root)

    def own_sources(self) -> list[Source]:
        return [Source(str(p), p, r) for p, r in zip(self.manifest_paths, self.roots, strict=True)]

    def declared_grade_schemes(self) -> set[str]:
        schemes = super().declared_grade_schemes()
        for path in self.manifest_paths:
            schemes |= {s for s in read_manifest(path)["grade_scheme"].unique() if s}
        return schemes

    def own_normalization(self) -> list[tuple[str, str, dict[str, dict[str, list[float]]]]]:
        return [("data.manifest", "", DEFAULT_NORMALIZATION)] if self.manifest_paths else []
