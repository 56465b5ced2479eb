"""Whole-slide (tiled pyramidal TIFF) reader over tiffslide.

One reader contract (pitfalls §1.5): ``location`` is always in level-0 pixels, ``size`` is the output
size in pixels, and the resolution is asked for in microns per pixel; the pyramid level is chosen
from the MPP and the region resampled to exactly ``size`` (padded past the slide edge).

Handles are opened lazily in the current process and kept in a bounded per-process LRU
(:class:`SlideCache`); a :class:`SlideReader` pickles without its handle, so datasets holding readers
work with ``fork`` and ``spawn`` DataLoader workers.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mammopath.errors import MissingMPPError, SlideReadError
from mammopath.io.location import Location, as_location, display, is_url, name, slide_options

log = logging.getLogger(__name__)

#: Plausible level-0 resolutions in µm/px. TIFF resolution tags outside it (e.g. a 72-dpi default,
#: 352.8 µm/px) are treated as absent rather than trusted (openslide PR#349).
MPP_RANGE: tuple[float, float] = (0.05, 20.0)

#: Most pixels one region read may request (pitfalls §6.4: never read a WSI level wholesale). 2**28 RGB pixels
#: are 768 MiB; a patch of 224 x 224 at any level is far below it.
MAX_REGION_PIXELS: int = 1 << 28


def _tiffslide() -> Any:
    import tiffslide

    return tiffslide


class SlideReader:
    """A lazily opened slide with MPP-aware, always-exact-size region reads.

    Args:
        path: the slide file (pyramidal TIFF, SVS...): a local path or an fsspec URL (``s3://``, ``https://``...),
            read in place with range requests (:mod:`mammopath.io.location`).
        mpp: level-0 µm/px to use when the file has no usable resolution (the manifest override).
        pad_value: fill for pixels outside the slide (white, H&E background).
        storage_options: fsspec options for a URL (credentials, block size...); default
            :data:`~mammopath.io.location.REMOTE_SLIDE_OPTIONS` for HTTP(S).
    """

    def __init__(
        self,
        path: str | Path,
        mpp: float | None = None,
        pad_value: int = 255,
        storage_options: dict[str, Any] | None = None,
    ):
        self.path: Location = as_location(path)
        self.storage_options = storage_options
        self.mpp_override = float(mpp) if mpp is not None and not math.isnan(float(mpp)) else None
        self.pad_value = int(pad_value)
        self._slide: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        slide = self._handle()
        try:
            self.dimensions: tuple[int, int] = tuple(int(v) for v in slide.dimensions)  # type: ignore[assignment]
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                (int(w), int(h)) for w, h in slide.level_dimensions
            )
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in slide.level_downsamples)
            self.properties: dict[str, Any] = dict(slide.properties)
        except Exception as exc:  # a TIFF header without readable pages or tags
            self.close()
            raise SlideReadError(
                display(self.path), f"cannot open as a tiled TIFF slide ({type(exc).__name__}: {exc})"
            ) from exc
        if not self.level_dimensions or min(min(d) for d in self.level_dimensions) <= 0:
            self.close()
            raise SlideReadError(display(self.path), f"slide has empty levels {self.level_dimensions}")
        self.mpp, self.mpp_source = self._resolve_mpp()

    # -- handle management -------------------------------------------------------------------
    def _handle(self) -> Any:
        if self._slide is None or self._pid != os.getpid():
            remote = is_url(self.path)
            if not remote and not Path(self.path).is_file():
                raise SlideReadError(self.path, "slide file not found")
            try:
                if remote:
                    options = slide_options(self.path, self.storage_options)
                    self._slide = _tiffslide().TiffSlide(str(self.path), storage_options=options)
                else:
                    self._slide = _tiffslide().TiffSlide(self.path)
            except FileNotFoundError as exc:
                raise SlideReadError(display(self.path), "slide file not found") from exc
            except Exception as exc:
                raise SlideReadError(
                    display(self.path), f"cannot open as a tiled TIFF slide ({type(exc).__name__}: {exc})"
                ) from exc
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        """Close the file handle (reopened on the next read)."""
        if self._slide is not None and self._pid == os.getpid():
            try:
                self._slide.close()
            except Exception:  # pragma: no cover - closing a broken handle
                log.debug("closing %s failed", display(self.path), exc_info=True)
        self._slide = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None
        state["_pid"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- resolution ----------------------------------------------------------------------------
    def _resolve_mpp(self) -> tuple[float | None, str | None]:
        """Level-0 µm/px: vendor property → TIFF resolution tags → manifest override (else None)."""
        props = self.properties
        vendor = str(props.get("tiffslide.vendor") or "generic-tiff")
        value = props.get("tiffslide.mpp-x")
        if value is not None:
            mpp = float(value)
            source = "vendor" if vendor != "generic-tiff" else "tiff_resolution"
            if MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
                return mpp, source
            log.warning("%s: ignoring implausible %s resolution %.4g µm/px", name(self.path), source, mpp)
        if self.mpp_override is not None:
            return self.mpp_override, "manifest"
        return None, None

    def require_mpp(self) -> float:
        """The level-0 µm/px, or a :class:`MissingMPPError` that says how to supply one."""
        if self.mpp is None:
            raise MissingMPPError(
                display(self.path),
                "no usable microns-per-pixel (no vendor property, no plausible TIFF XResolution/ResolutionUnit); "
                "give the slide's level-0 µm/px in the manifest 'mpp' column",
            )
        return self.mpp

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (never upsample a coarse level)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = level
        return best

    # -- reading -------------------------------------------------------------------------------
    def read_level(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` (w, h) pixels of ``level`` at level-0 ``location``; padded past the edge.

        Returns:
            (h, w, 3) uint8 RGB.
        """
        if not 0 <= level < len(self.level_dimensions):
            raise SlideReadError(
                display(self.path), f"level {level} does not exist (slide has {len(self.level_dimensions)})"
            )
        x0, y0 = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0 or w * h > MAX_REGION_PIXELS:
            raise SlideReadError(
                display(self.path),
                f"region of {w}x{h} pixels requested at level {level}: must be non-empty and at most "
                f"{MAX_REGION_PIXELS:,} pixels (read large areas as tiles)",
            )
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        out = np.empty((h, w, 3), dtype=np.uint8)
        lx, ly = int(math.floor(x0 / ds)), int(math.floor(y0 / ds))
        ix0, iy0 = max(lx, 0), max(ly, 0)
        ix1, iy1 = min(lx + w, lw), min(ly + h, lh)
        if ix1 <= ix0 or iy1 <= iy0:
            out.fill(self.pad_value)
            return out
        read_loc = (int(round(ix0 * ds)), int(round(iy0 * ds)))
        try:
            with self._lock or threading.Lock():
                region = self._handle().read_region(read_loc, level, (ix1 - ix0, iy1 - iy0), as_array=True)
        except SlideReadError:
            raise
        except Exception as exc:
            self.close()  # never keep a handle whose decoder state may be poisoned (latching errors)
            raise SlideReadError(
                display(self.path), f"cannot read region at level {level}, x={x0}, y={y0} ({type(exc).__name__}: {exc})"
            ) from exc
        region = np.asarray(region)
        if region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=2)
        region = region[..., :3].astype(np.uint8, copy=False)
        if region.shape == out.shape:  # inside the slide: the region is the patch, no padded copy
            return region if region.flags.writeable and region.flags.c_contiguous else np.array(region)
        out.fill(self.pad_value)
        rh, rw = min(region.shape[0], iy1 - iy0), min(region.shape[1], ix1 - ix0)
        out[iy0 - ly : iy0 - ly + rh, ix0 - lx : ix0 - lx + rw] = region[:rh, :rw]
        return out

    def read_region(
        self,
        location: tuple[int, int],
        size: tuple[int, int] | int,
        mpp: float | None = None,
        *,
        level: int | None = None,
    ) -> np.ndarray:
        """Read a region at a target resolution, always exactly ``size``.

        Args:
            location: top-left corner in level-0 pixels (x, y).
            size: output (w, h) in pixels, or one int for a square.
            mpp: target µm/px; the level is chosen from it and the region resampled. ``None`` reads
                ``level`` (default 0) without resampling.
            level: explicit level, only when ``mpp`` is None.

        Returns:
            (h, w, 3) uint8 RGB.
        """
        if isinstance(size, int):
            size = (size, size)
        if mpp is None:
            return self.read_level(location, level or 0, size)
        if level is not None:
            raise ValueError("give either mpp or level, not both")
        target_ds = float(mpp) / self.require_mpp()
        lvl = self.best_level(target_ds)
        scale = target_ds / self.level_downsamples[lvl]
        if abs(scale - 1.0) < 1e-6:
            return self.read_level(location, lvl, size)
        src = (max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale))))
        region = self.read_level(location, lvl, src)
        resample = Image.Resampling.BOX if scale > 1 else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(region).resize((int(size[0]), int(size[1])), resample=resample))

    def thumbnail(self, max_size: int = 512) -> tuple[np.ndarray, float]:
        """The coarsest level no smaller than ``max_size`` on its long side, and its downsample."""
        level = len(self.level_dimensions) - 1
        for lvl, (w, h) in enumerate(self.level_dimensions):
            if max(w, h) <= max_size:
                level = lvl
                break
        return self.read_level((0, 0), level, self.level_dimensions[level]), self.level_downsamples[level]

    def __repr__(self) -> str:
        levels = len(self.level_dimensions)
        return f"SlideReader({name(self.path)}, dims={self.dimensions}, levels={levels}, mpp={self.mpp})"


def open_slide(
    path: str | Path, mpp: float | None = None, pad_value: int = 255, storage_options: dict[str, Any] | None = None
) -> SlideReader:
    """Open a slide, local or at an fsspec URL (see :class:`SlideReader`)."""
    return SlideReader(path, mpp=mpp, pad_value=pad_value, storage_options=storage_options)


class SlideCache:
    """Per-process bounded LRU of open slides; evicted slides are closed.

    Keyed by ``os.getpid()`` so that a handle opened in a parent is never reused in a forked
    worker, and pickled without any handle (datasets can hold one).
    """

    def __init__(self, max_open: int = 16, storage_options: dict[str, Any] | None = None):
        self.max_open = max(1, int(max_open))
        self.storage_options = storage_options
        self._slides: OrderedDict[tuple[str, float | None], SlideReader] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: str | Path, mpp: float | None = None) -> SlideReader:
        """The reader for ``path`` (opened on first use in this process)."""
        if self._pid != os.getpid():
            self._slides = OrderedDict()  # inherited from the parent: never reuse
            self._pid = os.getpid()
        key = (str(path), mpp)
        reader = self._slides.get(key)
        if reader is not None:
            self._slides.move_to_end(key)
            return reader
        reader = SlideReader(path, mpp=mpp, storage_options=self.storage_options)
        self._slides[key] = reader
        while len(self._slides) > self.max_open:
            _, old = self._slides.popitem(last=False)
            old.close()
        return reader

    @property
    def open_count(self) -> int:
        """How many readers this process holds."""
        return len(self._slides) if self._pid == os.getpid() else 0

    def close(self) -> None:
        for reader in self._slides.values():
            reader.close()
        self._slides.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"], state.get("storage_options"))  # type: ignore[misc]
