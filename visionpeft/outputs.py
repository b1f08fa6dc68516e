"""Output locations: create run folders and check output files up front, with one error line naming the path.

Without these checks a missing parent on a read-only disk, a file where a folder should be, or ``merge -o``
pointing at a directory surfaced as ``FileNotFoundError`` / ``IsADirectoryError`` tracebacks from deep inside
training or saving, sometimes after the training time was spent.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import ConfigError

__all__ = ["make_dir", "check_output_file"]


def _blocker(path: Path) -> Path | None:
    """The first existing component of ``path`` (or ``path`` itself) that is not a directory."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def make_dir(path: str | Path, field: str) -> Path:
    """Create the directory ``path`` (and parents); ``field`` names the recipe key / option it came from.

    Raises:
        ConfigError: a file is in the way, or the location cannot be created or written (permissions, read-only
            file system), naming ``field`` and the path.
    """
    path = Path(path)
    blocker = _blocker(path)
    if blocker is not None:
        raise ConfigError(f"{field}: cannot create the folder {path}: {blocker} is a file, not a folder. "
                          "Choose another location or move the file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot create the folder {path} ({exc.strerror or exc}); choose a location "
                          "you can write to") from None
    try:  # a real write: os.access says yes to root on read-only mounts and pseudo file systems like /proc
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{field}: cannot write into the folder {path} ({exc.strerror or exc}); choose a location "
                          "you can write to") from None
    return path


def check_output_file(path: str | Path, field: str) -> Path:
    """Check that a file can be written at ``path`` (creating its parent folder); returns ``path``.

    Raises:
        ConfigError: ``path`` is an existing directory, or its folder cannot be created or written.
    """
    if str(path).endswith(("/", os.sep)):
        raise ConfigError(f"{field}: {path} ends with a path separator; give a file path such as {path}merged.pt")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{field}: {path} is a directory; give a file path such as {path / 'merged.pt'}")
    make_dir(path.parent, field)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{field}: {path} exists and is not writable; choose another file")
    return path


def slug(name: str) -> str:
    """A file-system-safe version of a run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
