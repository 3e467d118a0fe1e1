"""Jobs through a real huey consumer process on a real SQLite file: run, crash, resume, cancel,
fail-then-succeed, rapid submissions, SIGTERM. The tiny random model keeps each job to seconds."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from browser import SHARED_MODELS, Server
from conftest import wait_for
from workerproc import Worker, parent_of

LONG_RUN = 20_000  # steps: far more than the tiny model runs before a test stops it (about 10 ms a step on a fast CPU)


def _dataset(tmp_path):
    from identity_data import write
    from studio import library

    rec, _ = library.add(write(tmp_path / "identity.jsonl"), name="identity")
    return rec.name


def _spec(tiny_model_dir, **kw):
    from studio.spec import JobSpec

    base = dict(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                learning_rate=1e-3, per_device_train_batch_size=2, eval_split=0.0, max_length=128)
    base.update(kw)
    return JobSpec(**base)


def _status(job_id):
    from studio import db

    return db.get_job(job_id).status


def _loss_steps(job_id):
    from studio import db

    return [r["step"] for r in db.metric_rows(job_id) if r["loss"] is not None]


@pytest.fixture
def home(studio_home, tmp_path):
    _dataset(tmp_path)
    return studio_home


def test_a_job_runs_in_a_real_consumer_and_reports_through_the_database(home, tiny_model_dir, tmp_path):
    from studio import db, jobs
    from studio.settings import get_settings

    job = jobs.submit(_spec(tiny_model_dir, max_steps=6, eval_split=0.2, eval_steps=3))
    assert job.status == "queued"
    with Worker(home, tmp_path / "worker.log"):
        wait_for(lambda: _status(job.id) in db.FINISHED, 180, what="the job to finish")
    job = db.get_job(job.id)
    assert job.status == "completed", job.error
    assert job.total_steps == 6 and job.current_step == 6
    assert _loss_steps(job.id) == [1, 2, 3, 4, 5, 6]
    assert any(r["eval_loss"] is not None for r in db.metric_rows(job.id))
    adapter = get_settings().resolve(job.adapter_path)
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert not list(adapter.glob("*.bin")), "adapters are written as safetensors only"
    assert [e.status for e in db.job_events(job.id)] == ["queued", "running", "completed"]
    assert job.worker_host and job.device == "cpu"


def test_killed_worker_is_detected_and_the_job_resumes_without_repeated_steps(home, tiny_model_dir, tmp_path):
    from studio import db, jobs

    job = jobs.submit(_spec(tiny_model_dir, max_steps=120, save_steps=10))
    with Worker(home, tmp_path / "w1.log") as w1:
        wait_for(lambda: db.get_job(job.id).current_step >= 25, 240, interval=0.2, what="training to pass step 25")
        w1.signal(signal.SIGKILL)
        w1.wait(30)
        killed_at = time.time()
    assert _status(job.id) == "running"  # nobody has noticed yet
    lost = jobs.mark_lost_jobs()       # what a consumer start, the periodic task or the UI poll runs
    assert lost == [job.id]
    job = db.get_job(job.id)
    assert job.status == "interrupted" and "resume" in job.error
    detection = time.time() - killed_at
    steps_before = max(_loss_steps(job.id))
    jobs.resume(job.id)
    with Worker(home, tmp_path / "w2.log"):
        wait_for(lambda: _status(job.id) in db.FINISHED, 300, what="the resumed job to finish")
    job = db.get_job(job.id)
    assert job.status == "completed", job.error
    steps = _loss_steps(job.id)
    assert steps == list(range(1, 121)), "the loss curve has repeated or missing steps"
    print(f"detection {detection:.2f} s after SIGKILL; last logged step before the kill {steps_before}")


def test_serve_notices_its_killed_worker_interrupts_the_job_and_starts_another(home, tiny_model_dir, tmp_path):
    """kill -9 of the worker that `studio serve` started: serve reaps it, the job becomes interrupted at once
    (not 'running' for good), serve starts a new worker, and the job resumes on it to the end."""
    from studio import db, jobs

    job = jobs.submit(_spec(tiny_model_dir, max_steps=100, save_steps=5))
    serve = Server(home, tmp_path / "serve.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        wait_for(lambda: db.get_job(job.id).current_step >= 5, 300, interval=0.1, what="training to pass step 5")
        victim = db.get_job(job.id).worker_pid
        assert parent_of(victim) == serve.proc.pid, "the job runs in serve's own worker"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: _status(job.id) == "interrupted", 30, interval=0.2, what="serve to notice its dead worker")
        print(f"interrupted {time.time() - killed_at:.2f} s after SIGKILL of serve's worker")
        job = db.get_job(job.id)
        assert "resume" in job.error and job.current_step < 100
        assert jobs.cancel(job.id).status == "interrupted", "nothing left to cancel"
        assert all(w.pid != victim for w in jobs.live_workers()), "the dead worker is not listed as live"

        new = wait_for(lambda: [w for w in jobs.live_workers() if w.pid != victim], 180,
                       what="serve to start another worker")
        assert parent_of(new[0].pid) == serve.proc.pid
        jobs.resume(job.id)
        wait_for(lambda: _status(job.id) in db.FINISHED, 300, what="the resumed job to finish")
    finally:
        serve.stop()
    job = db.get_job(job.id)
    assert job.status == "completed", job.error
    assert _loss_steps(job.id) == list(range(1, 101)), "the loss curve has repeated or missing steps"


def test_cancel_while_queued_and_while_running(home, tiny_model_dir, tmp_path):
    from studio import db, jobs
    from studio.settings import get_settings

    queued = jobs.submit(_spec(tiny_model_dir, max_steps=2))
    jobs.cancel(queued.id)
    assert _status(queued.id) == "cancelled"
    running = jobs.submit(_spec(tiny_model_dir, max_steps=LONG_RUN, save_steps=LONG_RUN))
    with Worker(home, tmp_path / "w.log"):
        wait_for(lambda: db.get_job(running.id).current_step >= 5, 240, interval=0.2, what="training to start")
        jobs.cancel(running.id)
        wait_for(lambda: _status(running.id) == "cancelled", 60, what="the running job to stop")
        time.sleep(2)
    job = db.get_job(running.id)
    assert job.current_step < LONG_RUN
    ckpts = list((get_settings().resolve(job.output_dir) / "checkpoints").glob("checkpoint-*"))
    assert ckpts, "a cancelled run keeps a checkpoint to resume from"
    assert _status(queued.id) == "cancelled", "a revoked job never runs"
    assert db.get_job(queued.id).started_at is None


def test_a_failing_job_does_not_take_the_worker_down(home, tiny_model_dir, tmp_path):
    from studio import db, jobs
    from studio.settings import get_settings

    bad = jobs.submit(_spec(tiny_model_dir, max_steps=2))
    # the dataset disappears between submission and run: the job must fail with a sentence
    with db.session() as s:
        row = s.get(db.DatasetRecord, db.get_dataset("identity").id)
        row.name = "renamed"
        s.add(row)
        s.commit()
    with Worker(home, tmp_path / "w.log"):
        wait_for(lambda: _status(bad.id) in db.FINISHED, 120, what="the bad job to end")
        with db.session() as s:
            row = s.get(db.DatasetRecord, db.get_dataset("renamed").id)
            row.name = "identity"
            s.add(row)
            s.commit()
        good = jobs.submit(_spec(tiny_model_dir, max_steps=2))
        wait_for(lambda: _status(good.id) in db.FINISHED, 120, what="the next job to end")
    bad_job = db.get_job(bad.id)
    assert bad_job.status == "failed"
    assert "dataset 'identity' does not exist" in bad_job.error and "Traceback" not in bad_job.error
    log = (get_settings().resolve(bad_job.output_dir) / "train.log").read_text()
    assert "Traceback" in log, "the full traceback goes to the job's log file"
    assert _status(good.id) == "completed"


def test_ten_rapid_submissions_all_queue_and_all_run(home, tiny_model_dir, tmp_path):
    from studio import db, jobs

    t0 = time.time()
    ids = [jobs.submit(_spec(tiny_model_dir, max_steps=1, name=f"rapid-{i}")).id for i in range(10)]
    assert time.time() - t0 < 60
    positions = [db.queue_position(db.get_job(i)) for i in ids]
    assert positions == list(range(1, 11))
    with Worker(home, tmp_path / "w.log"):
        wait_for(lambda: all(_status(i) in db.FINISHED for i in ids), 300, interval=1, what="all ten jobs")
    assert [_status(i) for i in ids] == ["completed"] * 10
    for i in ids:
        assert [e.status for e in db.job_events(i)].count("running") == 1


def test_sigterm_interrupts_the_running_job_which_can_resume(home, tiny_model_dir, tmp_path):
    from studio import db, jobs
    from studio.settings import get_settings

    job = jobs.submit(_spec(tiny_model_dir, max_steps=LONG_RUN, save_steps=LONG_RUN))
    w = Worker(home, tmp_path / "w.log")
    try:
        wait_for(lambda: db.get_job(job.id).current_step >= 5, 240, interval=0.2, what="training to start")
        w.signal(signal.SIGTERM)
        assert w.wait(120) == 0, "the consumer exits cleanly on SIGTERM"
    finally:
        w.stop()
    job = db.get_job(job.id)
    assert job.status == "interrupted"
    ckpt = list((get_settings().resolve(job.output_dir) / "checkpoints").glob("checkpoint-*"))
    assert ckpt, "the interrupted job saved a checkpoint on its way out"
    state = json.loads((ckpt[0] / "trainer_state.json").read_text())
    assert state["global_step"] == job.current_step


def test_a_running_worker_registers_its_device_and_the_estimate_warns_against_it(home, tmp_path):
    """The Train form's estimate is computed for the running worker's device and warns when a job would
    not fit in it; the worker's row goes away when it stops (gracefully) or dies (SIGKILL)."""
    from studio import catalog, db, jobs
    from studio.spec import JobSpec

    assert jobs.live_workers() == []
    with Worker(home, tmp_path / "w1.log") as w:
        wait_for(lambda: jobs.live_workers(), timeout=120, what="the worker to register")
        (row,) = jobs.live_workers()
        assert row.pid == w.pid and row.device in ("cpu", "cuda") and row.memory_gb > 1
        small = JobSpec(dataset="d")  # the bundled model, 4-bit
        est, where, warnings = jobs.estimate_for_workers(small, catalog.config_for(small.base_model))
        assert warnings == [] and row.device_name in where
        huge = JobSpec(dataset="d", base_model="meta-llama/Meta-Llama-3-70B", load_in_4bit=False)
        est, where, warnings = jobs.estimate_for_workers(huge, catalog.config_for(huge.base_model))
        assert est.total_gb > 100
        assert len(warnings) == 1 and f"{row.memory_gb:.1f} GB" in warnings[0] and row.host in warnings[0]
        w.signal(signal.SIGTERM)
        assert w.wait(timeout=60) == 0
    assert db.list_workers() == []  # a graceful stop removes the row
    with Worker(home, tmp_path / "w2.log") as w:
        wait_for(lambda: jobs.live_workers(), timeout=120, what="the worker to register")
        w.signal(signal.SIGKILL)
        w.wait(timeout=30)
        assert jobs.live_workers() == []  # a dead pid on this host: not live, and its row is cleaned up
        assert db.list_workers() == []
    est, where, warnings = jobs.estimate_for_workers(huge, catalog.config_for(huge.base_model))
    assert "no worker is running" in where and warnings == []
