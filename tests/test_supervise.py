"""`studio serve` owns its worker: liveness that a zombie or a reused pid cannot fool, SIGTERM that stops
the UI and the worker alike, and a database file that holds everything after a clean exit; `studio
backup` copies it while the studio runs. Real `studio serve` processes, a real SQLite file."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from browser import SHARED_MODELS, Server
from conftest import wait_for
from workerproc import ROOT, worker_env

LONG_RUN = 20_000


@pytest.fixture
def home(studio_home, tmp_path):
    from identity_data import write
    from studio import library

    library.add(write(tmp_path / "identity.jsonl"), name="identity")
    return studio_home


def _spec(tiny_model_dir, **kw):
    from studio.spec import JobSpec

    base = dict(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                learning_rate=1e-3, per_device_train_batch_size=2, eval_split=0.0, max_length=128)
    return JobSpec(**{**base, **kw})


def _zombie() -> subprocess.Popen:
    """A child that has exited and that nobody has reaped yet."""
    from studio.liveness import stat_fields

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: (stat_fields(child.pid) or ["?"])[0] == "Z", 30, interval=0.05, what="the child to exit")
    return child


# ---- liveness -------------------------------------------------------------------------------------

def test_a_zombie_or_a_reused_pid_is_not_alive():
    from studio.liveness import own_start, pid_alive

    child = _zombie()
    try:
        assert not pid_alive(child.pid), "a process that exited is dead even before its parent reaps it"
    finally:
        child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), own_start())
    assert not pid_alive(os.getpid(), own_start() - 1), "the same pid, started at another time: another process"


def _live_worker() -> subprocess.Popen:
    """A process that stands in for a live worker on this host."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _running(**placement):
    """A job row as a worker on this host leaves it while it trains (or as a backup taken then restores it)."""
    import socket

    from studio import db

    job = db.Job(name=f"j{len(db.list_jobs())}", spec_json="{}")
    with db.session() as s:
        s.add(job)
        s.commit()
    return db.set_status(job.id, "running", "started", started_at=time.time(), worker_host=socket.gethostname(),
                         **{"heartbeat_at": time.time(), **placement})


def test_a_running_job_whose_worker_is_a_zombie_or_whose_pid_was_reused_becomes_interrupted(studio_home):
    from studio import db, jobs
    from studio.liveness import own_start, process_start

    worker = _live_worker()
    try:
        alive = _running(worker_pid=worker.pid, worker_pid_start=process_start(worker.pid))
        mine = _running(worker_pid=os.getpid())
        assert mine.worker_pid_start == own_start(), "a row that records this process's pid records its start time"
        reused = _running(worker_pid=os.getpid(), worker_pid_start=own_start() - 1)
        child = _zombie()
        try:
            zombie = _running(worker_pid=child.pid)
            lost = jobs.mark_lost_jobs()
        finally:
            child.wait()
    finally:
        worker.kill()
        worker.wait()
    assert reused.id in lost and zombie.id in lost
    assert db.get_job(alive.id).status == "running", "a live worker that beats keeps its run"
    assert db.get_job(zombie.id).status == "interrupted" and "resume" in db.get_job(zombie.id).error


def test_a_restored_backup_whose_live_worker_no_longer_beats_for_the_run_is_lost_and_can_be_resumed_or_deleted(
        studio_home):
    """A backup taken while a run trained, restored on the same host while the worker it names lives on (running
    something else, or nothing): the row reads running, this host, a live pid, and a heartbeat from when the backup
    was made. Past the stale threshold the run is lost, whoever looks (the UI, the CLI, another worker), and can
    then be resumed or deleted instead of refusing both for good."""
    from studio import db, jobs, lifecycle
    from studio.liveness import process_start

    worker = _live_worker()
    try:
        backed_up = time.time() - lifecycle.heartbeat_stale_seconds() - 60
        kept, dropped = (_running(worker_pid=worker.pid, worker_pid_start=process_start(worker.pid),
                                  heartbeat_at=backed_up, current_step=3) for _ in range(2))
        with pytest.raises(ValueError, match="cancel the run before deleting it"):
            jobs.delete(dropped.id)
        assert sorted(jobs.mark_lost_jobs()) == sorted([kept.id, dropped.id])
    finally:
        worker.kill()
        worker.wait()
    kept = db.get_job(kept.id)
    assert kept.status == "interrupted"
    assert kept.error.startswith("interrupted at step 3: no heartbeat for ") and "resume" in kept.error
    assert jobs.resume(kept.id).status == "queued"
    jobs.delete(dropped.id)
    assert db.get_job(dropped.id) is None


def test_a_restored_backup_naming_this_very_worker_is_lost_at_once(studio_home):
    """The worker the restored row names looks for lost runs itself (its start, its minutely check): it knows it
    is not running that run, heartbeat fresh or not."""
    from studio import db, jobs

    restored = _running(worker_pid=os.getpid(), current_step=3)  # the test's process stands in for that worker
    assert jobs.mark_lost_jobs() == [restored.id]
    job = db.get_job(restored.id)
    assert job.status == "interrupted" and job.error.startswith("interrupted at step 3: its worker is not running it")


def test_workers_that_keep_dying_are_restarted_less_and_less_often():
    from studio.liveness import next_delay

    delays, delay = [], 0.0
    for _ in range(8):
        delay = next_delay(delay, uptime=2)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert next_delay(60, uptime=3600) == 1, "after a worker that ran a while, the next one starts at once"


# ---- serve and SIGTERM ----------------------------------------------------------------------------

def test_sigterm_on_serve_stops_the_worker_and_leaves_the_job_interrupted_and_resumable(home, tiny_model_dir,
                                                                                        tmp_path):
    from studio import db, jobs
    from studio.liveness import pid_alive
    from studio.settings import get_settings

    job = jobs.submit(_spec(tiny_model_dir, max_steps=LONG_RUN, save_steps=LONG_RUN))
    serve = Server(home, tmp_path / "serve.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        wait_for(lambda: db.get_job(job.id).current_step >= 5, 300, interval=0.2, what="training to start")
        worker = db.get_job(job.id).worker_pid
        assert worker != serve.proc.pid
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=240) == 0, "serve exits cleanly on SIGTERM"
    finally:
        serve.stop()
    assert not pid_alive(worker), "no worker outlives serve"
    assert jobs.live_workers() == [] and db.list_workers() == []
    job = db.get_job(job.id)
    assert job.status == "interrupted"
    ckpts = list((get_settings().resolve(job.output_dir) / "checkpoints").glob("checkpoint-*"))
    assert ckpts, "the interrupted job saved a checkpoint on its way out"

    # after the clean exit the database file alone holds every row: a plain copy of it is a backup
    copy = tmp_path / "copy" / "studio.db"
    copy.parent.mkdir()
    shutil.copyfile(home / "studio.db", copy)
    with sqlite3.connect(copy) as conn:
        rows = conn.execute("SELECT status, current_step FROM jobs WHERE id = ?", (job.id,)).fetchall()
        assert rows == [("interrupted", job.current_step)]
        assert conn.execute("SELECT name FROM datasets").fetchall() == [("identity",)]

    assert jobs.resume(job.id).status == "queued"


# ---- studio backup --------------------------------------------------------------------------------

def _studio(home, *args, **env):
    return subprocess.run([sys.executable, "-m", "studio.cli", *args], cwd=ROOT, env=worker_env(home, **env),
                          capture_output=True, text=True, timeout=120)


def test_studio_backup_copies_the_database_into_a_new_file_that_opens_on_its_own(home, tiny_model_dir, tmp_path):
    from studio import jobs

    job = jobs.submit(_spec(tiny_model_dir, max_steps=2, name="kept"))
    out = tmp_path / "backups" / "studio-backup.db"
    out.parent.mkdir()
    done = _studio(home, "backup", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["studio-backup.db"], "one self-contained file"
    with sqlite3.connect(out) as conn:
        assert conn.execute("SELECT id, name, status FROM jobs").fetchall() == [(job.id, "kept", "queued")]
        assert conn.execute("SELECT name FROM datasets").fetchall() == [("identity",)]

    before = out.read_bytes()
    again = _studio(home, "backup", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and out.read_bytes() == before
    nowhere = _studio(home, "backup", str(tmp_path / "missing" / "b.db"))
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr
    assert not (tmp_path / "missing").exists()


def test_studio_backup_of_a_postgresql_database_says_to_use_pg_dump(tmp_path):
    done = _studio(tmp_path / "home", "backup", str(tmp_path / "b.db"),
                   STUDIO_DATABASE_URL="postgresql+psycopg://studio:secret@db-host:5432/studio")
    assert done.returncode == 2
    assert done.stderr.strip() == ('error: the database is PostgreSQL, which `studio backup` does not copy: run '
                                   '`pg_dump "postgresql://studio@db-host:5432/studio" > studio-backup.sql` instead')
    assert not (tmp_path / "b.db").exists()
