"""Stopping a run politely: the process-wide shutdown flag and the ranks' agreement on a stop.

The consumer's signal handler (SIGINT/SIGTERM) and a multi-device job's stop file set ``SHUTDOWN``: the run
stops at the end of the step, saves, and is marked interrupted. Every rank of a multi-device job calls
``agree_on_stop`` once per optimizer step, so all ranks stop at the same step. While a job trains, ``current()``
is its ``studio.cancel.Watch`` (``watching`` sets it), for the long loops that are not handed one (the general
replay answers). torch is imported on use.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading

from studio.cancel import Watch

SHUTDOWN = threading.Event()
STOP_CODES = (None, "interrupted", "cancelled")  # all ranks take the largest: cancelled beats interrupted
_WATCH: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("studio_job_watch", default=None)


@contextlib.contextmanager
def watching(watch: Watch):
    """``current()`` is ``watch`` inside the block (in this thread)."""
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


def current() -> Watch:
    """The running job's watch; outside a job, one that watches the worker's shutdown only."""
    return _WATCH.get() or Watch(None, SHUTDOWN.is_set)


def agree_on_stop(reason: str | None, device=None) -> str | None:
    """Every rank calls this once per optimizer step; all get the same answer (the largest stop code)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return reason
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([STOP_CODES.index(reason)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return STOP_CODES[int(flag.item())]
