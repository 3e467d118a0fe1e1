"""One context for every job kind: the allowed-check, the move to running, the heartbeat, the settle on exit.

A training run (workers/train.py), a task (workers/inference/task.py) and a multi-device launch
(workers/distributed.py) each run through a ``JobRun``::

    run = JobRun(job, error=sentence)   # sentence(exc): the job's error when the body raises
    if not run.allowed():               # cancelled while queued, or already picked up
        return job.status
    return run(body)                    # body(run) -> the final status

While ``body`` runs the job's heartbeat beats (``beat=True``, on the main rank); inside it ``run.start(...)``
moves the job to running with this process as its worker and ``run.settle(...)`` records its end. Whatever the
body raises ends the job in one state: a move another process made first (``lifecycle.IllegalTransition``) is
left as it stands; any other exception fails the job with ``error(exc)``, one readable sentence, while the
traceback goes to the log; KeyboardInterrupt and SystemExit are raised again once the job is settled. Only the
main rank (``workers.device.is_main``) writes the job's status; another rank's calls return the state it meant.

Standard library and studio only: a task or `studio export` runs through it without the training stack.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from typing import Callable

from studio import db, lifecycle
from workers.device import is_main
from workers.heartbeat import Heartbeat
from workers.stopping import SHUTDOWN

log = logging.getLogger("studio.runner")


def one_line(exc: BaseException) -> str:
    """A failure in one line: the exception's first line (at most 500 characters), else its type's name."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


class JobRun:
    """One job run by this process, from the allowed-check to its settled end.

    ``noun``: what the log calls it ("job", "task"); ``error``: the job's error sentence for an exception the
    body raised; ``failed``: more fields for a failed job's row; ``beat``: beat the job's heartbeat while the body
    runs (a launcher leaves it to the rank it starts); ``main``: whether this process writes the job's status
    (default: rank 0)."""

    def __init__(self, job: db.Job, *, noun: str = "job", error: Callable[[BaseException], str] = one_line,
                 failed: dict | None = None, beat: bool = True, main: bool | None = None):
        self.job, self.noun, self.error, self.failed = job, noun, error, failed or {}
        self.main = is_main() if main is None else main
        self.beat = beat and self.main

    def allowed(self) -> bool:
        """Whether the job may start running; when not (cancelled while queued, already picked up), the log
        says why."""
        if lifecycle.allowed(self.job.status, "running"):
            return True
        log.warning("%s %s is %s; not running it", self.noun, self.job.id, self.job.status)
        return False

    def start(self, message: str, **fields) -> None:
        """The job becomes running, with this process, host and device as its worker (on the main rank)."""
        if not self.main:
            return
        from workers.device import device_label

        lifecycle.transition(self.job.id, "running", message, started_at=time.time(), heartbeat_at=time.time(),
                             worker_host=socket.gethostname(), worker_pid=os.getpid(), device=device_label(),
                             error=None, cancel_requested=False, finished_at=None, **fields)

    def settle(self, to: str, message: str, **fields) -> str:
        """The job's end, finished now (``lifecycle.settle``); returns the state it has. Another rank: ``to``."""
        if not self.main:
            return to
        return lifecycle.settle(self.job.id, to, message, stop=SHUTDOWN, finished_at=time.time(), **fields)

    def heartbeat(self):
        if not self.beat:
            return contextlib.nullcontext()
        job_id = self.job.id
        return Heartbeat(lambda: db.update_job(job_id, heartbeat_at=time.time()), name=f"heartbeat-{job_id}")

    def __call__(self, body: Callable[["JobRun"], str]) -> str:
        """``body(self)``'s final status, or the state an exception out of it ends the job in."""
        with self.heartbeat():
            try:
                return body(self)
            except lifecycle.IllegalTransition as exc:  # moved by another process before it started: leave it be
                log.warning("%s %s: %s; not running it", self.noun, self.job.id, exc)
                return db.get_job(self.job.id).status
            except BaseException as exc:  # noqa: BLE001 - every failure becomes a readable job state
                log.error("%s %s failed:\n%s", self.noun, self.job.id, traceback.format_exc())
                status = self.settle("failed", "error", error=self.error(exc), **self.failed) if self.main else "failed"
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                return status
