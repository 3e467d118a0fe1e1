"""The device a job or task runs on, as the Runs and Tasks tables show it. torch is imported on use."""
from __future__ import annotations

import os


def device_label(world_size: int | None = None) -> str:
    """What the Runs table shows as the job's device: 'cpu', 'cuda:1 (NVIDIA H100 80GB HBM3)',
    'cuda:0,1 (2 x NVIDIA H100 80GB HBM3, DDP)'. Physical ids, read through CUDA_VISIBLE_DEVICES."""
    import torch

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        return "cpu" if world == 1 else f"cpu ({world} processes, DDP)"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    used = list(range(local, local + 1)) if world == 1 else list(range(world))
    ids = [visible[i] if i < len(visible) else str(i) for i in used]
    name = torch.cuda.get_device_name(local)
    if world == 1:
        return f"cuda:{ids[0]} ({name})"
    return f"cuda:{','.join(ids)} ({world} x {name}, DDP)"
