"""A run that fits its memory: an optional fit check before training, a memory budget checked at every
step, and a retry with smaller micro-batches (the same effective batch) when a step runs out of memory.

What is measured: on a GPU, the bytes torch allocated (``max_memory_allocated``) against the device's memory
or ``STUDIO_MEMORY_LIMIT_GB``, whichever is less. On a CPU, the worker process's resident memory (the peak
of each step from ``VmHWM`` in /proc/self/status, reset before each step through /proc/self/clear_refs)
against ``STUDIO_MEMORY_LIMIT_GB``; without a budget the CPU has no check (the kernel decides). A step
whose peak passes the budget raises ``torch.OutOfMemoryError``, the same error a GPU raises, so one retry
path serves both.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import math
import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from studio import db, lifecycle
from studio.cancel import Stopped, Watch
from studio.settings import get_settings
from workers.checkpoints import last_complete_checkpoint
from workers.device import is_main, world_size
from workers.stopping import SHUTDOWN, watching

log = logging.getLogger("studio.fit")

RETRIES = 2
MARGIN = 0.15       # the fit check leaves this fraction of the budget free
FIT_STEPS = 2       # forward + backward passes the fit check measures, on the longest batches
GB = 1e9


# ---- memory -----------------------------------------------------------------------------------------

def _status_bytes(key: str) -> int:
    """A /proc/self/status figure (VmRSS, VmHWM) in bytes; 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(f"{key}:"))
    except (OSError, StopIteration):
        return 0


def current_bytes(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else _status_bytes("VmRSS")


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the process's peak resident memory starts again from its current value


def peak_bytes(device: str) -> int:
    """Peak since ``reset_peak``; on a CPU where the peak cannot be reset, the current resident memory."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return _status_bytes("VmHWM") if _peak_resets() else _status_bytes("VmRSS")


def _peak_resets() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK)


def release_memory(device: str) -> None:
    """Give freed memory back: to the GPU's free pool, or on a CPU to the system (glibc keeps freed heap)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def budget_bytes(device: str) -> int | None:
    """The most memory a step may use: ``STUDIO_MEMORY_LIMIT_GB``, on a GPU at most its memory; None on
    a CPU without a budget."""
    limit = get_settings().memory_limit_gb
    budget = int(limit * GB) if limit else None
    if device == "cuda":
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return min(total, budget) if budget else total
    return budget


def capacity_bytes(device: str) -> int:
    """What the fit check fits into: the budget, or on a CPU without one what the process holds plus what
    the system has available."""
    from workers.speed import meminfo_bytes

    return budget_bytes(device) or current_bytes(device) + meminfo_bytes("MemAvailable")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class MemoryBudget(TrainerCallback):
    """Raises ``torch.OutOfMemoryError`` when a micro-batch's peak memory passes the budget, before the
    optimizer step, so an over-budget step never changes the weights."""

    def __init__(self, budget: int, device: str):
        self.budget, self.device = budget, device

    def on_step_begin(self, args, state, control, **kwargs):
        reset_peak(self.device)

    def on_substep_end(self, args, state, control, **kwargs):
        self._check(state)
        reset_peak(self.device)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._check(state)

    def _check(self, state) -> None:
        peak = peak_bytes(self.device)
        if peak > self.budget:
            raise torch.OutOfMemoryError(f"step {state.global_step + 1} needed {peak / GB:.2f} GB, over the "
                                         f"{self.budget / GB:.2f} GB memory budget")


# ---- batch shapes (pure) ------------------------------------------------------------------------------

def halved(spec):
    """The spec with a micro-batch at most half as large and the accumulation that keeps the effective batch;
    None at a batch of 1."""
    b, a = spec.per_device_train_batch_size, spec.gradient_accumulation_steps
    smaller = max((d for d in range(1, b // 2 + 1) if b % d == 0), default=None)
    if smaller is None:
        return None
    return dataclasses.replace(spec, per_device_train_batch_size=smaller, gradient_accumulation_steps=a * b // smaller)


def projected_peak(idle: int, peak: int, measured_batch: int, batch: int) -> int:
    """A step's peak at ``batch``: the memory held before the step plus what the step added, which grows
    with the number of rows."""
    return idle + math.ceil((peak - idle) * batch / measured_batch)


def largest_fitting_batch(idle: int, peak: int, measured_batch: int, effective: int, budget: int) -> int | None:
    """The largest micro-batch dividing the effective batch whose projected peak leaves MARGIN of the budget."""
    fitting = [b for b in range(1, effective + 1) if effective % b == 0
               and projected_peak(idle, peak, measured_batch, b) <= budget * (1 - MARGIN)]
    return max(fitting, default=None)


# ---- the fit check ------------------------------------------------------------------------------------

def _row_tokens(row: dict) -> int:
    return sum(len(v) for k, v in row.items() if k.endswith("input_ids"))


def measure(trainer, device: str) -> tuple[int, int, float]:
    """(memory before, peak, tokens/s) of forward + backward passes on the longest training rows at the
    trainer's micro-batch; the gradients are dropped, the weights untouched."""
    data = trainer.train_dataset
    batch = trainer.args.per_device_train_batch_size
    lengths = [_row_tokens(row) for row in data]
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:batch * FIT_STEPS]
    loader = trainer.get_eval_dataloader(data.select(longest))  # sequential: the longest batch first
    model = trainer.model
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets before each step
    release_memory(device)
    idle = current_bytes(device)
    reset_peak(device)
    start = time.perf_counter()
    for inputs in loader:
        trainer.training_step(model, inputs)
    elapsed = time.perf_counter() - start
    peak = peak_bytes(device)
    model.zero_grad(set_to_none=True)
    return idle, peak, sum(lengths[i] for i in longest) / elapsed


def fit_check(spec, start, device: str, budget: int) -> tuple:
    """The spec the run trains with: the largest micro-batch (dividing the effective batch) whose peak on the
    longest rows fits the budget with a margin, with gradient checkpointing turned on when none fits
    without it; the sentence saying so. ``start(spec)`` builds the trainer (first item of what it returns)."""
    effective = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    for checkpointing in dict.fromkeys((spec.gradient_checkpointing, True)):
        trial = dataclasses.replace(spec, gradient_checkpointing=checkpointing)
        while True:
            built = start(trial)
            try:
                idle, peak, speed = measure(built[0], device)
                failed = False
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failed = True
            del built
            release_memory(device)
            if not failed:
                break
            if (trial := halved(trial)) is None:
                break
        if trial is None:
            continue
        batch = largest_fitting_batch(idle, peak, trial.per_device_train_batch_size, effective, budget)
        if batch is not None:
            chosen = dataclasses.replace(trial, per_device_train_batch_size=batch,
                                         gradient_accumulation_steps=effective // batch)
            return chosen, _fit_sentence(idle, peak, trial, budget, chosen, speed)
    smallest = dataclasses.replace(spec, per_device_train_batch_size=1, gradient_accumulation_steps=effective,
                                   gradient_checkpointing=True)
    return smallest, (f"fit check: even batch 1 with gradient checkpointing may not fit the {budget / GB:.2f} GB "
                      f"budget: training with batch 1 x accumulation {effective}, gradient checkpointing on")


def _fit_sentence(idle: int, peak: int, measured, budget: int, chosen, speed: float) -> str:
    return (f"fit check: peak {peak / GB:.3f} GB at batch {measured.per_device_train_batch_size} "
            f"({idle / GB:.3f} GB before the step, budget {budget / GB:.3f} GB): training with batch {chosen.per_device_train_batch_size} x "
            f"accumulation {chosen.gradient_accumulation_steps}, gradient checkpointing "
            f"{'on' if chosen.gradient_checkpointing else 'off'}, {speed:.0f} tokens/s")


# ---- the run ------------------------------------------------------------------------------------------

def train_with_retries(job_id: str, spec, start, output_dir: Path, checkpoint: Path | None, device: str):
    """Train, retrying a run that runs out of memory (up to RETRIES times) from its last complete checkpoint
    with half the micro-batch and twice the accumulation: the same effective batch, learning-rate schedule
    and number of optimizer steps. ``start(spec)`` builds a fresh model and trainer (the first item of what
    it returns). Returns (what ``start`` returned for the finished attempt, the spec it trained with); the
    job's stored spec follows every change, so a later resume trains with the batch that fitted.

    A cancel (or the worker's shutdown) seen by a long loop before or during training ends the attempt: the
    general-replay answers (``start`` makes them, watching ``workers.stopping.current()``) stop between batches,
    and then training does not begin; golden prompts and evaluation raise ``studio.cancel.Stopped`` out of
    training. Either way the run's ``StudioCallback`` gets the reason, and the run ends with it. Single-device
    runs only: the ranks of a multi-device run stop together at a step's end."""
    distributed = world_size() > 1  # every rank would have to retry (or stop) together
    watch = Watch(None if distributed else job_id, None if distributed else SHUTDOWN.is_set)
    with watching(watch):
        return _train(job_id, spec, start, output_dir, checkpoint, device, watch, distributed)


def _train(job_id: str, spec, start, output_dir: Path, checkpoint: Path | None, device: str, watch: Watch,
           distributed: bool):
    if spec.fit_check and checkpoint is None:
        chosen, sentence = fit_check(spec, start, device, capacity_bytes(device))
        log.info("%s", sentence)
        spec = _record(job_id, spec, chosen, sentence)
    budget = budget_bytes(device) if get_settings().memory_limit_gb else None
    retries = 0
    while True:
        built = start(spec)
        trainer = built[0]
        if budget:
            trainer.add_callback(MemoryBudget(budget, device))
        try:
            if (reason := watch.reason()) is not None:  # while the model loaded or the replay answers were made
                raise Stopped(reason, "the preparation of the run")
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            return built, spec
        except Stopped as exc:
            log.warning("%s", exc)
            stopped(trainer, exc.reason)
            return built, spec
        except Exception as exc:
            smaller = halved(spec)
            failed_at, reason = trainer.state.global_step + 1, str(exc)
            if not is_out_of_memory(exc) or retries == RETRIES or smaller is None or distributed:
                if is_out_of_memory(exc):
                    exc.failed_step = failed_at  # the step the job's error sentence names
                raise
        del built, trainer  # outside the except block: the traceback no longer holds the model
        release_memory(device)
        retries += 1
        checkpoint = last_complete_checkpoint(output_dir)
        resumed = int(checkpoint.name.split("-")[1]) if checkpoint else 0
        sentence = (f"ran out of memory at step {failed_at} with batch {spec.per_device_train_batch_size}: retrying "
                    f"from {checkpoint.name if checkpoint else 'the start'} with batch "
                    f"{smaller.per_device_train_batch_size} x accumulation {smaller.gradient_accumulation_steps} "
                    f"(same effective batch)")
        log.warning("%s (%s)", sentence, reason)
        db.delete_metrics_after(job_id, resumed)
        db.update_job(job_id, current_step=resumed)
        spec = _record(job_id, spec, smaller, sentence)


def stopped(trainer, reason: str) -> None:
    """Give the run's ``StudioCallback`` the reason a long loop stopped it for: the run ends with it."""
    from workers.callbacks import StudioCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, StudioCallback) and callback.stop_reason is None:
            callback.stop_reason = reason


def _record(job_id: str, old, new, sentence: str):
    """The job's event log gets the sentence; its stored spec the batch, accumulation and checkpointing."""
    if is_main():
        lifecycle.note(job_id, sentence)
        if new != old:
            db.update_job(job_id, spec_json=new.to_json())
    return new
