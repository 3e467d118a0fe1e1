"""A job's states and the legal moves between them: the one way a job's status changes.

    queued      -> running | cancelled | failed       picked up; cancelled before it started; could not start
    running     -> completed | failed | cancelled | interrupted
    failed, cancelled, interrupted -> queued          resume
    completed   -> (nothing: a finished run stays finished)

Every writer of a job's status (submit's first row aside) calls ``transition``: the UI and the CLI
through studio.jobs, the training and multi-process paths in workers/, the tasks (merge, GGUF export,
batch evaluation: jobs of another ``kind``, workers/inference/task.py), lost-worker detection here.
The current status is read and the new one written in one database transaction, so two processes
racing to end the same job cannot both win. No torch here.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from . import db
from .liveness import gone

log = logging.getLogger("studio.lifecycle")

STATES = db.STATUSES
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"completed", "failed", "cancelled", "interrupted"}),
    "completed": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "interrupted": frozenset({"queued"}),
}
HEARTBEAT_STALE_SECONDS = float(os.environ.get("STUDIO_HEARTBEAT_STALE", "120"))
WORKER_BEAT_SECONDS = 30.0  # how often a worker or an inference server says it is alive


class IllegalTransition(ValueError):
    """A move the table does not allow; the message is one sentence."""


def _article(state: str) -> str:
    return "an" if state[0] in "aeiou" else "a"


def allowed(current: str, to: str) -> bool:
    return to in TRANSITIONS.get(current, ())


def check(current: str, to: str) -> None:
    """Raise IllegalTransition unless ``current -> to`` is in the table."""
    if not allowed(current, to):
        raise IllegalTransition(f"{_article(current)} {current} run cannot become {to}")


def transition(job_id: str, to: str, message: str = "", **fields) -> db.Job:
    """Move the job to ``to`` (recording ``message`` in its event log and setting ``fields``), or raise
    IllegalTransition and change nothing. KeyError for an unknown job."""
    if to not in TRANSITIONS:
        raise IllegalTransition(f"'{to}' is not a job state; the states are {', '.join(STATES)}")
    return db.set_status(job_id, to, message, check=check, **fields)


def settle(job_id: str, to: str, message: str = "", **fields) -> str:
    """A worker's end-of-run transition: made when legal; otherwise another process already moved the job
    (a cancel, lost-worker detection), its state stands and is returned, and the refusal is logged."""
    try:
        return transition(job_id, to, message, **fields).status
    except IllegalTransition as exc:
        log.warning("job %s stays as it is: %s", job_id, exc)
        return db.get_job(job_id).status


def note(job_id: str, message: str) -> None:
    """An entry in the job's event log that changes nothing (a retry while running, say)."""
    with db.session() as s:
        job = s.get(db.Job, job_id)
        if job is None:
            raise KeyError(job_id)
        s.add(db.JobEvent(job_id=job_id, status=job.status, message=message))
        s.commit()


def mark_lost_jobs(stale_seconds: float | None = None) -> list[str]:
    """Running jobs whose worker died (same host: pid gone, a zombie, or reused) or whose heartbeat is stale
    -> interrupted."""
    stale_seconds = HEARTBEAT_STALE_SECONDS if stale_seconds is None else stale_seconds
    now = time.time()
    lost = []
    for job in db.list_jobs(("running",), kind=None):
        why = gone(job.worker_host, job.worker_pid, job.worker_pid_start, job.heartbeat_at, stale_seconds, now)
        again = "resume it from its last checkpoint" if job.kind == "train" else "start it again"
        if why and settle(job.id, "interrupted", why, finished_at=now,
                          error=f"interrupted at step {job.current_step}: {why}; {again}") == "interrupted":
            lost.append(job.id)
    return lost


def live_rows(rows: list, remove, stale_seconds: float | None = None) -> list:
    """The rows of beating processes (workers, inference servers) that are running now: on this host a live
    pid, elsewhere a recent beat. Rows of processes that died without removing theirs are removed on the way
    (``remove(row_id)``): at once on this host, after a day elsewhere."""
    stale_seconds = max(HEARTBEAT_STALE_SECONDS, 3 * WORKER_BEAT_SECONDS) if stale_seconds is None else stale_seconds
    here, t = socket.gethostname(), time.time()
    live = []
    for row in rows:
        if gone(row.host, row.pid, row.pid_start, row.seen_at, stale_seconds, t):
            if row.host == here or t - row.seen_at > 24 * 3600:
                remove(row.id)
            continue
        live.append(row)
    return live
