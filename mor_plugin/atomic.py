"""Replacing a file atomically: readers see the old content or the new, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` (UTF-8), creating its folder when missing.

    The text goes into a temporary file in the same folder (``os.replace`` is atomic only
    within one file system) whose name ends in ``.tmp``, so that a reader globbing for
    ``*.prom`` or ``*.json`` never picks it up; it gets ``mode`` and then takes the place
    of ``path``. On any failure the temporary file is removed and the error raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
