"""The device a job or task runs on, as the Runs and Tasks tables show it, and this process's place in a multi-device
run. The only reader of the launcher's variables (RANK, LOCAL_RANK, WORLD_SIZE) and of CUDA_VISIBLE_DEVICES;
studio/settings.py reads the rest of the environment. torch is imported on use."""
from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


def rank() -> int:
    """This process's rank in a distributed run (RANK, set by the launcher); 0 alone."""
    return _int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine (LOCAL_RANK); 0 alone."""
    return _int("LOCAL_RANK", 0)


def world_size() -> int:
    """How many processes train together (WORLD_SIZE); 1 alone."""
    return _int("WORLD_SIZE", 1)


def is_main() -> bool:
    """Whether this process is the one that writes (rank 0)."""
    return rank() == 0


def visible_devices(env: dict[str, str] | None = None) -> str | None:
    """CUDA_VISIBLE_DEVICES as set (the devices this process may use), None when unset."""
    return (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")


def pin_devices(gpus: str) -> None:
    """Use only the devices ``gpus`` names (e.g. "0,1"): CUDA_VISIBLE_DEVICES, before torch starts CUDA; the jobs
    and launchers this process starts inherit it."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus


def device_label(world: int | None = None) -> str:
    """What the Runs table shows as the job's device: 'cpu', 'cuda:1 (NVIDIA H100 80GB HBM3)',
    'cuda:0,1 (2 x NVIDIA H100 80GB HBM3, DDP)'. Physical ids, read through CUDA_VISIBLE_DEVICES."""
    import torch

    world = world or world_size()
    if not torch.cuda.is_available():
        return "cpu" if world == 1 else f"cpu ({world} processes, DDP)"
    local = local_rank()
    visible = [v.strip() for v in (visible_devices() or "").split(",") if v.strip()]
    used = list(range(local, local + 1)) if world == 1 else list(range(world))
    ids = [visible[i] if i < len(visible) else str(i) for i in used]
    name = torch.cuda.get_device_name(local)
    if world == 1:
        return f"cuda:{ids[0]} ({name})"
    return f"cuda:{','.join(ids)} ({world} x {name}, DDP)"
