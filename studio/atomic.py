"""Write-then-rename: a file or folder appears whole under its name or not at all, even if the writer dies.

    with atomic_path(target) as tmp: ...   write ``tmp`` (a hidden sibling); it replaces ``target`` on success
    write_text(target, text)               a text file, atomically
    write_json(target, value)              a JSON file (indent 2), atomically
    replace_dir(tmp, target)               move a finished folder into place, swapping out an existing one
    temp_beside(target)                    a fresh hidden sibling name, the parent folder made

The temporary name starts with a dot and ends in ``.partial``, so listings that skip hidden files never see it.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def temp_beside(target: Path) -> Path:
    """``.<name>.<random>.partial`` next to ``target`` (same file system, so the rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")


@contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; on a clean exit it replaces ``target``, else it is removed."""
    target = Path(target)
    tmp = temp_beside(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(target: Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; ``mode`` (e.g. 0o600) is the file's from its creation."""
    target = Path(target)
    with atomic_path(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if mode is not None:
            os.chmod(tmp, mode)  # the umask may have narrowed it
    return target


def write_json(target: Path, value, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON (UTF-8, non-ASCII kept) to ``target`` atomically."""
    return write_text(target, json.dumps(value, indent=indent, ensure_ascii=False))


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an existing one is swapped out, then removed."""
    old = None
    if target.exists():
        old = temp_beside(target)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
