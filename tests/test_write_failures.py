"""A write the disk refuses (full, over quota, read-only, not permitted) ends the run as failed with that reason and
where it happened, even while the database refuses the record too: the worker keeps trying, and if it dies first the
next worker's start records the reason (never "interrupted"). A queue that cannot be read is tried again less and
less often and logged once per distinct error. Real SQLite files and the tiny model; a real consumer on a full tmpfs
where this machine lets a test mount one."""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from conftest import isolated_home, wait_for
from workerproc import ROOT, Worker, worker_env

LONG_RUN = 20_000


def _spec(tiny_model_dir, **kw):
    from studio.spec import JobSpec

    base = dict(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                learning_rate=1e-3, per_device_train_batch_size=2, eval_split=0.0, max_length=128)
    return JobSpec(**{**base, **kw})


def _add_dataset(tmp_path):
    from identity_data import write
    from studio import library

    library.add(write(tmp_path / "identity.jsonl"), name="identity")


@pytest.fixture
def home(studio_home, tmp_path):
    _add_dataset(tmp_path)
    return studio_home


def _database_full(*_args, **_kwargs):
    raise OperationalError("UPDATE jobs SET status=?", {}, sqlite3.OperationalError("database or disk is full"))


def _events(job_id):
    from studio import db

    return [e.status for e in db.job_events(job_id)]


# ---- a full disk at a checkpoint, the database refusing the record a few times --------------------

def test_a_full_disk_at_a_checkpoint_fails_the_run_with_its_reason_once_the_database_takes_it(home, tiny_model_dir,
                                                                                             monkeypatch):
    import peft.peft_model

    from studio import db, jobs, lifecycle
    from studio.settings import get_settings
    from workers.train import run_job

    job = jobs.submit(_spec(tiny_model_dir, max_steps=4, save_steps=2))
    out = get_settings().resolve(job.output_dir)
    real_save = peft.peft_model.safe_save_file

    def save(tensors, filename, *args, **kwargs):  # the disk fills up as the first checkpoint is written
        if "checkpoint-" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(tensors, filename, *args, **kwargs)

    refused = []
    real_set_status = db.set_status

    def set_status(job_id, status, *args, **kwargs):  # ... and the database refuses the run's end three times
        if status == "failed" and len(refused) < 3:
            refused.append(status)
            _database_full()
        return real_set_status(job_id, status, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save)
    monkeypatch.setattr(db, "set_status", set_status)
    monkeypatch.setattr(lifecycle, "SETTLE_WAITS", (0.01, 0.05), raising=False)  # the first and longest wait

    assert run_job(job.id) == "failed"
    job = db.get_job(job.id)
    assert len(refused) == 3, "the end was tried again until the database took it"
    assert job.status == "failed"
    assert job.error == (f"no space left on device while writing the checkpoint at step 2 "
                         f"({job.output_dir}/checkpoints/checkpoint-2): free some space, then resume the run from its "
                         f"last checkpoint")
    assert _events(job.id) == ["queued", "running", "failed"]
    assert not (out / "checkpoints" / "checkpoint-2").exists(), "the torn checkpoint gives its space back"
    assert not list((get_settings().home / lifecycle.ENDS_DIR).glob("*")), "nothing is left to record"
    assert jobs.resume(job.id).status == "queued"


def test_a_full_disk_while_saving_the_adapter_names_the_adapter_folder(home, tiny_model_dir, monkeypatch):
    import peft.peft_model

    from studio import db, jobs
    from workers.train import run_job

    job = jobs.submit(_spec(tiny_model_dir, max_steps=2))
    real_save = peft.peft_model.safe_save_file

    def save(tensors, filename, *args, **kwargs):
        if "checkpoint-" not in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save)
    assert run_job(job.id) == "failed"
    job = db.get_job(job.id)
    assert job.error == (f"no space left on device while writing the adapter ({job.output_dir}/adapter): free some "
                         f"space, then resume the run from its last checkpoint")


def test_a_task_on_a_full_disk_fails_with_the_reason_and_its_folder(studio_home, monkeypatch):
    from studio import db, jobs
    from workers.inference import task

    def merge(job, params, progress):  # safetensors' own words for a full disk, without a file name
        progress("writing the merged weights")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setitem(task.RUNNERS, "merge", merge)
    job = jobs.submit_task("merge", "merge a run", {"ref": "a-run"}, queue=False)
    assert task.run_task(job.id) == "failed"
    job = db.get_job(job.id)
    assert job.error == ("no space left on device while writing the merge output (exports): free some space, "
                         "then start it again")


# ---- the reason outlives the worker -------------------------------------------------------------

SETTLER = r"""
import os, socket, sqlite3, sys, time
from sqlalchemy.exc import OperationalError
from studio import db, lifecycle

job_id, reason = sys.argv[1:3]
lifecycle.transition(job_id, "running", "started", started_at=time.time(), heartbeat_at=time.time(),
                     worker_host=socket.gethostname(), worker_pid=os.getpid())

def full(*args, **kwargs):  # from here on the disk is full: every write to the database is refused
    raise OperationalError("UPDATE jobs SET status=?", {}, sqlite3.OperationalError("database or disk is full"))

db.set_status = db.update_job = full
print("settled:", lifecycle.settle(job_id, "failed", "error", error=reason, finished_at=time.time(), current_step=3),
      flush=True)
"""


def test_the_reason_the_database_refused_outlives_the_worker_and_is_never_called_interrupted(home, tmp_path):
    """A worker decided its run failed (a full disk), cannot record it, keeps trying, and dies (kill -9, a restart)
    before the database takes it: the next worker's start records the real reason."""
    from studio import db, lifecycle

    job = db.Job(name="full-disk", spec_json="{}")
    with db.session() as s:
        s.add(job)
        s.add(db.JobEvent(job_id=job.id, status="queued", message="submitted"))
        s.commit()
    reason = ("no space left on device while writing the checkpoint at step 3 (jobs/x/checkpoints/checkpoint-3): "
              "free some space, then resume the run from its last checkpoint")
    log = tmp_path / "settler.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SETTLER, job.id, reason], cwd=ROOT, env=worker_env(home),
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or "database or disk is full" in log.read_text(), 120,
                 interval=0.1, what="the worker to meet the full database")
        time.sleep(0.5)  # a worker that gave up would be gone by now
        assert proc.poll() is None, f"the worker gave up on recording the run's end:\n{log.read_text()}"
        assert db.get_job(job.id).status == "running"
    finally:
        proc.kill()
        proc.wait()
    assert lifecycle.mark_lost_jobs() == [], "what the next worker runs at its start: not an interruption"
    job = db.get_job(job.id)
    assert (job.status, job.error, job.current_step) == ("failed", reason, 3)
    assert _events(job.id) == ["queued", "running", "failed"]
    assert lifecycle.mark_lost_jobs() == [] and db.get_job(job.id).status == "failed"


def test_a_worker_that_is_told_to_stop_gives_up_trying_and_leaves_the_end_for_the_next_start(studio_home,
                                                                                            monkeypatch):
    import socket

    from studio import db, lifecycle

    job = db.Job(name="stopping", spec_json="{}")
    with db.session() as s:
        s.add(job)
        s.commit()
    lifecycle.transition(job.id, "running", "started", started_at=time.time(), heartbeat_at=time.time(),
                         worker_host=socket.gethostname(), worker_pid=os.getpid())
    tries, stop = [], threading.Event()

    def refused(*_args, **_kwargs):
        tries.append(1)
        if len(tries) == 3:
            stop.set()  # SIGTERM: the worker stops
        _database_full()

    monkeypatch.setattr(lifecycle, "SETTLE_WAITS", (0.01, 0.05), raising=False)
    with monkeypatch.context() as m:
        m.setattr(db, "set_status", refused)
        status = lifecycle.settle(job.id, "interrupted", "stopped at step 2", stop=stop, current_step=2,
                                  finished_at=time.time())
    assert len(tries) == 3 and status == "interrupted"
    assert db.get_job(job.id).status == "running", "not recorded yet"
    assert lifecycle.mark_lost_jobs() == [job.id], "recorded by the next sweep, as the worker decided"
    job = db.get_job(job.id)
    assert (job.status, job.current_step) == ("interrupted", 2)
    assert _events(job.id) == ["running", "interrupted"]


# ---- what a refused write is called ---------------------------------------------------------------

class SafetensorError(Exception):
    """What safetensors raises (its own class, not an OSError) when the disk is full."""


def _chained() -> BaseException:
    try:
        try:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        except OSError as inner:
            raise RuntimeError("could not save the checkpoint") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("exc, said", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "no space left on device"),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "no space left on device"),
    (OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")), "no space left on device"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "the disk quota is exceeded"),
    (_chained(), "the file system is read-only"),
    (OperationalError("INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database")),
     "the file system is read-only"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied"),
    (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), "permission denied"),
    (ValueError("the dataset 'x' does not exist"), None),
    (RuntimeError("CUDA error: device-side assert triggered"), None),
])
def test_a_refused_write_is_told_apart_from_other_failures(exc, said, tmp_path):
    from workers import disk

    assert disk.refusal(exc, tmp_path) == said


def test_a_wordless_failure_on_a_full_disk_counts_as_the_full_disk(tmp_path, monkeypatch):
    """torch.save on a full disk says only 'unexpected pos 576 vs 534': the file system's free space says the rest."""
    import shutil

    from workers import disk

    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert disk.refusal(torn, tmp_path) is None
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=64 << 20, used=64 << 20, free=4096))
    assert disk.refusal(torn, tmp_path) == "no space left on device"


# ---- a queue that cannot be read ------------------------------------------------------------------

class _UnreadableQueue:
    """A huey stand-in whose queue cannot be read: each read raises the next of ``errors``, then the queue is empty."""
    immediate = False

    def __init__(self, errors):
        self.errors, self.reads = list(errors), 0
        self.storage = SimpleNamespace(blocking=False)
        self._startup, self._shutdown = {}, {}

    def dequeue(self):
        self.reads += 1
        if self.errors:
            raise self.errors.pop(0)
        return None


def test_a_queue_that_cannot_be_read_is_tried_less_and_less_often_and_each_error_logged_once(caplog):
    from workers.consumer import StudioConsumer

    full, locked = sqlite3.OperationalError("database or disk is full"), sqlite3.OperationalError("database is locked")
    queue = _UnreadableQueue([full] * 300 + [locked] * 2)
    consumer = StudioConsumer(queue, workers=1, worker_type="thread", periodic=False, max_delay=1.0)
    worker = consumer.worker_threads[0][0]
    waits = []
    worker.stop_flag = SimpleNamespace(wait=lambda seconds=None: waits.append(seconds) and False,
                                       is_set=lambda: False)
    with caplog.at_level(logging.DEBUG, logger="huey"):
        for _ in range(303):
            worker.loop()
    assert queue.reads == 303
    failing = waits[:302]
    assert failing == sorted(failing), "the wait grows while the queue stays unreadable"
    assert failing[0] <= 1 and max(failing) >= 30, "from a second up to half a minute between tries"
    assert sum(failing[:300]) > 3600, "three hundred failed reads take over an hour, not five minutes"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 4, lines
    assert sum("database or disk is full" in line for line in lines) == 2  # when it starts, and its count
    assert any("300 times" in line and "database or disk is full" in line for line in lines)
    assert sum("database is locked" in line for line in lines) == 2
    assert sum(bool(r.exc_info) for r in caplog.records) <= 2, "a traceback per distinct error at most"


# ---- a real consumer on a full disk ----------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs for the data folder (the probe's was 60 MB); skipped where this test may not mount one."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected tests cover the full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder) -> "os.PathLike":
    """Write a file until the disk is full; returns it."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return ballast


def test_a_real_worker_on_a_full_disk_fails_the_run_with_its_reason(small_disk, tiny_model_dir, tmp_path):
    from studio import db, jobs

    with isolated_home(small_disk) as home:
        _add_dataset(tmp_path)
        job = jobs.submit(_spec(tiny_model_dir, max_steps=LONG_RUN, save_steps=5))
        log = tmp_path / "worker.log"
        with Worker(home, log):
            wait_for(lambda: db.get_job(job.id).current_step >= 3, 240, interval=0.2, what="training to start")
            ballast = _fill(small_disk)
            # the run fails at its next write; when the database refuses the record too the worker keeps trying
            wait_for(lambda: db.get_job(job.id).status != "running" or
                     f"recording job {job.id} as failed: " in log.read_text(), 120, interval=0.2,
                     what="the run to fail on the full disk")
            ballast.unlink()
            wait_for(lambda: db.get_job(job.id).status in db.FINISHED, 120, interval=0.2,
                     what="the run's end to be recorded once space came back")
            job = db.get_job(job.id)
            text = log.read_text()
        assert job.status == "failed", job.error
        assert job.error.startswith("no space left on device while writing ") and "free some space" in job.error
        assert f"({job.output_dir}/checkpoints/checkpoint-" in job.error or "to the database (studio.db)" in job.error
        assert text.count("Error reading from queue") <= 1
        assert jobs.resume(job.id).status == "queued"
