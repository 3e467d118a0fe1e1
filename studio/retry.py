"""Trying again what the disk, the database or the queue refused: a wait that grows from ``first`` to ``cap``
seconds, and one log line per distinct error with how many times it repeated, never one per try.

Standard library only: studio.lifecycle (a run's end), the heartbeat thread and the queue's worker share it.
"""
from __future__ import annotations

import logging


def first_line(exc: BaseException) -> str:
    """The error as one line: its type and the first line of its message (SQLAlchemy appends the statement)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class Retry:
    """One operation tried until it works. ``failed(exc)`` notes a failure and returns the seconds to wait before
    the next try (``first``, doubling up to ``cap``); ``worked()`` notes a success. The first failure of each
    distinct error is logged (with its traceback when ``trace``); its count when another error replaces it or
    the operation works again."""

    def __init__(self, what: str, log: logging.Logger, first: float = 1.0, cap: float = 30.0, trace: bool = True):
        self.what, self.log, self.first, self.cap, self.trace = what, log, first, cap, trace
        self.wait = 0.0
        self.failures = 0              # since the last success
        self.error: str | None = None  # the error failing now, and how many times in a row
        self.repeats = 0

    def failed(self, exc: BaseException) -> float:
        error = first_line(exc)
        self.failures += 1
        self.wait = min(self.cap, max(self.first, 2 * self.wait))
        if error == self.error:
            self.repeats += 1
        else:
            self._count()
            self.error, self.repeats = error, 1
            then = (f"trying again every {self.cap:.0f} s" if self.first >= self.cap else
                    f"trying again in {self.wait:.0f} s, then less and less often (every {self.cap:.0f} s at most)")
            self.log.warning("%s: %s; %s", self.what, error, then, exc_info=exc if self.trace else None)
        return self.wait

    def worked(self) -> None:
        if self.failures:
            self._count()
            self.log.info("%s works again, after %d failed tries", self.what, self.failures)
        self.wait, self.failures, self.error, self.repeats = 0.0, 0, None, 0

    def _count(self) -> None:
        if self.repeats > 1:
            self.log.warning("%s: %s (%d times in a row)", self.what, self.error, self.repeats)
