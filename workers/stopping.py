"""Stopping a run politely: the process-wide shutdown flag and the ranks' agreement on a stop.

The consumer's signal handler (SIGINT/SIGTERM) and a multi-device job's stop file set ``SHUTDOWN``: the run
stops at the end of the step, saves, and is marked interrupted. Every rank of a multi-device job calls
``agree_on_stop`` once per optimizer step, so all ranks stop at the same step. torch is imported on use.
"""
from __future__ import annotations

import threading

SHUTDOWN = threading.Event()
STOP_CODES = (None, "interrupted", "cancelled")  # all ranks take the largest: cancelled beats interrupted


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
