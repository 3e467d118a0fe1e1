"""Beyond one machine: a Redis queue, a PostgreSQL database, several consumers sharing one data directory.

* the persistence queries and the schema migrations pass the same tests on SQLite and on PostgreSQL;
* two real consumer processes pull from one Redis queue and every job runs exactly once;
* a consumer killed mid-training: its job becomes 'interrupted', resumes on the other consumer, and
  completes with its full step count and one unbroken metric series;
* every path the database stores is relative to the data directory.

Each run gets its own PostgreSQL database and its own Redis database number, dropped and flushed
afterwards. Tests that need a server are skipped, with the reason, when it does not answer on loopback
(CI runs both). STUDIO_TEST_REDIS_URL and STUDIO_TEST_POSTGRES_URL point them elsewhere.
"""
from __future__ import annotations

import html
import json
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import identity_data
from conftest import wait_for
from workerproc import Worker

pytestmark = pytest.mark.cluster

REDIS_URL = os.environ.get("STUDIO_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CLAIM_KEY = "studio-test-claim"


# ---- servers -------------------------------------------------------------------------------------

def _unreachable(host: str | None, port: int | None, default_port: int) -> str | None:
    host, port = host or "127.0.0.1", port or default_port
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError as exc:
        return f"nothing answers on {host}:{port} ({exc.strerror or exc})"
    return None


@pytest.fixture(scope="session")
def redis_server() -> str:
    from urllib.parse import urlparse

    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis client is not installed (pip install -e '.[cluster]')")
    u = urlparse(REDIS_URL)
    if why := _unreachable(u.hostname, u.port, 6379):
        pytest.skip(f"Redis is not running: {why}")
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_server() -> str:
    from sqlalchemy.engine import make_url

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[cluster]')")
    u = make_url(POSTGRES_URL)
    if why := _unreachable(u.host, u.port, 5432):
        pytest.skip(f"PostgreSQL is not running: {why}")
    return POSTGRES_URL


@contextmanager
def fresh_postgres_database():
    """A new, empty database for this test run; dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    from studio import db

    base = make_url(POSTGRES_URL)
    name = f"studio_test_{uuid.uuid4().hex[:12]}"
    admin = dict(host=base.host or "127.0.0.1", port=base.port or 5432, user=base.username, password=base.password,
                 dbname=base.database or "postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        db.dispose_engines()  # no pooled connection may keep the database open
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_redis_database():
    """An empty Redis database number, claimed with SET NX so parallel runs never share one; flushed after."""
    import redis

    token = uuid.uuid4().hex
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        if client.set(CLAIM_KEY, token, nx=True, ex=1800):
            if client.dbsize() == 1:
                break
            client.delete(CLAIM_KEY)  # in use by something else: leave it alone
        client.close()
    else:
        pytest.skip("no empty Redis database among 1-15 to run the cluster tests in")
    try:
        yield f"{REDIS_URL}/{number}"
    finally:
        client.flushdb()
        client.close()


@contextmanager
def pointed_at(home: Path, database_url: str | None = None, queue_url: str | None = None):
    """This test process (the 'UI host') talks to the given data directory, database and queue."""
    from studio import db, settings
    from workers import queue

    saved_storage = queue.huey.storage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_HOME", str(home))
        for var, value in (("STUDIO_DATABASE_URL", database_url), ("STUDIO_QUEUE_URL", queue_url)):
            if value:
                mp.setenv(var, value)
            else:
                mp.delenv(var, raising=False)
        settings.reset_settings()
        db.dispose_engines()
        queue.huey.storage = queue.make_huey().storage
        try:
            yield
        finally:
            queue.huey.storage = saved_storage
            settings.reset_settings()
            db.dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, studio_home):
    """The same persistence tests on the embedded and the server database."""
    if request.param == "sqlite":
        with pointed_at(studio_home):
            yield "sqlite"
        return
    request.getfixturevalue("postgres_server")
    with fresh_postgres_database() as url, pointed_at(studio_home, database_url=url):
        yield url


# ---- persistence: SQLite and PostgreSQL ----------------------------------------------------------

def _job(name: str, created_at: float, **values):
    from studio import db
    from studio.settings import get_settings

    settings = get_settings()
    job = db.Job(name=name, spec_json=json.dumps({"dataset": "identity"}), created_at=created_at, **values)
    job.output_dir = settings.relative(settings.jobs_dir / job.id)
    with db.session() as s:
        s.add(job)
        s.add(db.JobEvent(job_id=job.id, status="queued", message="submitted"))
        s.commit()
    return job


def test_datasets_persist(database, tmp_path):
    from studio import db, library
    from studio.datasets import DatasetError
    from studio.settings import get_settings

    rec, created = library.add(identity_data.write(tmp_path / "identity.jsonl"), name="identity")
    assert created and rec.rows == len(identity_data.rows()) and rec.kind == "chat"
    assert db.get_dataset("identity").id == rec.id == db.get_dataset(rec.id).id
    assert db.find_dataset_by_hash(rec.sha256).name == "identity"
    assert [d.name for d in db.list_datasets()] == ["identity"]
    assert rec.stats == db.get_dataset("identity").stats and rec.stats
    assert not Path(rec.path).is_absolute() and get_settings().resolve(rec.path).is_file()
    again, created = library.add(tmp_path / "identity.jsonl", name="other-name")
    assert not created and again.id == rec.id
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "a different file"}) + "\n")
    with pytest.raises(DatasetError, match="already exists"):
        library.add(other, name="identity")
    library.delete("identity")
    assert db.get_dataset("identity") is None and not get_settings().resolve(rec.path).exists()


def test_jobs_status_events_and_queue_positions(database):
    from studio import db, jobs

    t0 = time.time()
    a, b, c = (_job(f"run-{x}", t0 + i) for i, x in enumerate("abc"))
    assert [db.queue_position(db.get_job(j.id)) for j in (a, b, c)] == [1, 2, 3]
    assert db.get_job("run-b").id == b.id

    db.set_status(a.id, "running", "started", started_at=time.time(), worker_host="gpu-1", worker_pid=4242,
                  device="cuda:0,1 (2 x NVIDIA H100 80GB HBM3, DDP)")
    assert db.queue_position(db.get_job(a.id)) is None
    assert [db.queue_position(db.get_job(j.id)) for j in (b, c)] == [1, 2]
    db.update_job(a.id, current_step=7, epoch=0.5, heartbeat_at=time.time(), cancel_requested=True)
    db.set_status(a.id, "cancelled", "stopped at step 7", finished_at=time.time())
    got = db.get_job(a.id)
    assert (got.status, got.current_step, got.epoch, got.cancel_requested) == ("cancelled", 7, 0.5, True)
    assert (got.worker_host, got.worker_pid, got.device) == ("gpu-1", 4242,
                                                            "cuda:0,1 (2 x NVIDIA H100 80GB HBM3, DDP)")
    events = db.job_events(a.id)
    assert [(e.status, e.message) for e in events] == [
        ("queued", "submitted"), ("running", "started"), ("cancelled", "stopped at step 7")]
    assert [e.time for e in events] == sorted(e.time for e in events)

    assert {j.id for j in db.list_jobs(("queued",))} == {b.id, c.id}
    assert [j.id for j in db.list_jobs()] == [c.id, b.id, a.id]  # newest first
    with pytest.raises(KeyError):
        db.set_status("no-such-job", "running")

    jobs.delete(b.id)
    assert db.get_job(b.id) is None and db.job_events(b.id) == []


def test_metrics_incremental_reads_and_resume_trimming(database):
    from studio import db, jobs

    job = _job("metrics", time.time())
    t = time.time()
    rows = [{"step": s, "loss": 3.0 - s / 10, "learning_rate": 1e-4 * s, "grad_norm": 0.5, "num_tokens": 100.0 * s,
             "time": t + s, "epoch": s / 10, "ignored_key": "x"} for s in range(1, 11)]
    db.add_metrics(job.id, rows[:6])
    first = db.metrics_since(job.id)
    assert [m.step for m in first] == [1, 2, 3, 4, 5, 6]
    db.add_metrics(job.id, rows[6:])
    db.add_metrics(job.id, [{"step": 10, "eval_loss": 2.5, "time": t + 10.5}])
    newer = db.metrics_since(job.id, first[-1].id)
    assert [(m.step, m.eval_loss) for m in newer] == [(7, None), (8, None), (9, None), (10, None), (10, 2.5)]
    row = db.metric_rows(job.id)[3]
    assert (row["learning_rate"], row["time"], row["num_tokens"]) == (  # doubles come back bit for bit
        rows[3]["learning_rate"], rows[3]["time"], rows[3]["num_tokens"])

    db.delete_metrics_after(job.id, 6)  # resuming from checkpoint-6
    assert [m.step for m in db.metrics_since(job.id)] == [1, 2, 3, 4, 5, 6]
    db.add_metrics(job.id, rows[6:])
    assert [m.step for m in db.metrics_since(job.id)] == list(range(1, 11))

    jobs.delete(job.id)
    assert db.metrics_since(job.id) == []


# ---- migrations ----------------------------------------------------------------------------------

def _engine_for(database: str):
    from sqlalchemy import create_engine

    from studio import db
    from studio.settings import get_settings

    url = get_settings().database_url
    db.dispose_engines()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        from sqlalchemy import event

        event.listen(engine, "connect", db._sqlite_pragmas)
        return engine
    return create_engine(url)


def test_migrations_upgrade_an_old_database_and_are_idempotent(database):
    from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, inspect, select

    from studio import db, migrations

    # a 'jobs' table as an older build made it: no status, placement, progress or summary columns
    old = MetaData()
    old_jobs = Table("jobs", old, Column("id", String, primary_key=True), Column("name", String, nullable=False),
                     Column("spec_json", String, nullable=False), Column("created_at", Float, nullable=False),
                     Column("output_dir", String, nullable=False), Column("error", String))
    Table("legacy_notes", old, Column("id", Integer, primary_key=True), Column("flag", Boolean))
    # a 'datasets' table from before template blanks could be filled in when adding a file
    old_datasets = Table("datasets", old, *[Column(n, String, primary_key=n == "id") for n in (
        "id", "name", "filename", "path", "sha256", "format", "kind", "stats_json", "mapping_json")],
                         Column("rows", Integer), Column("created_at", Float))
    engine = _engine_for(database)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old_jobs.insert().values(id="old1", name="from-an-old-build", spec_json="{}",
                                              created_at=1.0, output_dir="jobs/old1"))
        conn.execute(old_datasets.insert().values(id="d1", name="old-set", filename="a.jsonl", path="datasets/a",
                                                  sha256="0" * 64, format="alpaca", kind="chat", rows=3,
                                                  stats_json="{}", mapping_json="{}", created_at=1.0))

    every = [m[0] for m in migrations.MIGRATIONS]
    assert migrations.upgrade(engine) == every and every[0] == 1
    cols = {c["name"]: c for c in inspect(engine).get_columns("jobs")}
    for name in ("status", "worker_host", "worker_pid", "device", "current_step", "cancel_requested",
                 "summary_json", "heartbeat_at"):
        assert name in cols, name
    assert "ix_jobs_status" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert inspect(engine).has_table("metric_points") and inspect(engine).has_table("legacy_notes")
    with engine.connect() as conn:
        assert conn.execute(select(migrations.schema_version.c.version)).scalars().all() == every
    engine.dispose()

    # the studio reads the old row with the model's defaults
    job = db.get_job("old1")
    assert (job.status, job.current_step, job.cancel_requested, job.summary, job.worker_host) == (
        "queued", 0, False, {}, None)
    assert db.get_dataset("old-set").fill == {} and db.get_dataset("old-set").rows == 3
    db.set_status("old1", "running", worker_host="gpu-2", device="cpu")
    assert db.get_job("from-an-old-build").worker_host == "gpu-2"
    db.dispose_engines()

    engine = _engine_for(database)
    assert migrations.upgrade(engine) == []  # nothing pending: a second start changes nothing
    seen = []
    latest = every[-1]
    later = migrations.MIGRATIONS + [(latest + 1, "a later change", lambda conn: seen.append(conn.dialect.name)),
                                     (latest + 2, "and another", migrations.add_all_model_columns)]
    assert migrations.upgrade(engine, later) == [latest + 1, latest + 2] and len(seen) == 1
    assert migrations.upgrade(engine, later) == [] and len(seen) == 1
    with engine.connect() as conn:
        assert migrations.current_version(conn) == latest + 2
    engine.dispose()


def _start_together(engines, work) -> tuple[list, list]:
    """Run ``work(engine)`` for every engine in its own thread, all released at once (processes starting
    together); returns the results and the exceptions."""
    results, errors = [], []
    barrier = threading.Barrier(len(engines))

    def start(engine):
        barrier.wait()
        try:
            results.append(work(engine))
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_migrations_on_a_fresh_database_with_concurrent_starts(database):
    from sqlalchemy import inspect

    from studio import migrations

    engines = [_engine_for(database) for _ in range(3)]
    results, errors = _start_together(engines, migrations.upgrade)
    assert not errors, errors
    # one start created and upgraded, the others found it done
    assert sorted(results) == [[], [], [m[0] for m in migrations.MIGRATIONS]]
    assert {"datasets", "jobs", "job_events", "metric_points", "schema_version"} <= set(
        inspect(engines[0]).get_table_names())
    for e in engines:
        e.dispose()


def test_a_fresh_sqlite_file_opened_by_many_connections_at_once(tmp_path):
    """A UI and workers starting together on a fresh data directory: each connection switches the file to
    WAL, and SQLite refuses that switch at once ("database is locked", no busy wait) while another
    connection is making it. Every start must wait its turn instead (this failed about 1 round in 50)."""
    from sqlalchemy import create_engine, event, text

    from studio import db

    def journal_mode(engine):
        with engine.connect() as conn:
            return conn.execute(text("PRAGMA journal_mode")).scalar()

    errors, modes = [], []
    for round_ in range(60):
        url = f"sqlite:///{tmp_path}/fresh-{round_}.db"
        engines = [create_engine(url, connect_args={"timeout": 30}) for _ in range(4)]
        for e in engines:
            event.listen(e, "connect", db._sqlite_pragmas)
        results, failed = _start_together(engines, journal_mode)
        modes += results
        errors += failed
        for e in engines:
            e.dispose()
    assert not errors, errors[:3]
    assert modes == ["wal"] * 240


# ---- real consumers on Redis + PostgreSQL --------------------------------------------------------

@dataclass
class Cluster:
    home: Path
    database_url: str
    queue_url: str
    workers: list


def _log_tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir, redis_server, postgres_server):
    from studio import db, library

    base = tmp_path_factory.mktemp("cluster")
    home = base / "shared-data"
    with fresh_redis_database() as queue_url, fresh_postgres_database() as database_url, \
            pointed_at(home, database_url, queue_url):
        db.get_engine()  # the schema exists before the consumers start
        library.add(identity_data.write(base / "identity.jsonl"), name="identity")
        env = {"STUDIO_DATABASE_URL": database_url, "STUDIO_QUEUE_URL": queue_url,
               "STUDIO_HEARTBEAT_STALE": "60", "OMP_NUM_THREADS": "1"}
        logs = [base / "worker-a.log", base / "worker-b.log"]
        workers = [Worker(home, log, **env) for log in logs]
        try:
            for w, log in zip(workers, logs):
                wait_for(lambda: "worker ready" in _log_tail(log, 100_000) or w.proc.poll() is not None, 120,
                         interval=0.2, what=f"the consumer in {log.name} to start")
                assert w.proc.poll() is None, _log_tail(log)
            yield Cluster(home, database_url, queue_url, workers)
        finally:
            for w in workers:
                w.stop()


def _spec(tiny_model_dir, **overrides):
    from studio.spec import JobSpec

    values = dict(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                  learning_rate=1e-3, per_device_train_batch_size=2, eval_split=0.0, max_length=64, precision="fp32")
    values.update(overrides)
    return JobSpec(**values)


def _loss_steps(job_id: str) -> list[int]:
    from studio import db

    return [r["step"] for r in db.metric_rows(job_id) if r["loss"] is not None]


def _assert_no_absolute_paths(home: Path) -> None:
    """No stored value mentions where this host mounts the data directory."""
    from sqlalchemy import text

    from studio import db

    with db.get_engine().connect() as conn:
        for table in ("datasets", "jobs", "job_events", "metric_points"):
            for row in conn.execute(text(f"SELECT * FROM {table}")).mappings():
                for key, value in row.items():
                    if isinstance(value, str):
                        assert str(home) not in value, f"{table}.{key} stores an absolute path: {value}"


def test_two_consumers_share_one_queue_and_each_job_runs_once(cluster, tiny_model_dir):
    from studio import db, jobs
    from studio.settings import get_settings

    ids = [jobs.submit(_spec(tiny_model_dir, max_steps=2, name=f"shared-{i}")).id for i in range(4)]
    wait_for(lambda: all(db.get_job(i).status in db.FINISHED for i in ids), 300, interval=0.5,
             what="four jobs on two consumers")
    pids = {w.pid for w in cluster.workers}
    ran_on = {}
    for i in ids:
        job = db.get_job(i)
        assert job.status == "completed", (job.error, [_log_tail(Path(w.log.name)) for w in cluster.workers])
        assert [e.status for e in db.job_events(i)] == ["queued", "running", "completed"]  # picked up once
        assert job.worker_pid in pids and job.worker_host == socket.gethostname() and job.device == "cpu"
        assert job.current_step == job.total_steps == 2 and _loss_steps(i) == [1, 2]
        assert job.output_dir == f"jobs/{job.id}" and job.adapter_path == f"jobs/{job.id}/adapter"
        assert (get_settings().resolve(job.adapter_path) / "adapter_model.safetensors").exists()
        ran_on[job.name] = job.worker_pid
    print(f"\njobs per consumer: {ran_on}")
    assert set(ran_on.values()) == pids, "both consumers took work from the shared queue"
    assert db.get_dataset("identity").path.startswith("datasets/")
    _assert_no_absolute_paths(cluster.home)


def test_killed_consumer_job_is_interrupted_and_resumes_on_the_other(cluster, tiny_model_dir, monkeypatch):
    from studio import db, jobs

    steps = 60  # at 10-50 ms a step, far more than the 5 or so that run between the checkpoint and the kill
    job = jobs.submit(_spec(tiny_model_dir, max_steps=steps, save_steps=5, name="kill-me"))
    # current_step reaches the database with the flush that follows a complete checkpoint (or every 2 s)
    wait_for(lambda: db.get_job(job.id).current_step >= 5 or db.get_job(job.id).status in db.FINISHED, 240,
             interval=0.05, what="training to pass its first checkpoint")
    job = db.get_job(job.id)
    assert job.status == "running", f"the job ended ({job.status}) before it could be killed"
    victim = next(w for w in cluster.workers if w.pid == job.worker_pid)
    survivor = next(w for w in cluster.workers if w is not victim)
    victim.signal(signal.SIGKILL)
    victim.wait(30)
    killed_at = time.time()

    # seen from another machine (the UI host): the pid means nothing there, only the heartbeat counts
    from studio import liveness

    monkeypatch.setattr(liveness, "socket", SimpleNamespace(gethostname=lambda: "ui-host"))
    wait_for(lambda: time.time() - (db.get_job(job.id).heartbeat_at or 0) > 1.0, 10, interval=0.1,
             what="the heartbeat to go stale")
    jobs.mark_lost_jobs(stale_seconds=1.0)
    monkeypatch.undo()
    job = db.get_job(job.id)
    # (the survivor's periodic check may have marked it first, by the dead pid: same outcome)
    assert job.status == "interrupted" and "resume" in job.error
    detected_after = time.time() - killed_at
    last_before = max(_loss_steps(job.id))

    jobs.resume(job.id)
    wait_for(lambda: db.get_job(job.id).status in db.FINISHED, 240, interval=0.5, what="the resumed job")
    job = db.get_job(job.id)
    assert job.status == "completed", (job.error, _log_tail(Path(survivor.log.name)))
    assert job.worker_pid == survivor.pid
    assert job.current_step == job.total_steps == steps and job.summary["steps"] == steps
    assert _loss_steps(job.id) == list(range(1, steps + 1)), "the loss curve has repeated or missing steps"
    assert [e.status for e in db.job_events(job.id)] == [
        "queued", "running", "interrupted", "queued", "running", "completed"]
    print(f"\nkilled consumer {victim.pid} at step >= {last_before}; interrupted {detected_after:.1f} s later; "
          f"resumed on consumer {survivor.pid} to step {job.current_step}")
    _assert_no_absolute_paths(cluster.home)


# ---- the cluster layout: UI, training worker and inference server as separate processes ----------

def _pane_text(history) -> str:
    """The last reply of a Chatbot pane as gradio's API returns it (a string or a list of text parts)."""
    content = history[-1]["content"] if history else ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    # the panes hold their text HTML-escaped (studio.ui.chat_tab.shown), and gradio trims it
    return html.unescape(str(content)).strip()


def test_chat_is_served_across_ui_training_worker_and_inference_server(tmp_path_factory, tiny_model_dir,
                                                                       redis_server, postgres_server):
    """docker-compose.yml's layout on Redis + PostgreSQL: `studio serve --no-worker` (the UI), `studio worker
    --no-infer` (training only) and `studio infer` (generation only), each its own process. A run trains on
    the worker; the UI process's Chat handler, called over HTTP with gradio's own client, finds the inference
    server through its row in the database and streams the base's and the run's replies from it; the UI
    process never loads torch."""
    from gradio_client import Client

    from browser import InferServer, Server, torch_mapped
    from studio import db, inference_client, jobs, library
    from studio.chat import AUTO_BASE, GenerationSettings, as_messages
    from studio.models import shown_model

    base_dir = tmp_path_factory.mktemp("split")
    home = base_dir / "shared-data"
    with fresh_redis_database() as queue_url, fresh_postgres_database() as database_url, \
            pointed_at(home, database_url, queue_url):
        db.get_engine()
        library.add(identity_data.write(base_dir / "identity.jsonl"), name="identity")
        env = {"STUDIO_DATABASE_URL": database_url, "STUDIO_QUEUE_URL": queue_url, "OMP_NUM_THREADS": "1"}
        trainer = Worker(home, base_dir / "trainer.log", args=("--no-infer",), **env)
        infer = InferServer(home, base_dir / "infer.log", **env)
        ui = None
        try:
            wait_for(lambda: "worker ready" in _log_tail(base_dir / "trainer.log", 100_000)
                     or trainer.proc.poll() is not None, 120, interval=0.2, what="the training worker to start")
            assert trainer.proc.poll() is None, _log_tail(base_dir / "trainer.log")
            infer.wait_ready()

            # a run trains on the training worker (a high learning rate so the adapter changes greedy replies)
            job = jobs.submit(_spec(tiny_model_dir, max_steps=6, learning_rate=5e-2, name="split-run"))
            wait_for(lambda: db.get_job(job.id).status in db.FINISHED, 300, interval=0.5, what="the run")
            job = db.get_job(job.id)
            assert job.status == "completed", (job.error, _log_tail(base_dir / "trainer.log"))
            assert job.worker_pid == trainer.pid

            # the only inference server in the database is the separate one: the worker started none
            servers = inference_client.live_servers()
            assert [s.pid for s in servers] == [infer.proc.pid], [(s.pid, s.url) for s in servers]

            ui = Server(home, base_dir / "ui.log", worker=False, **env)  # started now: its Chat lists the run
            ui.wait_ready()
            client = Client(ui.url, verbose=False)
            # sampled with a fixed seed: the same reply every time, and words even from a random model (greedy
            # decoding of the tiny model repeats one whitespace token)
            settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0,
                                          repetition_penalty=1.0, seed=7)
            prompt = "What is your name?"
            chat = client.submit(prompt, AUTO_BASE, job.id, "", "", "", [], [], [], [], settings.max_new_tokens,
                                 settings.temperature, settings.top_p, settings.top_k, settings.repetition_penalty,
                                 settings.seed, api_name="/respond")
            updates = list(chat)
            final = chat.result()
            base_reply, run_reply, note = _pane_text(final[0]), _pane_text(final[1]), final[-1]
            assert not note, note
            assert base_reply and run_reply, final
            seen = {_pane_text(u[1]) for u in updates if u[1]}
            assert len(seen) > 1, "the run's reply reached the UI in one piece, not streamed"

            # the same replies straight from the registered server: the UI's came from it
            url = inference_client.pick_server(shown_model(str(tiny_model_dir))).url
            messages = as_messages([{"role": "user", "content": prompt}], "")
            direct = [list(inference_client.chat_stream(messages, model, settings, url=url))[-1]
                      for model in (shown_model(str(tiny_model_dir)), job.name)]
            direct = [_pane_text([{"content": text}]) for text in direct]
            assert [base_reply, run_reply] == direct
            assert base_reply != run_reply, "the run's adapter changed nothing"
            served = [b["model"] for s in inference_client.live_servers() for b in s.loaded_bases or []]
            assert served == [shown_model(str(tiny_model_dir))]
            assert torch_mapped(ui.proc.pid) == [], "the UI process loaded torch"
        finally:
            if ui is not None:
                ui.stop()
            infer.stop()
            trainer.stop()


# ---- reaching a worker's inference server from another machine ----------------------------------

def test_the_registered_url_names_the_advertised_host():
    from workers.inference.server import public_url

    assert public_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/v1"
    assert public_url("0.0.0.0", 8000) == f"http://{socket.getfqdn()}:8000/v1"  # no advertise host: as before
    assert public_url("0.0.0.0", 8000, "gpu-1.lan") == "http://gpu-1.lan:8000/v1"
    assert public_url("::", 8000, "fd00::5") == "http://[fd00::5]:8000/v1"


def _loopback_alias() -> str:
    """127.0.0.2: a second loopback address, the 'other machine' view. Linux answers on all of 127/8."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError as exc:
        pytest.skip(f"127.0.0.2 cannot be bound here ({exc.strerror or exc}): no second loopback view")
    return "127.0.0.2"


def test_a_worker_is_chatted_with_at_the_address_it_advertises(studio_home, tiny_model_dir, tmp_path):
    """Two views of the network on one machine: the workers listen on 127.0.0.2 only, the client (the UI's
    side, this process) finds them through their rows in the database. A worker that advertises 127.0.0.2 is
    reached and answers; one that registers 127.0.0.1 (what a worker without STUDIO_INFER_ADVERTISE
    registered, seen from the UI container) is not, so a loopback registration fails this test."""
    from adapter_fixtures import make_job
    from studio import inference_client
    from studio.chat import GenerationSettings

    alias = _loopback_alias()
    run = make_job(tiny_model_dir, "reached-run")
    env = {"STUDIO_INFER_HOST": alias, "OMP_NUM_THREADS": "1"}
    logs = {"advertised": tmp_path / "advertised.log", "loopback": tmp_path / "loopback.log"}
    workers = {"advertised": Worker(studio_home, logs["advertised"], **env, STUDIO_INFER_ADVERTISE=alias),
               "loopback": Worker(studio_home, logs["loopback"], **env, STUDIO_INFER_ADVERTISE="127.0.0.1")}
    try:
        def registered():
            for name, w in workers.items():
                assert w.proc.poll() is None, _log_tail(logs[name])
            rows = {s.pid: s for s in inference_client.live_servers()}
            return {name: rows[w.pid] for name, w in workers.items()} if all(
                w.pid in rows for w in workers.values()) else None

        rows = wait_for(registered, 180, interval=0.5, what="both workers' inference servers to register")
        assert rows["advertised"].url.startswith(f"http://{alias}:"), rows["advertised"].url
        assert rows["loopback"].url.startswith("http://127.0.0.1:"), rows["loopback"].url

        messages = [{"role": "user", "content": "What is your name?"}]
        settings = GenerationSettings(max_new_tokens=4, temperature=0.0)
        with pytest.raises(inference_client.InferenceError, match="cannot reach the inference server at "
                                                                  "http://127.0.0.1:"):
            list(inference_client.chat_stream(messages, run.name, settings, url=rows["loopback"].url))

        workers.pop("loopback").stop()
        wait_for(lambda: [s.pid for s in inference_client.live_servers()] == [workers["advertised"].pid], 30,
                 what="the loopback worker's row to go")
        picked = inference_client.pick_server()
        assert picked.url == rows["advertised"].url
        replies = list(inference_client.chat_stream(messages, run.name, settings))
        assert replies, _log_tail(logs["advertised"])
    finally:
        for w in workers.values():
            w.stop()
