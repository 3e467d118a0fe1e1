"""huey tasks. Heavy imports (torch, transformers, peft, trl) live inside the bodies, so the UI
process can enqueue without loading the training stack."""
from __future__ import annotations

import logging

from huey import crontab

from workers.queue import huey

log = logging.getLogger("studio.tasks")


@huey.task(name="studio.train")
def train_job(job_id: str, resume: bool = False) -> str:
    from studio import db
    from workers.distributed import run_distributed, wants_distributed
    from workers.train import run_job

    if db.get_job(job_id) is None:  # deleted while queued from a process that could not revoke it
        log.warning("job %s no longer exists; skipping its task", job_id)
        return "deleted"
    if wants_distributed(job_id):  # num_gpus > 1: accelerate launch, one process per device
        return run_distributed(job_id, resume=resume)
    return run_job(job_id, resume=resume)


@huey.task(name="studio.task")
def run_task(job_id: str) -> str:
    """A merge, GGUF export or batch evaluation (a job whose kind is not "train")."""
    from workers.inference.task import run_task as run

    return run(job_id)


@huey.periodic_task(crontab(minute="*"), name="studio.find_lost_jobs")
def find_lost_jobs() -> list[str]:
    """Jobs whose heartbeat is stale or whose worker is gone become 'interrupted' (never 'running' forever)."""
    from studio.lifecycle import mark_lost_jobs

    return mark_lost_jobs()


@huey.on_startup()
def _on_startup() -> None:
    from studio.lifecycle import mark_lost_jobs

    lost = mark_lost_jobs()
    if lost:
        log.warning("marked %d lost job(s) interrupted at consumer start: %s", len(lost), ", ".join(lost))
