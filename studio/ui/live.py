"""What every open page refreshes on its own: the worker line under the title, and (wired in
__init__) every list that shows a run's status, so no screen lags the database by more than one tick."""
from __future__ import annotations

import time

from .. import db, jobs, models

SYNC_SECONDS = 2.0
NO_WORKER = "**Worker:** none is running: start one with `studio worker`."


def _training(job: db.Job) -> str:
    return f"training {job.name} (step {job.current_step or 0}/{job.total_steps or '?'})"


def worker_line() -> str:
    """'Worker: idle', 'training NAME (step a/b)' and/or 'preparing the base model (step k of n: ...)',
    or a plain sentence when no worker runs (queued runs then wait for one)."""
    progress = models.conversion_progress()
    preparing = ""
    if progress:
        step = f"step {progress['stage']} of {progress['stages']}: " if progress["stages"] > 1 else ""
        preparing = f"preparing the base model ({step}{progress['what']}, {time.time() - progress['started']:.0f} s)"
    if not jobs.live_workers():
        return NO_WORKER + (f" Meanwhile: {preparing}." if preparing else "")
    doing = [_training(j) if j.kind == "train" else f"{j.name} ({j.progress_message or 'starting'})"
             for j in db.list_jobs(("running",), kind=None)] + [preparing] * bool(preparing)
    return "**Worker:** " + ("; ".join(doing) if doing else "idle")


def only_changed(sent: list | None, fresh: list) -> list:
    """``fresh`` with every value the page already shows (the same as in ``sent``) replaced by a skip, so
    a tick redraws nothing that did not change (an open dropdown stays open, a selection stays)."""
    import gradio as gr

    sent = sent or []
    return [gr.skip() if i < len(sent) and sent[i] == value else value for i, value in enumerate(fresh)]
