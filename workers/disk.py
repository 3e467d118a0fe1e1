"""A write the disk refused (full, over quota, read-only, not permitted), told apart from every other failure and
said in one sentence that names what was being written and where. No torch here: the tasks use it too.

Libraries say it in their own words: an OSError's errno, safetensors' "I/O error: ... (os error 28)", SQLite's
"database or disk is full"; torch.save says only that its write failed ("unexpected pos"), which on a file system
with almost nothing left counts as the full disk it is.
"""
from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from workers.checkpoints import CHECKPOINTS, torn_checkpoints

ADAPTER = "adapter"  # the run's final adapter folder (= workers.train.ADAPTER)

REASONS = {  # errno -> (what the user reads, what to do about it)
    errno.ENOSPC: ("no space left on device", "free some space"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or raise the quota"),
    errno.EROFS: ("the file system is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "let the worker's user write there"),
    errno.EPERM: ("permission denied", "let the worker's user write there"),
}
WORDS = (("database or disk is full", errno.ENOSPC), ("no space left on device", errno.ENOSPC),
         ("disk quota exceeded", errno.EDQUOT), ("read-only file system", errno.EROFS),
         ("readonly database", errno.EROFS))
RUST_IO = re.compile(r"\(os error (\d+)\)")  # std::io::Error as Rust libraries print it
WORDLESS = ("inline_container", "pytorchstreamwriter", "file write failed")  # torch.save's failed write
NEARLY_FULL_BYTES = 1 << 20


def _chain(exc: BaseException | None):
    """``exc`` and what caused it: ``raise ... from``, the exception being handled, a database driver's own."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__


def refused_errno(exc: BaseException, folder: Path | None = None) -> int | None:
    """The errno of the refused write ``exc`` stands for (a key of REASONS), or None. ``folder``: where a write was
    going, whose file system nearly full makes torch.save's wordless failed write the full disk."""
    wordless = False
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in REASONS:
            return link.errno
        text = str(link).lower()
        if (code := RUST_IO.search(text)) and int(code.group(1)) in REASONS:
            return int(code.group(1))
        for words, code in WORDS:
            if words in text:
                return code
        wordless = wordless or any(words in text for words in WORDLESS)
    if wordless and folder is not None and _nearly_full(folder):
        return errno.ENOSPC
    return None


def refusal(exc: BaseException, folder: Path | None = None) -> str | None:
    """What a user reads ("no space left on device", ...) when ``exc`` is a refused write, else None."""
    code = refused_errno(exc, folder)
    return None if code is None else REASONS[code][0]


def _nearly_full(folder: Path) -> bool:
    for path in (folder, *folder.parents):
        try:
            return shutil.disk_usage(path).free < NEARLY_FULL_BYTES
        except OSError:  # not made yet: its parent's file system
            continue
    return False


def sentence(exc: BaseException, folder: Path, writing: str | None, again: str, step: int | None = None) -> str | None:
    """The error of a run (or task) whose write ``exc`` the disk refused, else None: the reason, what was being
    written and where, and what to do. ``folder``: the run's folder; ``writing``: "checkpoint" while training
    (``step``: the trainer's), "adapter" while saving it, else a few words ("the merge output") for ``folder``;
    ``again``: how to carry on.

    "no space left on device while writing the checkpoint at step 2 (jobs/x/checkpoints/checkpoint-2): free some
    space, then resume the run from its last checkpoint"."""
    code = refused_errno(exc, folder if writing else None)
    if code is None:
        return None
    what, where = _what_and_where(exc, folder, writing, step)
    reason, advice = REASONS[code]
    return f"{reason} while writing {what}" + (f" ({where})" if where else "") + f": {advice}, then {again}"


def _what_and_where(exc: BaseException, folder: Path, writing: str | None,
                    step: int | None) -> tuple[str, str | None]:
    from sqlalchemy.exc import DBAPIError

    for link in _chain(exc):
        if isinstance(link, OSError) and link.filename:
            return _named(Path(link.filename), folder, step)
        if isinstance(link, DBAPIError):
            return "to the database", _database()
    if writing == "checkpoint":
        if step is None and (torn := torn_checkpoints(folder)):
            return _named(torn[-1], folder, step)
        return _checkpoint(folder, step)
    if writing == ADAPTER:
        return "the adapter", _shown(folder / ADAPTER)
    return writing or "the run's files", _shown(folder)


def _checkpoint(folder: Path, step: int | None) -> tuple[str, str]:
    if step is None:
        return "a checkpoint", _shown(folder / CHECKPOINTS)
    return f"the checkpoint at step {step}", _shown(folder / CHECKPOINTS / f"checkpoint-{step}")


def _named(path: Path, folder: Path, step: int | None) -> tuple[str, str | None]:
    """A written file by the folder it belongs to: a checkpoint (the trainer also writes beside them, a model card
    as each is saved), the adapter, or itself."""
    for part in (path, *path.parents):
        if part.parent.name == CHECKPOINTS and part.name.startswith("checkpoint-"):
            at = part.name.split("-", 1)[1]
            return (f"the checkpoint at step {at}" if at.isdigit() else "a checkpoint"), _shown(part)
        if part == folder / CHECKPOINTS:
            return _checkpoint(folder, step)
        if part == folder / ADAPTER:
            return "the adapter", _shown(part)
    return _shown(path), None


def _shown(path: Path) -> str:
    """A path as the user knows it: inside the data folder, from there."""
    from studio.settings import get_settings

    try:
        return get_settings().relative(path)
    except ValueError:
        return str(path)


def _database() -> str | None:
    from sqlalchemy.engine import make_url

    from studio.settings import get_settings

    url = make_url(get_settings().database_url)
    return _shown(Path(url.database)) if url.get_backend_name() == "sqlite" and url.database else url.host


def give_back(folder: Path, writing: str | None) -> None:
    """After a refused write: remove the torn checkpoints (no resume or chat ever uses one) and a half-written
    adapter, whose space is the first the disk gets back."""
    for torn in torn_checkpoints(folder):
        shutil.rmtree(torn, ignore_errors=True)
    if writing == ADAPTER:
        shutil.rmtree(folder / ADAPTER, ignore_errors=True)
