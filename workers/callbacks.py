"""The one way training reports back: a TrainerCallback that writes to the database.

Metric points are buffered and written in batches (never one transaction per step); the heartbeat
and the cancel flag are checked at most once a second. Stopping uses ``control.should_training_stop``
after asking for a checkpoint, so a cancelled or interrupted run can be resumed. An evaluation is stopped
between its batches (``studio.cancel.Stopped``), so a long one never holds a cancelled run. ``FiniteGuard``
stops a run whose loss, gradient norm or adapter weights stop being finite numbers.
"""
from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import time

from transformers import TrainerCallback

from studio import db
from studio.cancel import Stopped, Watch
from studio.method_info import METHOD_METRICS
from workers.checkpoints import COMPLETE_MARKER
from workers.device import is_main, world_size
from workers.stopping import SHUTDOWN, agree_on_stop

log = logging.getLogger("studio.train")



def _memory_gb() -> float:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 1e9
    except Exception:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # peak RSS (kB on Linux)


class StudioCallback(TrainerCallback):
    def __init__(self, job_id: str, flush_seconds: float = 2.0, poll_seconds: float = 1.0, on_checkpoint=None):
        self.job_id = job_id
        self.flush_seconds = flush_seconds
        self.poll_seconds = poll_seconds
        self.on_checkpoint = on_checkpoint
        self.buffer: list[dict] = []
        self.last_flush = 0.0
        self.stop_reason: str | None = None   # "cancelled" | "interrupted"
        self._last_tokens: tuple[float, float] | None = None
        self.is_main = is_main()
        self.world_size = world_size()
        # the cancel flag is read by the main rank only; every rank sees the shutdown flag
        self.watch = Watch(job_id if self.is_main else None, SHUTDOWN.is_set, poll_seconds)
        self.loop_started = self.step_ended = time.perf_counter()  # evaluations and saves follow a step's end

    # -- helpers ----------------------------------------------------------------------------------
    def flush(self, state=None) -> None:
        if not self.is_main:
            return
        rows, self.buffer = self.buffer, []
        db.add_metrics(self.job_id, rows)
        values = {"heartbeat_at": time.time()}
        if state is not None:
            values.update(current_step=state.global_step, epoch=state.epoch)
        db.update_job(self.job_id, **values)
        self.last_flush = time.time()

    def _poll(self, control, args=None) -> None:
        if self.stop_reason is None:
            self.stop_reason = self.watch.reason()
        if self.world_size > 1:  # every rank, every step: all ranks stop at the same step or none does
            self.stop_reason = agree_on_stop(self.stop_reason, getattr(args, "device", None))
        if self.stop_reason:
            control.should_save = True
            control.should_training_stop = True

    # -- hooks ------------------------------------------------------------------------------------
    def _timing(self, what: str, state) -> None:
        """One "timing" line in train.log: how long ``what`` took since the last step ended (the first-run
        bench splits a run's time with these)."""
        now = time.perf_counter()
        log.info("timing %s %.3f s at step %d", what, now - self.step_ended, state.global_step)
        self.step_ended = now

    def on_train_begin(self, args, state, control, **kwargs):
        self.loop_started = time.perf_counter()
        if self.is_main:
            db.update_job(self.job_id, total_steps=state.max_steps, heartbeat_at=time.time())

    def on_step_end(self, args, state, control, **kwargs):
        self._poll(control, args)
        if time.time() - self.last_flush >= self.flush_seconds:
            self.flush(state)
        self.step_ended = time.perf_counter()
        return control

    def on_prediction_step(self, args, state, control, **kwargs):
        """After each evaluation batch: a cancelled run stops here, without the rest of the evaluation (the ranks
        of a multi-device run evaluate together, so they stop at the next step's end instead)."""
        if self.world_size == 1 and (reason := self.watch.reason()):
            self.stop_reason = reason
            raise Stopped(reason, f"the evaluation at step {state.global_step}")

    def on_evaluate(self, args, state, control, **kwargs):
        if self.is_main:
            self._timing("evaluation", state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        if "loss" in logs:
            row["loss"] = float(logs["loss"])
        if "eval_loss" in logs:
            row["eval_loss"] = float(logs["eval_loss"])
        for src, dst in (("learning_rate", "learning_rate"), ("grad_norm", "grad_norm"), ("num_tokens", "num_tokens")):
            if logs.get(src) is not None and "eval_loss" not in logs:
                row[dst] = float(logs[src])
        if "eval_loss" not in logs:  # the method's own training metrics (reward margins, mean reward, ...)
            row.update((key, float(logs[key])) for key in METHOD_METRICS if logs.get(key) is not None)
        if row.get("num_tokens") is not None:
            if self._last_tokens is not None:
                dt = row["time"] - self._last_tokens[1]
                if dt > 0:
                    row["tokens_per_second"] = (row["num_tokens"] - self._last_tokens[0]) / dt
            self._last_tokens = (row["num_tokens"], row["time"])
        if "loss" in row or "eval_loss" in row:
            row["memory_gb"] = _memory_gb()
            self.buffer.append(row)
        if "eval_loss" in row:
            self.flush(state)

    def on_save(self, args, state, control, **kwargs):
        # The checkpoint folder is complete once on_save runs: mark it so resume never picks a torn one.
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self.is_main and os.path.isdir(ckpt):
            with open(os.path.join(ckpt, COMPLETE_MARKER), "w") as fh:
                fh.write(str(time.time()))
            if self.on_checkpoint is not None:
                self.on_checkpoint(ckpt, state.global_step)
        self.flush(state)
        if self.is_main:
            self._timing("checkpoint", state)

    def on_train_end(self, args, state, control, **kwargs):
        self.flush(state)
        if self.is_main:
            log.info("timing training-loop %.3f s at step %d", time.perf_counter() - self.loop_started,
                     state.global_step)


ADVICE = "lower the learning rate, keep gradient clipping on (max grad norm about 1) or use bf16/fp32 rather than fp16"


def non_finite_word(value: float) -> str:
    return "NaN" if math.isnan(value) else "infinite"


def adapter_is_finite(model) -> bool:
    """Whether every trainable (adapter) weight is a finite number."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


class FiniteGuard(TrainerCallback):
    """Fails a run whose loss or gradient norm becomes NaN or infinite, or whose adapter weights do.

    It stops training through ``control.should_training_stop`` and leaves the sentence in ``failure`` for
    the train loop to report. A checkpoint written with non-finite weights is removed, so a resume starts
    from the last finite one; the train loop never saves non-finite weights as the adapter.
    """

    def __init__(self):
        self.failure: str | None = None
        self.is_main = is_main()

    def _fail(self, control, sentence: str) -> None:
        if self.failure is None:
            self.failure = sentence
        control.should_training_stop = True
        control.should_save = control.should_evaluate = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, name in (("loss", "loss"), ("grad_norm", "gradient norm")):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                self._fail(control, f"the {name} became {non_finite_word(value)} at step {state.global_step}: {ADVICE}")
                return

    def on_save(self, args, state, control, model=None, **kwargs):
        if not self._weights_finite(state, control, model) and self.is_main:
            # the folder goes with its completion marker: a resume starts from the last finite checkpoint
            shutil.rmtree(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), ignore_errors=True)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.failure is None:
            self._weights_finite(state, control, model)

    def _weights_finite(self, state, control, model) -> bool:
        if model is None or adapter_is_finite(model):
            return True
        self._fail(control, f"the adapter weights stopped being finite numbers by step {state.global_step}: {ADVICE}")
        return False
