"""What every training method's TRL arguments share, as small pure functions: the device and its precision,
quantisation, the optimizer, the schedule with its automatic evaluation and checkpoint cadence, the common
``TrainingArguments`` values, and the rows tokenised with the model's chat template.

workers/train.py runs a job with these and workers/methods/ build their configs from them; this module imports
neither, so the two depend on it and not on each other.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from studio.spec import JobSpec

log = logging.getLogger("studio.train")


# ---- device facts ---------------------------------------------------------------------------------

def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_is_fast(device: str | None = None) -> bool:
    """bf16 only where the hardware computes it natively; emulated bf16 is far slower than fp32."""
    device = device or device_name()
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def device_facts() -> dict:
    """What the Train form's memory estimate needs to know about this worker's device."""
    if device_name() == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "device_name": props.name, "memory_gb": props.total_memory / 1e9,
                "gpu_count": torch.cuda.device_count(), "bf16": bf16_is_fast("cuda"), "fast_4bit": True}
    import platform

    from workers.speed import cpu_has_fast_4bit, meminfo_bytes

    return {"device": "cpu", "device_name": f"CPU ({os.cpu_count()} cores, {platform.machine()})",
            "memory_gb": meminfo_bytes("MemTotal") / 1e9, "gpu_count": 0, "bf16": bf16_is_fast("cpu"), "fast_4bit": cpu_has_fast_4bit()}


def compute_dtype(spec: JobSpec, device: str | None = None) -> torch.dtype:
    if spec.bnb_4bit_compute_dtype != "auto":
        return getattr(torch, spec.bnb_4bit_compute_dtype)
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def precision_flags(spec: JobSpec, device: str | None = None) -> dict:
    p = spec.resolved_precision(bf16_is_fast(device))
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


# ---- spec -> library configs (pure) -------------------------------------------------------------

def quantization_config(spec: JobSpec, device: str | None = None):
    from transformers import BitsAndBytesConfig

    if spec.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=spec.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=compute_dtype(spec, device),
        )
    if spec.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def optimizer(spec: JobSpec, device: str) -> str:
    """transformers' ``optim`` value; a paged optimizer on a device that cannot page is refused, not run unpaged."""
    from studio.adapter_types import optimizer_problem

    if problem := optimizer_problem(spec.optim, device):
        raise ValueError(problem)
    return spec.optim


CADENCE_BUDGET = 0.05  # evaluations, and checkpoints, each: about a twentieth of the run's time
EVAL_BATCH_COST = 1 / 3  # a forward-only batch against a training step (forward and backward)
SAVE_COST = 1.0  # writing the adapter and optimizer state of a checkpoint, in training steps
SHORT_RUN = 50  # steps; shorter runs evaluate at most twice and checkpoint midway and at the end
MAX_ROUNDS = 5


def cadence(total_steps: int, eval_batches: int) -> tuple[int, int]:
    """How many evaluations and checkpoints (the final one included) a run of ``total_steps`` gets when the
    spec leaves eval_steps / save_steps at 0.

    Each spends at most CADENCE_BUDGET of the run (together about a tenth): an evaluation costs ``eval_batches``
    forward passes of EVAL_BATCH_COST of a step each, a checkpoint SAVE_COST steps. Each is between 1 and
    MAX_ROUNDS. A short run (under SHORT_RUN steps) evaluates once or twice and checkpoints at the end plus once
    midway, for resuming.
    """
    budget = CADENCE_BUDGET * total_steps
    evals = max(1, min(MAX_ROUNDS, int(budget / (max(1, eval_batches) * EVAL_BATCH_COST))))
    saves = max(2, min(MAX_ROUNDS, int(budget / SAVE_COST)))
    if total_steps < SHORT_RUN:
        evals, saves = min(evals, 2), 2
    return evals, min(saves, total_steps)


def schedule(spec: JobSpec, n_train: int, world_size: int = 1, n_eval: int | None = None) -> dict:
    """Total optimizer steps and the eval / checkpoint intervals; 0 in the spec = ``cadence``'s automatic one.
    ``n_eval``: held-out rows (default: what eval_split holds out of the data)."""
    per_step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps * world_size
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    epochs = spec.resolved_epochs(n_train)
    total = spec.max_steps if spec.max_steps > 0 else max(1, math.ceil(epochs * steps_per_epoch))
    if n_eval is None:
        n_eval = round(n_train * spec.eval_split / (1 - spec.eval_split)) if spec.eval_split < 1 else n_train
    evals, saves = cadence(total, math.ceil(n_eval / (spec.per_device_train_batch_size * world_size)))
    eval_steps = spec.eval_steps or math.ceil(total / evals)
    save_steps = spec.save_steps or math.ceil(total / saves)
    if not spec.save_steps and n_eval > 0 and spec.eval_split > 0:
        # automatic checkpoints fall on evaluation steps, so each one has an eval loss to be chosen by
        save_steps = eval_steps * max(1, round(save_steps / eval_steps))
    if spec.early_stopping_patience:
        save_steps = eval_steps  # the best checkpoint must exist where it was evaluated
    return {"total_steps": total, "steps_per_epoch": steps_per_epoch, "eval_steps": eval_steps,
            "save_steps": save_steps, "epochs": epochs}


def common_args(spec: JobSpec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None) -> dict:
    from workers import trackers
    from workers.device import world_size as processes

    world_size = processes()
    sched = schedule(spec, n_train, world_size)
    if spec.num_train_epochs == 0 and spec.max_steps == 0:
        log.info("epochs: automatic, %g for %d training rows (%d steps)", sched["epochs"], n_train, sched["total_steps"])
    args = dict(
        output_dir=str(output_dir),
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler_type,
        warmup_steps=int(round(spec.warmup_ratio * sched["total_steps"])),
        num_train_epochs=sched["epochs"],
        max_steps=spec.max_steps if spec.max_steps > 0 else -1,
        per_device_train_batch_size=spec.per_device_train_batch_size,
        per_device_eval_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        gradient_checkpointing=spec.gradient_checkpointing,
        torch_compile=spec.torch_compile,
        weight_decay=spec.weight_decay,
        optim=optimizer(spec, device or device_name()),
        max_grad_norm=spec.max_grad_norm if spec.max_grad_norm > 0 else None,
        logging_steps=spec.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss is reported (and stops the run), never averaged away
        eval_strategy="steps" if has_eval else "no",
        eval_steps=sched["eval_steps"] if has_eval else None,
        save_strategy="steps",
        save_steps=sched["save_steps"],
        save_total_limit=3,
        seed=spec.seed,
        data_seed=spec.seed,
        report_to=trackers.report_to(spec),
        disable_tqdm=True,
        use_cpu=(device or device_name()) == "cpu",
        dataloader_pin_memory=False,
        **precision_flags(spec, device),
    )
    if spec.max_grad_norm == 0:
        args["max_grad_norm"] = 0.0
    if world_size > 1:
        # every LoRA weight gets a gradient each step; the default search for unused ones (PeftModel is not a
        # PreTrainedModel) costs a graph walk per step and breaks with gradient checkpointing
        args["ddp_find_unused_parameters"] = False
    if has_eval:  # the checkpoint with the lowest eval loss survives the rotation (the best-checkpoint choice)
        args.update(metric_for_best_model="eval_loss", greater_is_better=False)
    if spec.early_stopping_patience and has_eval:
        args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                    save_total_limit=None)
    return args


# ---- data -----------------------------------------------------------------------------------------

def encode_rows(tokenizer, rows: list[dict], kind: str, spec: JobSpec) -> list[dict]:
    """Tokenise with the model's chat template and the spec's system-prompt choice; assistant tokens carry the
    loss (TRL's assistant_masks).
    Plain text is packed into max-length blocks; over-long conversations are truncated or dropped (spec.overlong)."""
    from studio.render import default_system_prompt, encode_chat, encode_segments, pack_text, with_system_prompt

    if kind == "text":  # documents packed into blocks; template-free segmented rows each as written, masks kept
        out = [{"input_ids": block, "assistant_masks": [1] * len(block)}
               for block in pack_text(tokenizer, [row["text"] for row in rows if not row.get("segments")],
                                      spec.max_length)]
        for row in rows:
            if row.get("segments"):
                ids, mask = encode_segments(tokenizer, row["segments"])
                if len(ids) > spec.max_length and spec.overlong == "drop":
                    continue
                ids, mask = ids[:spec.max_length], mask[:spec.max_length]
                if any(mask):
                    out.append({"input_ids": ids, "assistant_masks": mask})
        return out
    default = default_system_prompt(tokenizer)
    mode = spec.system_prompt_mode
    if mode == "auto":  # a run resolves it on all its rows first (resolve_system_prompt); these rows alone here
        from studio.datasets.stats import carries_identity

        mode = spec.resolved_system_prompt_mode(carries_identity(rows))
    out = []
    for row in rows:
        messages = with_system_prompt(row["messages"], mode, spec.system_prompt, default)
        ids, mask = encode_chat(tokenizer, messages, None, row.get("tools"))
        if len(ids) > spec.max_length and spec.overlong == "drop":
            continue
        ids, mask = ids[:spec.max_length], mask[:spec.max_length]
        if not spec.assistant_only_loss:
            mask = [1] * len(ids)
        if any(mask):
            out.append({"input_ids": ids, "assistant_masks": mask})
    return out
