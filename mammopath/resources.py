"""Files that ship with mammopath: the YAML configs of ``experiments/``, found from any working folder.

A wheel carries them as ``mammopath/experiments/``; a source checkout (editable install) has them in the
repository's ``experiments/``. :func:`resolve_config` lets ``--config experiments/synth.yaml`` (and a sweep grid)
name a shipped config from any folder: a path that exists as given wins; otherwise the same path under the
shipped configs is used.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def experiments_dir() -> Path | None:
    """The shipped ``experiments/`` folder: inside the installed package, else beside it in a checkout."""
    for candidate in (PACKAGE / "experiments", PACKAGE.parent / "experiments"):
        if (candidate / "base.yaml").is_file():
            return candidate
    return None


def resolve_config(path: str | Path) -> Path:
    """``path`` if it exists; else the shipped config it names (``experiments/x.yaml`` or ``x.yaml``); else ``path``."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    shipped = experiments_dir()
    if shipped is None:
        return given
    parts = given.parts[1:] if given.parts[:1] == ("experiments",) else given.parts
    candidate = shipped.joinpath(*parts) if parts else shipped
    return candidate if candidate.is_file() else given
