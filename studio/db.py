"""SQLModel tables and the few queries the studio needs.

The worker reports to the UI only through these tables. SQLite by default (one file under the data
directory, WAL mode so the UI reads while the worker writes); PostgreSQL through STUDIO_DATABASE_URL.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import JSON, BigInteger, event
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select

from . import liveness, migrations
from .atomic import atomic_path
from .method_info import METHOD_METRICS

log = logging.getLogger("studio.db")

ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled", "interrupted")
STATUSES = ACTIVE + FINISHED
TASK_KINDS = ("merge", "gguf", "evaluate")  # jobs that are not training runs: same lifecycle, same queue


def now() -> float:
    return time.time()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class DatasetRecord(SQLModel, table=True):
    __tablename__ = "datasets"
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    filename: str                      # the name the user uploaded
    path: str                          # relative to the data directory
    sha256: str = Field(index=True)
    format: str
    kind: str                          # chat | text | preference
    rows: int
    stats_json: str = "{}"
    mapping_json: str = "{}"
    fill_json: str = "{}"              # template blank -> value, filled in as the rows are read
    created_at: float = Field(default_factory=now)

    @property
    def stats(self) -> dict:
        return json.loads(self.stats_json or "{}")

    @property
    def mapping(self) -> dict:
        return json.loads(self.mapping_json or "{}")

    @property
    def fill(self) -> dict:
        return json.loads(self.fill_json or "{}")


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True)
    spec_json: str                     # the full JobSpec
    status: str = Field(default="queued", index=True)
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    error: str | None = None           # one human sentence; the traceback goes to the job's log file
    output_dir: str = ""               # relative to the data directory
    adapter_path: str | None = None    # relative to the data directory
    total_steps: int | None = None
    current_step: int = 0
    epoch: float | None = None
    cancel_requested: bool = False
    task_id: str | None = None
    worker_host: str | None = None
    worker_pid: int | None = None
    worker_pid_start: int | None = Field(default=None, sa_type=BigInteger)  # liveness.process_start(worker_pid)
    device: str | None = None
    summary_json: str = "{}"
    group_id: str | None = Field(default=None, index=True)  # the sweep the run belongs to
    kind: str = Field(default="train", index=True)  # train | merge | gguf | evaluate (TASK_KINDS)
    progress_message: str | None = None  # what a task is doing now ("writing the GGUF file"), beside the steps

    @property
    def spec(self) -> dict:
        return json.loads(self.spec_json)

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_json or "{}")


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True, foreign_key="jobs.id")
    status: str
    message: str = ""
    time: float = Field(default_factory=now)


class MetricPoint(SQLModel, table=True):
    __tablename__ = "metric_points"
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True, foreign_key="jobs.id")
    step: int = Field(index=True)
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    num_tokens: float | None = None
    memory_gb: float | None = None
    time: float = Field(default_factory=now)
    extra: dict | None = Field(default=None, sa_type=JSON)  # the method's own metrics (studio.method_info)

    def as_row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in METRIC_KEYS} | (self.extra or {})


class WorkerRecord(SQLModel, table=True):
    """A running worker and the device it trains on: the Train form's memory estimate warns against it."""
    __tablename__ = "workers"
    id: str = Field(primary_key=True)  # host:pid
    host: str
    pid: int
    pid_start: int | None = Field(default=None, sa_type=BigInteger)  # liveness.process_start(pid)
    device: str                        # "cuda" or "cpu"
    device_name: str = ""
    memory_gb: float = 0.0             # per GPU on cuda; the machine's RAM on cpu
    gpu_count: int = 0
    bf16: bool = False                 # bf16 computes natively (precision "auto" trains in bf16)
    fast_4bit: bool = True             # bitsandbytes has fast 4-bit kernels here (GPU, or a CPU with AVX-512)
    started_at: float = Field(default_factory=now)
    seen_at: float = Field(default_factory=now, index=True)


class InferenceServerRecord(SQLModel, table=True):
    """A running OpenAI-compatible inference server: where clients find it and which bases it holds."""
    __tablename__ = "inference_servers"
    id: str = Field(primary_key=True)  # host:pid
    host: str
    pid: int
    pid_start: int | None = Field(default=None, sa_type=BigInteger)  # liveness.process_start(pid)
    url: str                           # the OpenAI base URL, ending in /v1
    device: str                        # "cuda" or "cpu"
    loaded_bases: list | None = Field(default=None, sa_type=JSON)  # [{"model", "memory_mb"}], most recent last
    started_at: float = Field(default_factory=now)
    seen_at: float = Field(default_factory=now, index=True)


METRIC_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second",
               "num_tokens", "memory_gb", "time")

_engines: dict[str, Engine] = {}


SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    # Switching a fresh file to WAL takes an exclusive lock and SQLite answers "database is locked" at once,
    # without its busy handler, when another process (a UI and workers starting together) holds the file.
    # WAL is a property of the file, so waiting for the others to finish is enough.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    if url is None:
        from .settings import get_settings

        url = get_settings().database_url
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        migrations.upgrade(engine)  # create_all + pending migrations, under a lock (studio/migrations.py)
        _engines[url] = engine
    return engine


def checkpoint() -> None:
    """Fold SQLite's write-ahead log into the database file and empty it, so that the file alone holds
    every row (called when a process exits cleanly). Nothing to do on PostgreSQL."""
    for engine in _engines.values():
        if engine.dialect.name != "sqlite":
            continue
        try:
            with engine.connect() as conn:
                busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        except Exception as exc:  # exiting anyway: the log stays and is folded in by the next process
            log.warning("could not checkpoint %s: %s", engine.url.database, exc)
            continue
        if busy:
            log.info("%s is in use by another process; its write-ahead log stays for now", engine.url.database)


def backup(target: Path) -> Path:
    """Copy the SQLite database to ``target`` (a new file) with SQLite's online backup, consistent while
    the UI and workers keep writing. Written beside ``target`` first, so a failure leaves no partial file.
    Returns the database file that was copied."""
    engine = get_engine()
    raw = engine.raw_connection()
    try:
        with atomic_path(target) as partial:
            dest = sqlite3.connect(partial)
            try:
                raw.driver_connection.backup(dest)
                dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            finally:
                dest.close()
    finally:
        raw.close()
    return Path(engine.url.database)


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


@contextmanager
def session() -> Iterator[Session]:
    with Session(get_engine(), expire_on_commit=False) as s:
        yield s


# ---- datasets -------------------------------------------------------------------------------

def list_datasets() -> list[DatasetRecord]:
    with session() as s:
        return list(s.exec(select(DatasetRecord).order_by(DatasetRecord.created_at.desc())))


def _by_id_or_name(model, key: str):
    """A row by primary key, else by its unique-ish ``name`` column (users type either)."""
    with session() as s:
        row = s.get(model, key)
        if row is None:
            row = s.exec(select(model).where(model.name == key)).first()
        return row


def get_dataset(name_or_id: str) -> DatasetRecord | None:
    return _by_id_or_name(DatasetRecord, name_or_id)


def find_dataset_by_hash(sha256: str) -> DatasetRecord | None:
    with session() as s:
        return s.exec(select(DatasetRecord).where(DatasetRecord.sha256 == sha256)).first()


# ---- jobs -----------------------------------------------------------------------------------

def get_job(job_id: str) -> Job | None:
    """A job by id (any kind), else a training run by name (a task's name never shadows a run's)."""
    with session() as s:
        return s.get(Job, job_id) or s.exec(select(Job).where(Job.name == job_id, Job.kind == "train")).first()


def list_jobs(statuses: tuple[str, ...] | None = None, kind: str | tuple[str, ...] | None = "train") -> list[Job]:
    """Jobs newest first: training runs unless ``kind`` names task kinds (or None: every kind)."""
    with session() as s:
        q = select(Job).order_by(Job.created_at.desc())
        if statuses:
            q = q.where(Job.status.in_(statuses))  # type: ignore[attr-defined]
        if kind is not None:
            q = q.where(Job.kind.in_((kind,) if isinstance(kind, str) else kind))  # type: ignore[attr-defined]
        return list(s.exec(q))


def _with_pid_start(values: dict[str, Any], pid_key: str, start_key: str) -> dict[str, Any]:
    """A row that records a pid records that process's start time too (a reused pid then reads as dead):
    known for this process's own pid, unknown (None) for another's unless given."""
    if pid_key not in values or start_key in values:
        return values
    return {**values, start_key: liveness.own_start() if values[pid_key] == os.getpid() else None}


def update_job(job_id: str, **values: Any) -> Job:
    values = _with_pid_start(values, "worker_pid", "worker_pid_start")
    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise KeyError(job_id)
        for k, v in values.items():
            setattr(job, k, v)
        s.add(job)
        s.commit()
        s.refresh(job)
        return job


def set_status(job_id: str, status: str, message: str = "", check: Callable[[str, str], None] | None = None,
               **values: Any) -> Job:
    """Persist a transition with its timestamp (and the job's new fields) in one transaction; ``check(current,
    new)`` may refuse it by raising, with the row locked. Code changes a job's status through
    studio.lifecycle.transition, which passes its table as ``check``; tests stage states here directly."""
    assert status in STATUSES, status
    values = _with_pid_start(values, "worker_pid", "worker_pid_start")
    with session() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise KeyError(job_id)
        if check is not None:
            check(job.status, status)
        job.status = status
        for k, v in values.items():
            setattr(job, k, v)
        s.add(job)
        s.add(JobEvent(job_id=job_id, status=status, message=message))
        s.commit()
        s.refresh(job)
        return job


def job_events(job_id: str) -> list[JobEvent]:
    with session() as s:
        return list(s.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def group_jobs(group_id: str) -> list[Job]:
    """The runs of one sweep, oldest (first member) first."""
    with session() as s:
        return list(s.exec(select(Job).where(Job.group_id == group_id).order_by(Job.created_at)))


def queue_position(job: Job) -> int | None:
    """1-based position among queued jobs, oldest first."""
    if job.status != "queued":
        return None
    with session() as s:
        ahead = s.exec(select(Job.id).where(Job.status == "queued", Job.created_at < job.created_at)).all()
        return len(ahead) + 1


def add_metrics(job_id: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with session() as s:
        for row in rows:
            extra = {k: row[k] for k in METHOD_METRICS if row.get(k) is not None}
            s.add(MetricPoint(job_id=job_id, extra=extra or None,
                              **{k: v for k, v in row.items() if k in METRIC_KEYS}))
        s.commit()


def metrics_since(job_id: str, after_id: int = 0) -> list[MetricPoint]:
    """Metric points newer than ``after_id`` (incremental polling)."""
    with session() as s:
        q = select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.id > after_id).order_by(MetricPoint.id)
        return list(s.exec(q))


def metric_rows(job_id: str) -> list[dict[str, Any]]:
    return [m.as_row() for m in metrics_since(job_id)]


def delete_metrics_after(job_id: str, step: int) -> None:
    """On resume, forget points logged after the checkpoint we restart from (no repeated steps)."""
    with session() as s:
        for m in s.exec(select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step)):
            s.delete(m)
        s.commit()


# ---- workers --------------------------------------------------------------------------------

def _register(model, facts: dict) -> Any:
    """Insert or refresh a beating process's row (``id`` = host:pid), with its pid's start time."""
    facts = _with_pid_start(facts, "pid", "pid_start")
    with session() as s:
        row = s.get(model, facts["id"])
        if row is None:
            row = model(**facts)
        else:
            for k, v in facts.items():
                setattr(row, k, v)
        row.seen_at = now()
        s.add(row)
        s.commit()
        s.refresh(row)
        return row


def _touch(model, row_id: str, **fields: Any) -> bool:
    """Refresh a beating process's row; False when there is none (removed, or a restored database lacks it)."""
    with session() as s:
        row = s.get(model, row_id)
        if row is None:
            return False
        row.seen_at = now()
        for k, v in fields.items():
            setattr(row, k, v)
        s.add(row)
        s.commit()
        return True


def _remove(model, row_id: str) -> None:
    with session() as s:
        row = s.get(model, row_id)
        if row is not None:
            s.delete(row)
            s.commit()


def _newest_first(model) -> list:
    with session() as s:
        return list(s.exec(select(model).order_by(model.seen_at.desc())))


def register_worker(**facts: Any) -> WorkerRecord:
    """Insert or refresh this worker's row (``id`` = host:pid)."""
    return _register(WorkerRecord, facts)


def touch_worker(worker_id: str) -> bool:
    return _touch(WorkerRecord, worker_id)


def remove_worker(worker_id: str) -> None:
    _remove(WorkerRecord, worker_id)


def list_workers() -> list[WorkerRecord]:
    return _newest_first(WorkerRecord)


# ---- inference servers ------------------------------------------------------------------------

def register_inference_server(**facts: Any) -> InferenceServerRecord:
    """Insert or refresh an inference server's row (``id`` = host:pid)."""
    return _register(InferenceServerRecord, facts)


def touch_inference_server(server_id: str, loaded_bases: list[dict] | None = None) -> bool:
    return _touch(InferenceServerRecord, server_id, **({} if loaded_bases is None else {"loaded_bases": loaded_bases}))


def remove_inference_server(server_id: str) -> None:
    _remove(InferenceServerRecord, server_id)


def list_inference_servers() -> list[InferenceServerRecord]:
    return _newest_first(InferenceServerRecord)

