"""Run one task (a merge, a GGUF export, a batch evaluation): the same job lifecycle as a training run.

A task is a row of ``jobs`` whose ``kind`` is not "train" (studio.jobs.submit_task wrote it, with its
parameters as the spec). ``run_task`` moves it queued -> running -> completed | failed | cancelled through
workers/runner.py (as a training run moves), beats its heartbeat from a thread, reports progress (current/total steps and a message)
as each step starts, and reads the cancel flag there: a cancelled task stops before its next step and
leaves no half-written file (every writer goes through a temporary path). The result is the job's summary.

The queue's ``studio.task`` runs it on a worker; ``studio export`` runs it inline (see workers/cli.py).
"""
from __future__ import annotations

import json
import logging
import time

from studio import db
from studio.settings import get_settings
from workers.runner import JobRun, one_line

log = logging.getLogger("studio.task")


class TaskCancelled(Exception):
    """Raised at a step boundary once the job's cancel flag is set."""


class Progress:
    """``progress(message)``: a step starts (the steps before it are done); ``total``/``done`` override the
    count (batch evaluation counts replies). Raises TaskCancelled when the job's cancel flag is set."""

    def __init__(self, job_id: str, total: int | None = None):
        self.job_id, self.total, self.calls = job_id, total, 0

    def __call__(self, message: str, total: int | None = None, done: int | None = None) -> None:
        job = db.get_job(self.job_id)
        if job is None or job.cancel_requested:
            raise TaskCancelled(message)
        if done is None:
            done, self.calls = self.calls, self.calls + 1
        self.total = total if total is not None else max(self.total or 0, done + 1)
        db.update_job(self.job_id, current_step=done, total_steps=self.total, progress_message=message,
                      heartbeat_at=time.time())


def run_task(job_id: str) -> str:
    """Run the task to its end; returns its final status ("deleted" when the row is gone)."""
    job = db.get_job(job_id)
    if job is None:
        log.warning("task %s no longer exists; skipping it", job_id)
        return "deleted"
    run = JobRun(job, noun="task", error=lambda exc: _failure(job, exc), failed={"progress_message": "failed"})
    if not run.allowed():  # cancelled while queued, or already picked up
        return job.status
    return run(_run)


def _run(run: JobRun) -> str:
    """The task's runner, step by step; a cancel seen between steps ends it cancelled."""
    job = run.job
    run.start(f"{job.kind} started", progress_message="starting", current_step=0)
    progress = Progress(job.id)
    try:
        result = RUNNERS[job.kind](job, job.spec, progress)
    except TaskCancelled as exc:
        return run.settle("cancelled", f"cancelled before: {exc}", progress_message=f"cancelled before: {exc}")
    total = progress.total or 0
    return run.settle("completed", "done", summary_json=json.dumps(result), current_step=total, total_steps=total,
                      progress_message="done")


def _failure(job: db.Job, exc: BaseException) -> str:
    """A write the disk refused, with its reason and folder (workers/disk.py); any other failure in one line."""
    from workers import disk

    settings = get_settings()
    folder = settings.resolve(job.output_dir) if job.output_dir else settings.exports_dir
    return disk.sentence(exc, folder, f"the {job.kind} output", again="start it again") or one_line(exc)


# ---- one runner per kind -------------------------------------------------------------------------

def _merge(job: db.Job, params: dict, progress: Progress) -> dict:
    from .export import MERGE_STEPS, merge

    progress.total = MERGE_STEPS
    return merge(params["ref"], dtype=params.get("dtype", "float32"), out=params.get("out"), progress=progress)


def _gguf(job: db.Job, params: dict, progress: Progress) -> dict:
    from pathlib import Path

    from studio.adapter_exports import drift_prompts, export_paths, merge_is_current
    from studio.adapter_library import resolve

    from .export import MERGE_STEPS, export_gguf, gguf_steps

    ref = resolve(params["ref"])
    merged_out = params.get("merged_out")
    quant = params.get("quant", "q8_0")
    drift = bool(params.get("drift", True))
    prompts = drift_prompts(ref) if drift else []
    needs_merge = merged_out is not None or not merge_is_current(export_paths(ref)[0], ref.folder)
    progress.total = MERGE_STEPS * needs_merge + gguf_steps(quant, drift, prompts)
    return export_gguf(ref.ref, quant=quant, drift=drift, prompts=prompts or None,
                       gguf_out=params.get("gguf_out"), merged_out=Path(merged_out) if merged_out else None,
                       dtype=params.get("dtype", "float32"), progress=progress)


def _evaluate(job: db.Job, params: dict, progress: Progress) -> dict:
    """Replies and reference scores from a live inference server (it holds the models, in its own dtype)."""
    from .evaluation import run_evaluation

    return run_evaluation(params, get_settings().resolve(job.output_dir), progress)


RUNNERS = {"merge": _merge, "gguf": _gguf, "evaluate": _evaluate}
