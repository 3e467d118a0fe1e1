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

A run always ends with its reason. A worker whose database refuses the end (a full disk, a read-only file, a
server gone) keeps it in the file reserved for it when the run started (<home>/settling/<job>.json: overwriting
it needs no new space) and tries again while it lives; if it stops or dies first, the next sweep (a worker's
start, the minutely check, the UI) records that end, never "interrupted" in its place.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.exc import OperationalError

from . import db
from .liveness import gone, stale
from .retry import Retry

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
def heartbeat_stale_seconds() -> float:
    """STUDIO_HEARTBEAT_STALE, as studio.settings parses it (one sentence for a bad value)."""
    from .settings import get_settings

    return get_settings().heartbeat_stale_seconds
WORKER_BEAT_SECONDS = 30.0  # how often a worker or an inference server says it is alive
SETTLE_WAITS = (1.0, 30.0)  # seconds before the second try at recording a run's end, and the longest wait
ENDS_DIR = "settling"       # <home>/settling/<job>.json: room for a run's end, and an end not recorded yet
END_BYTES = 64 * 1024       # reserved when the run starts, while the disk has room

_running_here: dict[str, float | None] = {}  # job -> its started_at: runs this process started and has not ended


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
    IllegalTransition and change nothing. KeyError for an unknown job. A run this process starts (``worker_pid``
    is its own) gets room reserved for its end."""
    if to not in TRANSITIONS:
        raise IllegalTransition(f"'{to}' is not a job state; the states are {', '.join(STATES)}")
    job = db.set_status(job_id, to, message, check=check, **fields)
    if to == "running" and job.worker_pid == os.getpid() and job.worker_host == socket.gethostname():
        _running_here[job_id] = job.started_at
        _reserve(job_id)
    elif to != "running":
        _forget(job_id)
    return job


def settle(job_id: str, to: str, message: str = "", stop: threading.Event | None = None, **fields) -> str:
    """A worker's end-of-run transition: made when legal; otherwise another process already moved the job
    (a cancel, lost-worker detection), its state stands and is returned, and the refusal is logged.

    A database that refuses the write (full disk, read-only file, unreachable server) is tried again, after
    SETTLE_WAITS seconds growing, until it takes the end or ``stop`` is set; the end waits in the run's file
    under ENDS_DIR meanwhile, for mark_lost_jobs to record should this process stop or die first. Giving up
    returns ``to``: the end this process decided."""
    retry = None
    while True:
        try:
            status = _settle_once(job_id, to, message, **fields)
        except OperationalError as exc:
            if retry is None:
                _keep(job_id, {"to": to, "message": message, "fields": fields,
                               "started_at": _running_here.get(job_id, _no_attempt)})
                retry = Retry(f"recording job {job_id} as {to}", log, *SETTLE_WAITS, trace=False)
            wait = retry.failed(exc)
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                log.warning("job %s: stopping before the database took its end (%s); the next worker start or sweep "
                            "records it", job_id, to)
                return to
            continue
        if retry is not None:
            retry.worked()
        _forget(job_id)
        return status


def _settle_once(job_id: str, to: str, message: str = "", **fields) -> str:
    try:
        return transition(job_id, to, message, **fields).status
    except IllegalTransition as exc:
        log.warning("job %s stays as it is: %s", job_id, exc)
        return db.get_job(job_id).status


# ---- the ends the database has not taken yet ----------------------------------------------------------

_no_attempt = "unknown"  # a kept end of a run this process did not start: recorded whatever attempt is running


def _end_file(job_id: str) -> Path:
    from .settings import get_settings

    return get_settings().home / ENDS_DIR / f"{job_id}.json"


def _reserve(job_id: str) -> None:
    """Room for the run's end, taken while the disk has some: a full disk still takes an overwrite of it."""
    try:
        path = _end_file(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b" " * END_BYTES)
    except OSError as exc:
        log.warning("job %s: no room reserved for its end (%s); should the disk fill up and this worker die, the "
                    "run will read interrupted", job_id, exc)


def _keep(job_id: str, end: dict) -> None:
    """Write ``end`` over the run's reserved room (a new file where there is none)."""
    data = json.dumps(end, default=str).encode()
    path = _end_file(job_id)
    try:
        try:
            with open(path, "r+b") as fh:
                room = fh.seek(0, os.SEEK_END)
                fh.seek(0)
                fh.write(data.ljust(room, b" "))
                fh.flush()
                os.fsync(fh.fileno())
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    except OSError as exc:
        log.warning("job %s: its end could not be kept on disk either (%s); it is kept in memory while this worker "
                    "lives", job_id, exc)


def _forget(job_id: str) -> None:
    _running_here.pop(job_id, None)
    try:
        _end_file(job_id).unlink(missing_ok=True)
    except OSError:
        pass


def kept_ends() -> dict[str, dict | None]:
    """Job id -> the end its worker could not record yet, or None where only room is reserved."""
    from .settings import get_settings

    ends: dict[str, dict | None] = {}
    for path in (get_settings().home / ENDS_DIR).glob("*.json"):
        ends[path.stem] = None
        try:
            with open(path, "rb") as fh:
                if fh.read(1) == b"{":  # room alone is blank
                    ends[path.stem] = json.loads(b"{" + fh.read())
        except (OSError, ValueError):  # gone since, or torn by a crash: no end to record
            pass
    return ends


def _record_kept(job: db.Job, end: dict) -> str:
    """The end a worker kept, recorded now (when it is the end of the attempt that is running)."""
    status = _settle_once(job.id, end["to"], end.get("message", ""), **end.get("fields", {}))
    _forget(job.id)
    return status


def note(job_id: str, message: str) -> None:
    """An entry in the job's event log that changes nothing (a retry while running, say)."""
    with db.session() as s:
        job = s.get(db.Job, job_id)
        if job is None:
            raise KeyError(job_id)
        s.add(db.JobEvent(job_id=job_id, status=job.status, message=message))
        s.commit()


def mark_lost_jobs(stale_seconds: float | None = None) -> list[str]:
    """Jobs whose worker kept an end it could not record get that end; running jobs whose worker is lost become
    interrupted. Returns the jobs now interrupted.

    A worker is lost when its process on this host is gone (dead, a zombie, its pid reused), when it is this very
    process and does not run the job, or when the job's heartbeat is older than ``stale_seconds``, on this host
    too: a live pid is no proof where the database may have moved (a backup restored while the worker it names
    lives on, running something else)."""
    stale_seconds = heartbeat_stale_seconds() if stale_seconds is None else stale_seconds
    ends = kept_ends()  # read before the jobs: a run's room is reserved after it became running
    now = time.time()
    lost = []
    active = db.list_jobs(db.ACTIVE, kind=None)  # a queued job too: its worker may have failed it at the start
    for job in active:
        end = ends.get(job.id)
        if end is not None and end.get("started_at") in (job.started_at, _no_attempt):
            if _record_kept(job, end) == "interrupted":
                lost.append(job.id)
            continue
        if job.status != "running" or job.id in _running_here:
            continue
        why = _lost(job, stale_seconds, now)
        again = "resume it from its last checkpoint" if job.kind == "train" else "start it again"
        if why and _settle_once(job.id, "interrupted", why, finished_at=now,
                                error=f"interrupted at step {job.current_step}: {why}; {again}") == "interrupted":
            lost.append(job.id)
    for job_id in set(ends) - {job.id for job in active} - set(_running_here.copy()):  # ended or deleted since
        _forget(job_id)
    return lost


def _lost(job: db.Job, stale_seconds: float, now: float) -> str | None:
    """Why the running ``job``'s worker is lost, or None."""
    why = gone(job.worker_host, job.worker_pid, job.worker_pid_start, job.heartbeat_at, stale_seconds, now)
    if why:
        return why
    if job.worker_host == socket.gethostname() and job.worker_pid == os.getpid():  # and not in _running_here
        return "its worker is not running it"
    return stale(job.heartbeat_at, stale_seconds, now)


def live_rows(rows: list, remove, stale_seconds: float | None = None) -> list:
    """The rows of beating processes (workers, inference servers) that are running now: on this host a live
    pid, elsewhere a recent beat. Rows of processes that died without removing theirs are removed on the way
    (``remove(row_id)``): at once on this host, after a day elsewhere."""
    stale_seconds = max(heartbeat_stale_seconds(), 3 * WORKER_BEAT_SECONDS) if stale_seconds is None else stale_seconds
    here, t = socket.gethostname(), time.time()
    live = []
    for row in rows:
        if gone(row.host, row.pid, row.pid_start, row.seen_at, stale_seconds, t):
            if row.host == here or t - row.seen_at > 24 * 3600:
                remove(row.id)
            continue
        live.append(row)
    return live
