"""A running job's long loops stop when the job is cancelled or its worker stops.

Cancel is a column, ``cancel_requested``, that ``studio.jobs.cancel`` sets (huey cannot stop a task that is already
running). Training reads it at the end of every step (workers/callbacks.py); the long loops between steps read it
through a ``Watch``: golden prompts, the general-replay answers, evaluation batches and the forgetting probe check it
between batches and, where they generate, between tokens, and raise ``Stopped`` when it says stop. torch-free.
"""
from __future__ import annotations

import time
from typing import Callable

POLL_SECONDS = 0.5  # the most often a watch reads the cancel flag from the database


class Stopped(Exception):
    """A long loop of a running job stopped before its end: ``reason`` is "cancelled" (the user cancelled the job)
    or "interrupted" (the worker is stopping); the run ends with that reason."""

    def __init__(self, reason: str, what: str):
        self.reason = reason
        super().__init__(f"the run was {reason} during {what}")


class Watch:
    """Whether a running job should stop: "cancelled" once its cancel flag is set, "interrupted" once ``shutdown()``
    says the worker is stopping, else None. The flag is read from the database at most once a ``poll_seconds``; a
    stop, once seen, stays. ``job_id`` None: only the shutdown is watched."""

    def __init__(self, job_id: str | None, shutdown: Callable[[], bool] | None = None,
                 poll_seconds: float | None = None):
        self.job_id = job_id
        self.shutdown = shutdown or (lambda: False)
        self.poll_seconds = POLL_SECONDS if poll_seconds is None else poll_seconds
        self.stopped: str | None = None
        self._read_at: float | None = None

    def reason(self) -> str | None:
        if self.stopped is None:
            now = time.monotonic()
            if self.shutdown():
                self.stopped = "interrupted"
            elif self.job_id and (self._read_at is None or now - self._read_at >= self.poll_seconds):
                self._read_at = now
                if cancel_requested(self.job_id):
                    self.stopped = "cancelled"
        return self.stopped

    def __call__(self) -> bool:
        return self.reason() is not None

    def check(self, what: str) -> None:
        """Raise ``Stopped`` when the job should stop; ``what`` names the loop for the run's log."""
        if (reason := self.reason()) is not None:
            raise Stopped(reason, what)


def cancel_requested(job_id: str) -> bool:
    from . import db

    job = db.get_job(job_id)
    return bool(job is not None and job.cancel_requested)
