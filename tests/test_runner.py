"""workers/runner.py: the one context a training run, a task and a multi-device launch run through. Each exception
out of a job's body ends it in one state; only the main rank writes. No model: the bodies are stand-ins."""
from __future__ import annotations

import pytest


@pytest.fixture
def job(studio_home):
    from adapter_fixtures import queued_job
    from studio import db
    from studio.spec import JobSpec

    db.get_engine()
    return db.get_job(queued_job(JobSpec(dataset="d", name="runner"), "runner"))


def _ended(job_id: str):
    from studio import db

    return db.get_job(job_id)


def test_a_body_runs_the_job_from_queued_to_its_end(job):
    from workers.runner import JobRun

    def body(run):
        run.start("started")
        assert _ended(job.id).status == "running" and _ended(job.id).worker_pid
        return run.settle("completed", "done", current_step=3)

    assert JobRun(job)(body) == "completed"
    ended = _ended(job.id)
    assert (ended.status, ended.current_step, ended.error) == ("completed", 3, None) and ended.finished_at


def test_an_exception_fails_the_job_with_its_sentence(job):
    from workers.runner import JobRun

    def body(run):
        run.start("started")
        raise ValueError("the dataset 'd' does not exist\nmore detail")

    assert JobRun(job, failed={"progress_message": "failed"})(body) == "failed"
    ended = _ended(job.id)
    assert (ended.status, ended.error, ended.progress_message) == ("failed", "the dataset 'd' does not exist",
                                                                   "failed")
    assert _ended(job.id).finished_at


def test_an_interrupt_is_settled_then_raised_again(job):
    from workers.runner import JobRun

    def body(run):
        run.start("started")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        JobRun(job, error=lambda exc: f"stopped: {type(exc).__name__}")(body)
    assert (_ended(job.id).status, _ended(job.id).error) == ("failed", "stopped: KeyboardInterrupt")


def test_a_move_made_first_by_another_process_is_left_as_it_stands(job):
    from studio import jobs
    from workers.runner import JobRun

    jobs.cancel(job.id)  # cancelled while queued, after this worker read it

    def body(run):
        run.start("started")
        raise AssertionError("never reached")

    assert JobRun(job)(body) == "cancelled" == _ended(job.id).status


def test_a_job_that_may_not_run_is_not_started(job):
    from studio import jobs
    from workers.runner import JobRun

    jobs.cancel(job.id)
    cancelled = _ended(job.id)
    assert not JobRun(cancelled).allowed() and JobRun(job).allowed()


def test_another_rank_never_writes_the_jobs_state(job):
    from workers.runner import JobRun

    def body(run):
        run.start("started")
        assert run.settle("completed", "done") == "completed"
        raise RuntimeError("a rank's own failure")

    assert JobRun(job, main=False)(body) == "failed"
    assert _ended(job.id).status == "queued"
