"""Where data lives: a local path or an fsspec URL (``s3://``, ``gs://``, ``https://``...).

A data root may be a URL (slides stay where the hospital keeps them); manifest paths are joined to it as URL
paths. Slides are read in place through tiffslide's fsspec support, tile by tile with range requests: nothing
is downloaded whole. Small side files (annotation XML) are copied once into a per-user cache on first use.

URLs are shown in messages and logs without credentials or query strings (:func:`display`): signed URLs and
``user:password@`` parts never reach a log.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: A local path or a URL string.
Location = Path | str

#: fsspec options used for remote slides unless the caller gives its own. tiffslide opens the file with fsspec's
#: defaults, whose HTTP read-ahead fetches 5 MB per request; random patches want small blocks kept in an LRU:
#: 256 KiB blocks (a few JPEG tiles each), 64 of them per open slide (16 MiB).
REMOTE_SLIDE_OPTIONS: dict[str, Any] = {
    "block_size": 256 * 1024,
    "cache_type": "blockcache",
    "cache_options": {"maxblocks": 64},
}


def is_url(location: Location | None) -> bool:
    """True for ``scheme://...`` strings other than ``file://`` (which are local paths)."""
    if location is None or isinstance(location, Path):
        return False
    scheme = urlsplit(str(location)).scheme
    return "://" in str(location) and len(scheme) > 1 and scheme != "file"


def as_location(location: str | os.PathLike[str]) -> Location:
    """A URL string stays a string; anything else (``file://`` included) becomes a :class:`Path`."""
    text = os.fspath(location)
    if is_url(text):
        return str(text)
    if isinstance(text, str) and text.startswith("file://"):
        return Path(urlsplit(text).path)
    return Path(text)


def join(root: Location, relative: str) -> Location:
    """``root / relative`` for a local root, the URL with ``relative`` appended to its path for a URL root."""
    if not is_url(root):
        return Path(root) / relative
    parts = urlsplit(str(root))
    path = str(PurePosixPath(parts.path or "/") / relative.replace("\\", "/"))
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def display(location: Location) -> str:
    """The location as it may appear in messages: URLs without credentials, query or fragment."""
    if not is_url(location):
        return str(location)
    parts = urlsplit(str(location))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def name(location: Location) -> str:
    """The file name of a location."""
    return PurePosixPath(urlsplit(str(location)).path).name if is_url(location) else Path(location).name


def slide_options(location: Location, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The fsspec options for opening a remote slide: the caller's, else :data:`REMOTE_SLIDE_OPTIONS` for HTTP(S)."""
    if storage_options is not None:
        return dict(storage_options)
    scheme = urlsplit(str(location)).scheme
    return dict(REMOTE_SLIDE_OPTIONS) if scheme in ("http", "https") else {}


def exists(location: Location, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the file exists (one metadata request for a URL)."""
    if not is_url(location):
        return Path(location).exists()
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(str(location), **(storage_options or {}))
    return bool(fs.exists(path))


def local_copy(location: Location, storage_options: dict[str, Any] | None = None) -> Path:
    """A local path to read ``location`` from: itself when local, else a copy cached under the temp folder.

    For small side files only (annotations): the copy is written once (atomically, so concurrent workers are safe)
    and reused by every later read in any process.
    """
    if not is_url(location):
        return Path(location)
    import fsspec

    digest = hashlib.sha256(str(location).encode()).hexdigest()[:24]
    target = Path(tempfile.gettempdir()) / "mammopath-remote" / f"{digest}{PurePosixPath(name(location)).suffix}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        with fsspec.open(str(location), "rb", **(storage_options or {})) as source:
            partial.write_bytes(source.read())
        os.replace(partial, target)
    return target
