"""One process at a time on a run or a data folder: an exclusive lock file that names its holder.

Two sweeps (or two ``mammopath evidence``) started on the same results would otherwise train the same run side by
side, both writing its checkpoints and event files, and two data writers would rewrite the same files while a
training reads them. :func:`exclusive` creates ``<path>`` atomically (``O_EXCL``) with the holder's host and pid;
a second process gets a :class:`~mammopath.errors.ConfigError` that names the holder. A lock left by a process that
no longer runs on this host (killed, machine restarted) is stale and taken over, with a log line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mammopath.errors import ConfigError

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` while the block runs (``what`` names the locked thing in the error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            pid = holder.get("pid")
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(pid, int) and not _alive(pid):
                log.warning("%s: taking over the lock of process %s, which no longer runs (%s)", what, pid, path)
                path.unlink(missing_ok=True)
                continue
            raise ConfigError(
                f"{what} is in use by process {pid} on {holder.get('host', '?')} (lock file {path}); wait for it to "
                f"finish, or remove the lock file if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:  # the stale lock was re-created by a third process between our two tries
        raise ConfigError(f"{what}: could not take the lock file {path}; another process holds it")
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
