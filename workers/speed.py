"""Speed levers for the worker's training path, each measured in bench/train_speed.py.

Dequantised-weight cache (CPU; "on" anywhere): bitsandbytes has no fast 4-bit kernel for CPUs without
AVX-512, so a QLoRA step there spends most of its time dequantising every frozen NF4 weight twice (forward and
backward). The frozen weights never change during LoRA training, so dequantising each one once and
reusing the result gives exactly the same forward and gradients (the same NF4-rounded values, in the
compute dtype) at fp32 speed. It costs the memory of the dequantised weights, which the memory
estimate shows as its own term; it is used only where the weights fit comfortably in RAM.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

CACHE_ATTR = "_studio_dequantized"


def _cached_forward(self, x: torch.Tensor) -> torch.Tensor:
    w = getattr(self, CACHE_ATTR)
    bias = self.bias.to(w.dtype) if self.bias is not None else None
    return F.linear(x.to(w.dtype), w, bias).to(x.dtype)


def linear4bit_modules(model) -> list:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def dequantized_bytes(model, dtype: torch.dtype = torch.float32) -> int:
    size = torch.finfo(dtype).bits // 8
    return sum(m.out_features * m.in_features * size for m in linear4bit_modules(model))


def enable_dequant_cache(model, dtype: torch.dtype | None = None) -> int:
    """Dequantise every frozen bitsandbytes 4-bit weight once; returns how many layers were cached."""
    import bitsandbytes.functional as bnbf

    n = 0
    for m in linear4bit_modules(model):
        if hasattr(m, CACHE_ATTR):
            continue
        w = bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state)
        w = w.to(dtype or m.compute_dtype or torch.float32).detach()
        w.requires_grad_(False)
        m.register_buffer(CACHE_ATTR, w, persistent=False)
        m.forward = types.MethodType(_cached_forward, m)
        n += 1
    return n


def cpu_has_fast_4bit() -> bool:
    """bitsandbytes vectorises its CPU 4-bit kernels for AVX-512 (the same test it makes); without them a
    QLoRA step on CPU is about 10x slower than with cached fp32 weights, with them the cache gains nothing
    (bench/train_speed.py: 148 vs 162 real tok/s on an AVX512-BF16 CPU, within its noise)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def should_cache_dequantized(model, device: str, choice: str = "auto") -> bool:
    """on: on any device (on a GPU it gives back the 4-bit memory saving for bf16 matmuls without the
    per-step dequantisation). auto: on a CPU without AVX-512, when the dequantised weights take under a
    quarter of the available memory; never on a GPU, where it is not yet measured."""
    if choice in ("on", "off"):
        return choice == "on"
    if device != "cpu" or cpu_has_fast_4bit():
        return False
    avail = meminfo_bytes("MemAvailable")
    return avail > 0 and dequantized_bytes(model) < avail / 4


def meminfo_bytes(key: str) -> int:
    """A /proc/meminfo figure (MemTotal, MemAvailable, ...) in bytes; 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(f"{key}:"))
    except (OSError, StopIteration):
        return 0
