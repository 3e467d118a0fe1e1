"""Files the UI hands to the browser (YAML, CSV): one folder under the data directory, old ones removed.

Each download gets its own sub-folder, so the file keeps the name the user expects and two sessions never
overwrite each other's file. Sub-folders older than an hour go on the next download and at serve start.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..settings import get_settings

MAX_AGE_SECONDS = 3600.0


def downloads_dir() -> Path:
    return get_settings().tmp_dir / "downloads"


def remove_old(max_age: float = MAX_AGE_SECONDS) -> int:
    """Delete download folders older than ``max_age`` seconds; returns how many went."""
    root = downloads_dir()
    if not root.is_dir():
        return 0
    cutoff = time.time() - max_age
    old = [d for d in root.iterdir() if d.stat().st_mtime < cutoff]
    for d in old:
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        else:
            d.unlink(missing_ok=True)
    return len(old)


def new_file(filename: str) -> Path:
    """A path for a new download named ``filename`` (its folder exists; the caller writes the file)."""
    remove_old()
    root = downloads_dir()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root)) / filename
