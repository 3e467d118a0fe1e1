"""Submitting, cancelling, resuming and deleting jobs; detecting lost ones. No torch here: the UI
process calls these, the worker picks the work up through the queue."""
from __future__ import annotations

import shutil
import threading
import time

from . import db
from .lifecycle import allowed, live_rows, transition
from .lifecycle import mark_lost_jobs  # noqa: F401 (callers reach it as jobs.mark_lost_jobs)
from .settings import check_name, get_settings
from .spec import JobSpec, SpecError, quote

_SUBMIT_LOCK = threading.Lock()


def validate_spec(spec: JobSpec) -> dict[str, str]:
    """Everything that can be known before queueing: fields, the dataset, the model's layers."""
    from .models import ModelError, check_model, linear_layer_names

    kind = None
    errors: dict[str, str] = {}
    if spec.dataset:
        rec = db.get_dataset(spec.dataset)
        if rec is None:
            errors["dataset"] = f"there is no dataset named {quote(spec.dataset)}; upload it first"
        else:
            kind = rec.kind
    if spec.eval_dataset and db.get_dataset(spec.eval_dataset) is None:
        errors["eval_dataset"] = f"there is no dataset named {quote(spec.eval_dataset)}"
    linear = None
    try:
        check_model(spec.base_model)
        linear = linear_layer_names(spec.base_model)
    except ModelError as exc:
        errors["base_model"] = str(exc)
    devices = [w.device for w in live_workers()]
    errors = {**spec.validate(linear_names=linear, dataset_kind=kind, worker_devices=devices), **errors}
    return errors


def submit(spec: JobSpec, group_id: str | None = None) -> db.Job:
    """Validate, save the job, hand it to the queue. Nothing is written when validation fails.
    ``group_id``: the sweep the run belongs to."""
    errors = validate_spec(spec)
    if errors:
        raise SpecError(errors)
    settings = get_settings()
    job = db.Job(name="", spec_json=spec.to_json(), group_id=group_id)
    job.name = check_name(spec.name, "run name") if spec.name else f"{spec.dataset[:40]}-{job.id[:6]}"
    job.output_dir = settings.relative(settings.jobs_dir / job.id)
    # one submission at a time: creation order is queue order, so a queue position counted from
    # created_at is the place the worker will really take the run in
    with _SUBMIT_LOCK:
        if spec.name and any(j.name == job.name for j in db.list_jobs()):
            raise SpecError({"name": f"a run named '{job.name}' already exists"})
        job.created_at = time.time()
        with db.session() as s:
            s.add(job)
            s.add(db.JobEvent(job_id=job.id, status="queued", message="submitted"))
            s.commit()
        try:
            return db.update_job(job.id, task_id=enqueue(job.id))
        except Exception:
            delete(job.id)  # never leave a row the queue does not know about
            raise


TASKS_DIR = "tasks"  # <home>/tasks/<id>/: the files a task writes for itself (batch evaluation's CSV)


def submit_task(kind: str, name: str, params: dict, own_folder: bool = False, queue: bool = True) -> db.Job:
    """Save a merge, GGUF export or batch evaluation as a job of that ``kind`` and hand it to the queue.
    ``params`` (what the worker needs: the adapter ref, quant, rows...) are stored as the job's spec;
    the caller has checked them. The result lands in the job's summary, progress in current/total steps
    and ``progress_message``, as for a training run. ``queue=False``: the row alone, for a caller that runs the
    task itself (``studio export``). ``own_folder``: the job's output_dir is <home>/tasks/<id> (deleted with
    the job); an export's files live under <home>/exports and outlive its job."""
    import json

    if kind not in db.TASK_KINDS:
        raise ValueError(f"'{kind}' is not a task kind; the kinds are {', '.join(db.TASK_KINDS)}")
    job = db.Job(name=name, kind=kind, spec_json=json.dumps(params), progress_message="waiting for a worker")
    if own_folder:
        job.output_dir = f"{TASKS_DIR}/{job.id}"
    with _SUBMIT_LOCK:
        job.created_at = time.time()
        with db.session() as s:
            s.add(job)
            s.add(db.JobEvent(job_id=job.id, status="queued", message="submitted"))
            s.commit()
        if not queue:
            return job
        try:
            return db.update_job(job.id, task_id=enqueue(job.id))
        except Exception:
            delete(job.id)
            raise


def enqueue(job_id: str, resume: bool = False) -> str:
    """Hand the job to the queue (a training run to train_job, a task to run_task); returns the task id
    (what cancel and delete revoke)."""
    from workers.queue import huey
    from workers.tasks import run_task, train_job

    job = db.get_job(job_id)
    task = train_job.s(job_id, resume=resume) if job is None or job.kind == "train" else run_task.s(job_id)
    huey.enqueue(task)
    return task.id


def cancel(job_id: str) -> db.Job:
    """Queued: revoked and cancelled at once. Running: stops at the end of the current step, or between the batches
    (and generated tokens) of a long loop between steps (studio.cancel). A completed run whose forgetting check is
    still answering: the check stops the same way and is recorded as skipped; the run stays completed."""
    from workers.queue import huey

    job = db.get_job(job_id)
    if job is None:
        raise KeyError(job_id)
    if job.status == "queued":
        if job.task_id:
            huey.revoke_by_id(job.task_id)
        return transition(job.id, "cancelled", "cancelled while queued", finished_at=time.time())
    if job.status == "running" or checking(job):
        return db.update_job(job.id, cancel_requested=True)
    return job


def checking(job: db.Job) -> bool:
    """Whether the worker is still answering the run's forgetting check (the run itself is complete)."""
    return job.status == "completed" and (job.summary.get("forgetting") or {}).get("state") == "checking"


def cancel_group(group_id: str) -> list[db.Job]:
    """Cancel every queued or running member of a sweep; returns the members as they are now."""
    members = db.group_jobs(group_id)
    if not members:
        raise KeyError(group_id)
    return [cancel(job.id) if job.status in db.ACTIVE else job for job in members]


def resume(job_id: str) -> db.Job:
    job = db.get_job(job_id)
    if job is None:
        raise KeyError(job_id)
    if not allowed(job.status, "queued"):
        raise ValueError(f"only an interrupted, cancelled or failed run can be resumed; this one is {job.status}")
    if job.kind != "train":
        raise ValueError(f"a {job.kind} task is not resumed: start it again from the Adapters tab or the CLI")
    job = transition(job.id, "queued", "resume requested", cancel_requested=False, error=None, finished_at=None)
    return db.update_job(job.id, task_id=enqueue(job.id, resume=True))


def delete(job_id: str) -> None:
    """Remove the job, its metrics and its files. A running job must be cancelled first."""
    job = db.get_job(job_id)
    if job is None:
        return
    if job.status == "running":
        raise ValueError("cancel the run before deleting it")
    if job.status == "queued" and job.task_id:
        from workers.queue import huey

        huey.revoke_by_id(job.task_id, revoke_once=True)
    settings = get_settings()
    if job.output_dir:
        shutil.rmtree(settings.resolve(job.output_dir), ignore_errors=True)
    with db.session() as s:
        for model in (db.MetricPoint, db.JobEvent):
            for row in s.exec(db.select(model).where(model.job_id == job.id)):
                s.delete(row)
        s.flush()
        row = s.get(db.Job, job.id)
        if row is not None:
            s.delete(row)
        s.commit()


def live_workers(stale_seconds: float | None = None) -> list[db.WorkerRecord]:
    """Workers that are running now: on this host, a live pid; elsewhere, a recent beat. Rows of workers
    that died without saying goodbye are removed on the way."""
    return live_rows(db.list_workers(), db.remove_worker, stale_seconds)


def estimate_for_workers(spec: JobSpec, config: dict):
    """The memory estimate for the device(s) the job can train on, with warnings.

    Returns (estimate, device line, warnings). With live workers, the estimate is computed for each
    worker's device (GPU or CPU, native bf16 or not, its memory) and the one shown is the largest; a
    warning names every worker whose device memory the estimate exceeds. Without a live worker, the
    estimate is for a CUDA GPU and says so.
    """
    from . import memory

    workers = live_workers()
    if not workers:
        return memory.estimate_for_spec(spec, config), "no worker is running: estimated for a CUDA GPU", []
    estimates, warnings = [], []
    for w in workers:
        est = memory.estimate_for_spec(spec, config, w.device, bf16=w.bf16, memory_gb=w.memory_gb,
                                       fast_4bit=w.fast_4bit)
        estimates.append((est, w))
        need = est.total_gb * memory.GIB / 1e9
        if w.memory_gb and need > w.memory_gb:
            what = "GPU" if w.device == "cuda" else "RAM"
            warnings.append(f"needs about {need:.1f} GB, more than the {w.memory_gb:.1f} GB {what} of worker "
                            f"{w.host} ({w.device_name}): lower the batch size or max length, turn on gradient "
                            f"checkpointing or 4-bit")
    est = max((e for e, _ in estimates), key=lambda e: e.total_gb)
    batching = {"padding_free": "padding-free batches", "grouped": "length-grouped batches",
                "random": "padded random batches"}[spec.batching()]
    kinds = sorted({f"{x.device_name} ({x.memory_gb:.0f} GB{', bf16' if x.bf16 else ''}) trains with "
                    f"{spec.resolved_precision(x.bf16)}, {batching}"
                    f"{', dequantised-weight cache' if memory.DEQUANT_TERM in e.breakdown else ''}"
                    for e, x in estimates})
    return est, f"estimated for the worker's device: {'; '.join(kinds)}", warnings
