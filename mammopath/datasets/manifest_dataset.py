"""`ManifestDataset`: one manifest row → one sample dict, for either modality.

The dataset holds only plain data (the validated manifest rows and the data root); slide handles
and parsed annotations are opened lazily per process (:class:`~mammopath.io.slide.SlideCache`),
so it pickles cleanly for ``fork`` and ``spawn`` workers.

Sample keys (CONVENTIONS.md): ``image`` (C, H, W) float in [0, 1] (C = 1 for mammograms, 3 for
pathology), ``mask`` (H, W) float, ``has_mask``, ``label`` (-1 = missing), ``grade`` (-1 =
missing), ``grade_scheme``, ``modality``, ``domain``, ``patient_id``, ``sample_id``, ``role``, ``index`` (the
row's ``_index`` in a datamodule's composed manifest, else its position here), ``patient_code`` (an
integer code of the patient, -1 outside a datamodule), ``paired`` (the patient has both modalities),
``meta``; with ``on_bad_sample="skip"`` also ``skipped`` (a JSON list of the unreadable rows this sample
replaced, ``""`` when none).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mammopath.errors import ConfigError, DataFormatError
from mammopath.io.dicom import canonical_laterality, crop_breast, read_mammogram, read_roi_mask
from mammopath.io.location import Location, as_location, display, is_url, join, local_copy
from mammopath.io.slide import SlideCache

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _polygons(path: str, pid: int) -> list[Any]:
    """Parsed annotation polygons of one XML file (cached per process)."""
    from mammopath.io.annotations import read_asap_xml, read_imagescope_xml, read_inbreast_xml

    text = Path(path).read_text(errors="replace")[:4000]
    if "<ASAP_Annotations" in text:
        return read_asap_xml(path)
    if "<plist" in text or "<!DOCTYPE plist" in text:
        return read_inbreast_xml(path)
    if "<Annotations" in text:
        return read_imagescope_xml(path)
    raise DataFormatError(path, "unknown annotation format (expected ASAP, ImageScope or INbreast plist XML)")


def _resize(array: np.ndarray, size: tuple[int, int], mode: str, clamp: bool = False) -> torch.Tensor:
    """(H, W[, C]) array → (C, h, w) float tensor resized with antialiasing (area for masks).

    uint8 input (RGB patches, photos) is scaled to [0, 1] on the way (``x / 255`` in float32, one pass).
    ``clamp`` keeps a resized image in [0, 1] (input of the right size is returned as it is: already in range).
    """
    if not array.flags.writeable:  # e.g. a PIL image's buffer: torch wants memory it may own
        array = np.array(array)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = torch.div(tensor, 255.0) if tensor.dtype == torch.uint8 else tensor.float()
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    if mode == "area":
        return F.interpolate(tensor[None], size=size, mode="area")[0]
    resized = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return resized.clamp_(0.0, 1.0) if clamp else resized


def _int_or(value: Any, default: int = -1) -> int:
    return default if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else int(value)


class ManifestDataset(Dataset):
    """Samples of a validated manifest (see :func:`mammopath.manifest.load_manifest`).

    Args:
        manifest: validated manifest rows (typically one modality, one split).
        root: data root the manifest paths are relative to.
        image_size: output (H, W) of every image.
        canonical_side: mirror mammograms so the breast is on this side (``"L"``/``"R"``, None = off).
        crop_breast: crop mammograms to the breast bounding box before resizing.
        augment: random flips / 90° rotations (pathology) and vertical flips (mammography).
        slide_cache_size: open slides kept per process.
        seed: kept for configuration compatibility (augmentations draw from :meth:`augment_generator`).
        storage_options: fsspec options for slides under a URL root (:mod:`mammopath.io.location`).
        on_bad_sample: ``raise`` (default): an unreadable file raises its :class:`~mammopath.errors.DataFormatError`;
            ``skip``: the sample is replaced by the next readable row of the same domain and reported in the
            sample's ``skipped`` field (the datamodule records it in ``skipped.csv`` and stops past a bad fraction).
        max_replacements: with ``skip``, how many further rows are tried before the error is raised anyway.
        decoded_cache_mb: keep each decoded, resized sample (image, mask) in memory, up to this many MiB per
            process (0 = off): later epochs skip the file reads and decodes. Augmentations are drawn afresh on the
            cached tensors, so every sample equals the uncached one. Rows are cached in the order first read until
            the budget is full (no eviction); each DataLoader worker keeps its own cache (``num_workers`` × the
            budget; persistent workers keep it across epochs). Files changed during a run are not re-read.

    The root may be an fsspec URL: slide patches are then read in place (range requests) and annotation files
    copied once to a local cache; mammograms and microscopy photos need a local root.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        *,
        image_size: int | tuple[int, int] = 224,
        canonical_side: str | None = "L",
        crop_breast: bool = False,
        augment: bool = False,
        slide_cache_size: int = 16,
        seed: int = 0,
        storage_options: dict[str, Any] | None = None,
        on_bad_sample: str = "raise",
        max_replacements: int = 16,
        decoded_cache_mb: float = 0.0,
    ):
        if on_bad_sample not in ("raise", "skip"):
            raise ConfigError(f"on_bad_sample must be 'raise' or 'skip'; got {on_bad_sample!r}")
        self.on_bad_sample = on_bad_sample
        self.max_replacements = int(max_replacements)
        self.rows = manifest.reset_index(drop=True)
        self.root = as_location(root)
        self.storage_options = storage_options
        self.image_size: tuple[int, int] = (
            (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
        )
        self.canonical_side = canonical_side
        self.crop_breast = crop_breast
        self.augment = augment
        self.seed = seed
        self.slides = SlideCache(slide_cache_size, storage_options)
        self._records = self.rows.to_dict("records")
        if decoded_cache_mb < 0:
            raise ConfigError(f"decoded_cache_mb must be >= 0 (0 = off); got {decoded_cache_mb}")
        self.decoded_cache_bytes = int(decoded_cache_mb * 2**20)
        self._decoded: dict[int, tuple[torch.Tensor, torch.Tensor, bool, dict[str, Any]]] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def slide_keys(self) -> list[str]:
        """The slide file of every slide-patch row (its own sample id for other rows), for grouping samplers."""
        return [
            f"{row.get('_root') or self.root}/{row['path']}" if not pd.isna(row.get("x")) else f"#{row['sample_id']}"
            for row in self._records
        ]

    # -- modality readers ------------------------------------------------------------------------
    def _root(self, row: dict[str, Any]) -> Location:
        """The data root of a row (rows of composed manifests carry their own in ``_root``)."""
        return as_location(row["_root"]) if row.get("_root") else self.root

    def _local_root(self, row: dict[str, Any], what: str) -> Path:
        root = self._root(row)
        if is_url(root):
            raise ConfigError(
                f"row {row['sample_id']}: {what} are read from local files only, and the data root is the URL "
                f"{display(root)}; remote roots serve slide patches (stage the {what} locally, or mount the bucket)"
            )
        return Path(root)

    def _annotation(self, row: dict[str, Any]) -> str:
        """A local path of the row's annotation file (a cached copy when the root is a URL)."""
        return str(local_copy(join(self._root(row), row["roi_path"]), self.storage_options))

    def _mammo(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        root = self._local_root(row, "mammograms")
        image, meta = read_mammogram(root / row["path"])
        mask = None
        if row.get("roi_path"):
            roi = root / row["roi_path"]
            if roi.suffix.lower() == ".xml":
                from mammopath.io.masks import rasterize

                mask = rasterize(_polygons(str(roi), os.getpid()), image.shape)
            else:
                mask = read_roi_mask(roi)
                if mask.shape != image.shape:
                    raise DataFormatError(
                        roi,
                        f"ROI mask shape {mask.shape} differs from its image {image.shape} (sample {row['sample_id']})",
                    )
        laterality = row.get("laterality") or meta["laterality"]
        if self.canonical_side:
            image = canonical_laterality(image, laterality, self.canonical_side)
            if mask is not None:
                mask = canonical_laterality(mask, laterality, self.canonical_side)
        if self.crop_breast:
            from mammopath.io.dicom import breast_bbox

            x0, y0, x1, y1 = breast_bbox(image)
            image = crop_breast(image)
            if mask is not None:
                mask = mask[y0:y1, x0:x1]
        return image, mask, {"laterality": laterality, "view": row.get("view") or meta["view"] or ""}

    def _patho(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        if pd.isna(row.get("x")):
            from mammopath.io.microscopy import read_microscopy

            return read_microscopy(self._local_root(row, "microscopy photos") / row["path"]), None, {}
        path = join(self._root(row), row["path"])
        slide_mpp = row.get("slide_mpp")
        slide = self.slides.get(path, None if slide_mpp is None or pd.isna(slide_mpp) else float(slide_mpp))
        size = int(row["size"])
        location = (int(row["x"]), int(row["y"]))
        target_mpp = None if pd.isna(row.get("mpp")) else float(row["mpp"])
        if target_mpp is None:
            region = slide.read_region(location, size, level=_int_or(row.get("level"), 0))
            downsample = slide.level_downsamples[_int_or(row.get("level"), 0)]
        else:
            region = slide.read_region(location, size, target_mpp)
            downsample = target_mpp / slide.require_mpp()
        mask = None
        if row.get("roi_path"):
            from mammopath.io.masks import rasterize

            polygons = _polygons(self._annotation(row), os.getpid())
            mask = rasterize(polygons, (size, size), downsample=downsample, origin=location)
        return region, mask, {}  # uint8: scaled to [0, 1] by _resize in one pass

    def _replacements(self, index: int) -> list[int]:
        """Rows tried in place of an unreadable one: the next rows of the same domain, cyclically."""
        domain = self._records[index]["domain"]
        n = len(self._records)
        order = [(index + k) % n for k in range(1, n)]
        return [i for i in order if self._records[i]["domain"] == domain][: self.max_replacements]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_sample == "raise":
            return self._sample(index)
        skipped: list[dict[str, Any]] = []
        for candidate in [index, *self._replacements(index)]:
            try:
                sample = self._sample(candidate)
            except DataFormatError as exc:
                row = self._records[candidate]
                skipped.append(
                    {
                        "sample_id": str(row["sample_id"]),
                        "modality": str(row["modality"]),
                        "domain": str(row["domain"]),
                        "file": str(row["path"]),
                        "reason": f"{type(exc).__name__}: {getattr(exc, 'problem', str(exc))}",
                    }
                )
                log.debug("unreadable sample %s (%s): %s", row["sample_id"], row["path"], skipped[-1]["reason"])
                continue
            sample["skipped"] = json.dumps(skipped) if skipped else ""
            return sample
        raise DataFormatError(
            skipped[0]["file"],
            f"sample {skipped[0]['sample_id']} and the {len(skipped) - 1} rows tried in its place are all unreadable "
            f"(first: {skipped[0]['reason']})",
        )

    def _sample(self, index: int) -> dict[str, Any]:
        row: dict[str, Any] = self._records[index]  # type: ignore[assignment]
        modality = row["modality"]
        image_t, mask_t, has_mask, extra = self._decoded_sample(index, row)
        if self.augment:
            image_t, mask_t = self._augment(image_t, mask_t, modality, index)
        return {
            "image": image_t,
            "mask": mask_t,
            "has_mask": has_mask,
            "label": _int_or(row.get("label")),
            "grade": _int_or(row.get("grade")),
            "grade_scheme": row.get("grade_scheme") or "",
            "modality": modality,
            "domain": row["domain"],
            "patient_id": row["patient_id"],
            "sample_id": row["sample_id"],
            "role": row.get("role") or "",
            "index": _int_or(row.get("_index"), index),
            "patient_code": _int_or(row.get("_patient_code"), -1),
            "paired": bool(row.get("_paired", False)),
            "meta": {"dataset": row["dataset"], "parent_id": row.get("parent_id") or "", **extra},
        }

    def _decoded_sample(
        self, index: int, row: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, bool, dict[str, Any]]:
        """The row's image and mask, read, decoded and resized (from the decoded cache when it holds them)."""
        cached = self._decoded.get(index)
        if cached is not None:
            image_c, mask_c, has_mask_c, extra_c = cached
            return image_c.clone(), mask_c.clone(), has_mask_c, dict(extra_c)
        modality = row["modality"]
        if modality == "mammo":
            image, mask, extra = self._mammo(row)
        elif modality == "patho":
            image, mask, extra = self._patho(row)
        else:  # validated manifests never get here
            raise ConfigError(f"row {index}: unknown modality {modality!r}")
        image_t = _resize(image, self.image_size, "bilinear", clamp=True)
        has_mask = mask is not None
        if mask is not None:
            mask_t = _resize(mask.astype(np.float32), self.image_size, "area")[0]
        else:
            mask_t = torch.zeros(self.image_size)
        size = image_t.nbytes + mask_t.nbytes
        if self.decoded_cache_bytes and self._decoded_bytes + size <= self.decoded_cache_bytes:
            self._decoded[index] = (image_t.clone(), mask_t.clone(), has_mask, dict(extra))
            self._decoded_bytes += size
        return image_t, mask_t, has_mask, extra

    def decoded_cache_info(self) -> dict[str, int]:
        """Rows held by this process's decoded cache and their bytes."""
        return {"rows": len(self._decoded), "bytes": self._decoded_bytes, "budget": self.decoded_cache_bytes}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_augment_generator", None)  # per process: a worker seeds its own
        state["_decoded"], state["_decoded_bytes"] = {}, 0  # per process: a worker fills its own
        return state

    def augment_generator(self) -> torch.Generator:
        """The augmentations' own generator, one per process, seeded from torch's seed of that process.

        In the main process that is the run's seed (``seed_everything``); in a DataLoader worker, the worker's
        seed (distinct per worker and rank under ``seed_everything(workers=True)``). Kept apart from torch's
        global generator so that a resumed run can restore it exactly (:mod:`mammopath.datamodules.resumable`)
        without the training step's own draws (dropout, MixStyle) interleaving with it.
        """
        owner, generator = self.__dict__.get("_augment_generator", (None, None))
        if owner != os.getpid() or generator is None:  # a forked worker builds its own
            generator = torch.Generator().manual_seed((torch.initial_seed() + 0x5EED) % 2**63)
            self.__dict__["_augment_generator"] = (os.getpid(), generator)
        return generator

    def _augment(
        self, image: torch.Tensor, mask: torch.Tensor, modality: str, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.augment_generator()
        if modality == "patho":
            k = int(torch.randint(0, 4, (), generator=g).item())
            image, mask = torch.rot90(image, k, (1, 2)), torch.rot90(mask, k, (0, 1))
            if torch.rand((), generator=g) < 0.5:
                image, mask = image.flip(2), mask.flip(1)
        elif torch.rand((), generator=g) < 0.5:
            image, mask = image.flip(1), mask.flip(0)
        return image.contiguous(), mask.contiguous()
