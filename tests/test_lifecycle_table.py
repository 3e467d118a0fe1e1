"""The job state table: every legal move is made, every other is refused with one sentence and changes nothing."""
from __future__ import annotations

import json
import time

import pytest

LEGAL = {
    ("queued", "running"), ("queued", "cancelled"), ("queued", "failed"),
    ("running", "completed"), ("running", "failed"), ("running", "cancelled"), ("running", "interrupted"),
    ("failed", "queued"), ("cancelled", "queued"), ("interrupted", "queued"),
}
STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")


def _job_in(status: str):
    from studio import db

    job = db.Job(name=f"run-{status}-{time.time_ns()}", spec_json=json.dumps({"dataset": "d"}), status=status,
                 current_step=3)
    with db.session() as s:
        s.add(job)
        s.commit()
    return job.id


def test_the_states_are_the_databases():
    from studio import db, lifecycle

    assert set(lifecycle.STATES) == set(STATES) == set(db.ACTIVE + db.FINISHED)
    assert {(a, b) for a, tos in lifecycle.TRANSITIONS.items() for b in tos} == LEGAL


@pytest.mark.parametrize("current", STATES)
def test_every_move_from(current, studio_home):
    from studio import db, lifecycle

    for to in STATES:
        job_id = _job_in(current)
        if (current, to) in LEGAL:
            job = lifecycle.transition(job_id, to, "moved", current_step=4)
            assert (job.status, job.current_step) == (to, 4)
            assert [(e.status, e.message) for e in db.job_events(job_id)] == [(to, "moved")]
        else:
            article = "an" if current == "interrupted" else "a"
            with pytest.raises(lifecycle.IllegalTransition, match=f"^{article} {current} run cannot become {to}$"):
                lifecycle.transition(job_id, to, "moved", current_step=4)
            job = db.get_job(job_id)
            assert (job.status, job.current_step, db.job_events(job_id)) == (current, 3, [])


def test_an_unknown_state_or_job_is_refused(studio_home):
    from studio import lifecycle

    with pytest.raises(lifecycle.IllegalTransition, match="'paused' is not a job state"):
        lifecycle.transition(_job_in("running"), "paused")
    with pytest.raises(KeyError):
        lifecycle.transition("no-such-job", "running")


def test_a_worker_never_overrides_a_state_another_process_set(studio_home):
    """Lost-worker detection marked the run interrupted; the worker, still alive, then finishes: the run
    stays interrupted and the worker is told so."""
    from studio import db, lifecycle

    job_id = _job_in("running")
    db.update_job(job_id, worker_host="elsewhere", worker_pid=1, heartbeat_at=time.time() - 3600)
    assert lifecycle.mark_lost_jobs(stale_seconds=60) == [job_id]
    assert lifecycle.settle(job_id, "completed", "finished 9 steps", current_step=9) == "interrupted"
    job = db.get_job(job_id)
    assert (job.status, job.current_step) == ("interrupted", 3)
    assert lifecycle.mark_lost_jobs(stale_seconds=60) == []


def test_a_note_keeps_the_state(studio_home):
    from studio import db, lifecycle

    job_id = _job_in("running")
    lifecycle.note(job_id, "ran out of memory at step 2: retrying with batch 1")
    assert db.get_job(job_id).status == "running"
    assert [(e.status, e.message) for e in db.job_events(job_id)] == [
        ("running", "ran out of memory at step 2: retrying with batch 1")]


def test_resuming_a_queued_or_completed_run_is_refused(studio_home):
    from studio import db, jobs

    for status in ("queued", "running", "completed"):
        job_id = _job_in(status)
        with pytest.raises(ValueError, match="only an interrupted, cancelled or failed run can be resumed"):
            jobs.resume(job_id)
        assert db.get_job(job_id).status == status
