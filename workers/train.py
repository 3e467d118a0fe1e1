"""Run one job: JobSpec -> bitsandbytes / peft configs -> the method's TRL trainer (workers/methods/).

Small pure translation functions at the top (testable without a GPU), then ``run_job`` which the huey
task calls: a ``Training`` run through ``workers.runner.JobRun`` (the allowed-check, running, the heartbeat, the
settle on exit, as for every job kind). Reports go to the database only, through ``StudioCallback``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import weakref
from pathlib import Path

import torch

from studio import db
from studio.library import split_rows
from studio.settings import get_settings
from studio.spec import JobSpec
from workers.checkpoints import CHECKPOINTS, last_complete_checkpoint
from workers.arguments import compute_dtype, device_facts, device_name, precision_flags, quantization_config
from workers.device import is_main, local_rank
from workers.runner import JobRun
from workers.stopping import SHUTDOWN

log = logging.getLogger("studio.train")

ADAPTER = "adapter"


def load_training_rows(spec: JobSpec) -> tuple[str, list[dict], list[dict]]:
    from studio.library import load_record

    rec = db.get_dataset(spec.dataset)
    if rec is None:
        raise ValueError(f"the dataset '{spec.dataset}' does not exist (it may have been deleted)")
    data = load_record(rec)
    if note := data.dropped_sentence():
        log.info("dataset '%s': %s", rec.name, note)
    if spec.eval_dataset:
        erec = db.get_dataset(spec.eval_dataset)
        if erec is None:
            raise ValueError(f"the eval dataset '{spec.eval_dataset}' does not exist")
        edata = load_record(erec)
        return _for_method(spec, data.kind, data.rows) + (_for_method(spec, edata.kind, edata.rows)[1],)
    kind, rows = _for_method(spec, data.kind, data.rows)
    train, evaluation = split_rows(rows, spec.eval_split, spec.seed)
    return kind, train, evaluation


def resolve_system_prompt(job_id: str, spec: JobSpec, rows: list[dict]) -> JobSpec:
    """system_prompt_mode "auto" made concrete on the run's rows, and recorded in the job's stored spec (chat
    asks the adapter the same way) with a sentence in its log."""
    import dataclasses

    from studio.datasets.stats import carries_identity

    if spec.system_prompt_mode != "auto":
        return spec
    teaches = carries_identity(rows)
    resolved = dataclasses.replace(spec, system_prompt_mode=spec.resolved_system_prompt_mode(teaches))
    if is_main():
        db.update_job(job_id, spec_json=resolved.to_json())
        log.info("system prompt: the replies teach their own name or maker, so the chat template's default system "
                 "prompt is left out (omit)" if teaches else "system prompt: the chat template's default is kept (keep)")
    return resolved


def _for_method(spec: JobSpec, kind: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """The rows as the chosen method trains them (workers/methods/)."""
    from workers.methods import TRAINERS

    return TRAINERS[spec.method].prepare(spec, kind, rows)


# ---- model ----------------------------------------------------------------------------------------

def disable_cpu_bf16_repack(model) -> int:
    """bitsandbytes on AVX512-BF16 CPUs repacks a Linear4bit weight in place during a no-grad eval
    forward, after which no input gradient flows through it and every LoRA layer below stops learning.
    Turning the fast path off on the training model keeps gradients flowing after evaluation."""
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_model_for_training(spec: JobSpec, model_dir: Path, device: str | None = None):
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from studio import catalog
    from workers import adapters

    device = device or device_name()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    qconfig = quantization_config(spec, device)
    if qconfig is not None and full_precision_instead_of_4bit(spec, model_dir, device):
        log.info("4-bit on a CPU without fast 4-bit kernels: the frozen base is loaded at full precision instead "
                 "of quantised and dequantised again (the same memory, no quantisation pass, the weights chat uses)")
        qconfig = None
    # the frozen base as chat serves it (workers/inference/chat_engine.py): bf16 on a GPU training in bf16 (no per-step casts, half the
    # memory), fp32 on a CPU, where bf16 training autocasts over it. An adapter trained over bf16-rounded weights
    # on a CPU forgot more: the 36-row acceptance identity set lost 11.5 probe points against 3.5 over the fp32
    # base, at the same speed (bench/forgetting.py --data acceptance, AVX512-BF16 CPU).
    frozen = torch.bfloat16 if precision_flags(spec, device)["bf16"] and device == "cuda" else torch.float32
    kwargs = {"dtype": compute_dtype(spec, device) if qconfig is not None else frozen}
    if spec.attn_implementation != "auto":
        kwargs["attn_implementation"] = spec.attn_implementation
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        if device == "cuda":
            kwargs["device_map"] = {"": local_rank()}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if qconfig is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    linear = sorted(catalog.linear_layers_from_safetensors(model_dir)) or _linear_names(model)
    set_seed(spec.seed)  # the adapter's initial weights follow the spec's seed: same on every rank, host and run
    model = get_peft_model(model, adapters.peft_config(spec, linear, model_dir))
    disable_cpu_bf16_repack(model)
    from workers import speed

    if qconfig is not None and spec.load_in_4bit and speed.should_cache_dequantized(model, device, spec.dequant_cache):
        n = speed.enable_dequant_cache(model)
        log.info("dequantised-weight cache: %d 4-bit layers, %.0f MB", n, speed.dequantized_bytes(model) / 1e6)
    return model, tokenizer


def full_precision_instead_of_4bit(spec: JobSpec, model_dir: Path, device: str) -> bool:
    """dequant_cache "auto" on a CPU without fast 4-bit kernels, where the cache would hold every frozen weight in
    fp32 anyway: loading them at full precision skips quantising (minutes on such a CPU) and dequantising."""
    from studio import catalog, memory
    from workers.speed import cpu_has_fast_4bit, meminfo_bytes

    if not spec.load_in_4bit or spec.dequant_cache != "auto" or device != "cpu" or cpu_has_fast_4bit():
        return False
    config = catalog.read_local_config(model_dir)
    return config is not None and memory.dequant_cache_on(spec, config, "cpu", meminfo_bytes("MemAvailable") / 1e9)


def _linear_names(model) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - {"lm_head"})


# ---- the job ----------------------------------------------------------------------------------------

def human_error(exc: BaseException, step: int, spec: JobSpec) -> str:
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower():
        estimate = ""
        try:
            from studio import catalog, memory

            config = catalog.config_for(spec.base_model)
            if config:
                facts = device_facts()
                est = memory.estimate_for_spec(spec, config, facts["device"], bf16=facts["bf16"],
                                               memory_gb=facts["memory_gb"], fast_4bit=facts["fast_4bit"])
                estimate = f" (estimated peak {est.total_gb:.1f} GB, device {facts['memory_gb']:.1f} GB)"
        except Exception:
            pass
        return (f"ran out of memory at step {step}{estimate}: try 4-bit, gradient checkpointing, a lower batch "
                f"size or a shorter max length")
    from studio.datasets import DatasetError
    from studio.models import ModelError

    if isinstance(exc, (DatasetError, ModelError, ValueError)) and text:
        return text[0].upper() + text[1:] if not text[0].isupper() else text
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"training stopped by an unexpected error at step {step}: {type(exc).__name__}" + (f": {first}" if first else "")


def refused_write(exc: BaseException, out: Path, writing: str | None, step: int | None = None) -> str | None:
    """The run's error when ``exc`` is a write the disk refused (full, read-only, not permitted), naming what was
    being written (at the trainer's ``step``) and where; the torn checkpoint or half-written adapter then goes,
    giving its space back."""
    from workers import disk

    error = disk.sentence(exc, out, writing, again="resume the run from its last checkpoint", step=step)
    if error is not None and is_main():
        disk.give_back(out, writing)
    return error


class _LogFile(logging.FileHandler):
    """train.log, whose writes a full disk refuses: said once on stderr (the worker's log), not with a traceback
    for every record."""

    refused = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.refused:
            self.refused = True
            import sys

            print(f"{self.baseFilename} could not be written ({sys.exc_info()[1]}); its records go to the worker's "
                  f"log only", file=sys.stderr, flush=True)


class JobLog:
    """Routes this job's log records (and tracebacks) into <job>/train.log, without the libraries'
    deprecation notices and housekeeping remarks (they say nothing about the run)."""

    DEPRECATION = ("FutureWarning:", "DeprecationWarning:", "is deprecated", "deprecated and will be removed",
                   # transformers sorting checkpoint folders on a filesystem with coarse timestamps
                   "mtime may not be reliable on this filesystem")

    def __init__(self, path: Path):
        self.handler = _LogFile(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.addFilter(self.keep)
        self.loggers = [logging.getLogger(n) for n in ("studio", "transformers", "trl", "peft", "py.warnings")]
        self.levels = {"studio": logging.INFO}

    def __enter__(self):
        logging.captureWarnings(True)
        for lg in self.loggers:
            lg.addHandler(self.handler)
            wanted = self.levels.get(lg.name, logging.WARNING)
            if lg.level == logging.NOTSET or lg.level > wanted:
                lg.setLevel(wanted)
        return self

    def __exit__(self, *exc):
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        self.handler.close()

    @classmethod
    def keep(cls, record: logging.LogRecord) -> bool:
        """False for a library's deprecation notice or housekeeping remark; the studio's own records always stay."""
        if record.name == "studio" or record.name.startswith("studio."):
            return True
        text = record.getMessage()
        return not any(marker in text for marker in cls.DEPRECATION)


def run_job(job_id: str, resume: bool = False, check_status: bool = True) -> str:
    """Train one job to completion, cancellation or interruption; returns the final status.

    ``check_status=False``: a rank of a multi-device job; its launcher checked the status already, and
    rank 0 may have set 'running' before the other ranks read the job."""
    job = db.get_job(job_id)
    if job is None:
        raise KeyError(f"job {job_id} does not exist")
    run = JobRun(job)
    if check_status and not run.allowed():  # cancelled while queued, or already picked up
        return job.status
    try:
        spec = JobSpec.from_dict(job.spec)
    except ValueError as exc:  # a row stored by an older build that today's spec refuses
        return run.settle("failed", "error", error=f"The stored configuration is no longer valid: {exc}")
    training = Training(job, spec, resume)
    run.error = training.error
    with JobLog(training.out / "train.log"):
        return run(training)


class Training:
    """One training job in this process, the body its ``JobRun`` runs: the rows, the model, training (smaller
    again after running out of memory), the adapter and the summary. It keeps what a failure's sentence names:
    the step reached, what a refused write was writing, the trainer built last."""

    def __init__(self, job: db.Job, spec: JobSpec, resume: bool):
        self.job, self.spec, self.resume = job, spec, resume
        self.out = get_settings().resolve(job.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device_name()
        self.main = is_main()
        self.step = 0
        self.writing: str | None = None  # what a refused write was writing: "checkpoint" while training, "adapter"
        self.latest = lambda: None  # the trainer built last, weakly: its step names the checkpoint a refused write was

    def error(self, exc: BaseException) -> str:
        """The job's error: the write the disk refused, else what stopped training at which step."""
        trainer = self.latest() if self.writing == "checkpoint" else None  # kept alive by the traceback
        return (refused_write(exc, self.out, self.writing, trainer.state.global_step if trainer is not None else None)
                or human_error(exc, getattr(exc, "failed_step", self.step), self.spec))

    def __call__(self, run: JobRun) -> str:
        from studio.datasets.stats import placeholder_note
        from workers import trackers
        from workers.bundled import model_folder
        from workers.fit import train_with_retries

        checkpoint = self.begin(run)
        kind, train_rows, eval_rows = load_training_rows(self.spec)
        model_dir = model_folder(self.spec.base_model)
        log.info("job %s: %d train rows, %d eval rows, base %s on %s", self.job.id, len(train_rows), len(eval_rows),
                 model_dir, self.device)
        if self.main and (blanks := placeholder_note(train_rows)):
            log.warning("job %s: %s", self.job.id, blanks)
        if kind == "chat":
            self.spec = resolve_system_prompt(self.job.id, self.spec, train_rows + eval_rows)
        build = TrainerBuilder(self, kind, train_rows, eval_rows, model_dir)
        self.writing = "checkpoint"
        (trainer, callback, guard, model), self.spec = train_with_retries(self.job.id, self.spec, build, self.out,
                                                                          checkpoint, self.device)
        self.writing = None
        self.step = trainer.state.global_step
        if guard.failure:
            raise ValueError(guard.failure)
        if callback.stop_reason:
            trackers.finish(trainer, None)
            return run.settle(callback.stop_reason, f"stopped at step {self.step}", current_step=self.step)
        return self.save(run, trainer, model, build.replayed, eval_rows) if self.main else "completed"

    def begin(self, run: JobRun) -> Path | None:
        """The job running, its metrics past the checkpoint it resumes from deleted; that checkpoint, or None."""
        checkpoint = last_complete_checkpoint(self.out) if self.resume else None
        if self.main:
            run.start("resumed" if self.resume else "started")
            if checkpoint is not None:
                self.step = int(checkpoint.name.split("-")[1])
                db.delete_metrics_after(self.job.id, self.step)
            elif self.resume:
                db.delete_metrics_after(self.job.id, 0)
        return checkpoint

    def save(self, run: JobRun, trainer, model, replayed: list[dict] | None, eval_rows: list[dict]) -> str:
        """The adapter and the summary (main rank), and the job completed; the forgetting check after it (SFT)."""
        from workers import adapters, trackers

        spec, out, step = self.spec, self.out, self.step
        saving = time.perf_counter()
        adapter_dir = out / ADAPTER
        shutil.rmtree(adapter_dir, ignore_errors=True)
        self.writing = ADAPTER
        adapters.save(trainer.model, spec, adapter_dir, out)
        self.writing = None
        log.info("timing final-save %.3f s at step %d", time.perf_counter() - saving, step)
        summary = _summary(trainer, adapter_dir, model)
        summary["general_replay_rows"] = len(replayed or [])
        summary.update(best_checkpoints(spec, out, trainer.state, eval_rows))
        probing = spec.forgetting_check and spec.method == "sft"
        if probing:
            summary["forgetting"] = {"state": "checking"}
        trackers.finish(trainer, adapter_dir)
        status = run.settle("completed", f"finished {step} steps", error=None,
                            adapter_path=get_settings().relative(adapter_dir), current_step=step,
                            summary_json=json.dumps(summary))
        if probing and status == "completed":  # the run is complete; the check only adds to its summary
            from workers.forgetting import after_run

            after_run(self.job.id, spec, trainer.model, trainer.processing_class, out, summary, skip=SHUTDOWN.is_set)
        return status


class TrainerBuilder:
    """A fresh model and trainer for a spec: the fit check's and each retry's after running out of memory
    (``workers.fit.train_with_retries`` calls it). The general-replay rows are made once, by the first model
    loaded; the golden prompts and the trackers are chosen once, for the run."""

    def __init__(self, training: Training, kind: str, train_rows: list[dict], eval_rows: list[dict], model_dir: Path):
        from studio.golden_prompts import golden_prompts_for
        from workers import trackers

        self.training, self.kind, self.train_rows, self.eval_rows, self.model_dir = (training, kind, train_rows,
                                                                                      eval_rows, model_dir)
        self.golden = golden_prompts_for(training.spec, eval_rows)
        self.tracking = trackers.check(training.spec) if training.main else trackers.Plan()
        self.replayed: list[dict] | None = None

    def __call__(self, spec: JobSpec):
        """(trainer, its StudioCallback, its FiniteGuard, the model) for ``spec``."""
        from workers import adapters, trackers
        from workers.callbacks import FiniteGuard, StudioCallback

        t = self.training
        started = time.perf_counter()
        model, tokenizer = load_model_for_training(spec, self.model_dir, t.device)
        log.info("timing model-load %.3f s at step 0", time.perf_counter() - started)
        if self.replayed is None:
            self.replayed = general_replay(spec, self.kind, self.train_rows, model, tokenizer, self.model_dir)
        callback = StudioCallback(t.job.id)
        trainer = build_trainer(spec, self.kind, model, tokenizer, self.train_rows + self.replayed, self.eval_rows,
                                t.out, callback, t.device)
        if t.main:
            adapters.prepare_saving(trainer, spec, t.out)  # the adapter type's own (LoRA: PiSSA / OLoRA)
        guard = FiniteGuard()
        trainer.add_callback(guard)
        if self.golden:  # answered at train begin (base), every checkpoint and the end, into <job>/golden/
            trainer.add_callback(self.golden_callback(spec, tokenizer, trainer))
        trackers.attach(trainer, spec, self.tracking, t.out, t.job.name)
        t.latest = weakref.ref(trainer)
        return trainer, callback, guard, model

    def golden_callback(self, spec: JobSpec, tokenizer, trainer):
        from workers.golden import GoldenPromptsCallback
        from workers.methods import golden_answer

        rows = self.train_rows + self.eval_rows
        return GoldenPromptsCallback(self.training.job.id, self.golden, tokenizer, skip=SHUTDOWN.is_set,
                                     automatic=not spec.save_steps, system=(spec.system_prompt_mode, spec.system_prompt),
                                     base=golden_base_key(spec, self.model_dir),
                                     answer=golden_answer(spec, rows, trainer), max_length=spec.max_length)


def general_replay(spec: JobSpec, kind: str, train_rows: list[dict], model, tokenizer, model_dir: Path) -> list[dict]:
    """The base's own answers to general instructions, trained beside the user's rows (studio/replay)."""
    from studio.replay import CACHE_DIR
    from workers.replay import replay_rows

    return replay_rows(spec, kind, len(train_rows), model, tokenizer, golden_base_key(spec, model_dir),
                       get_settings().home / CACHE_DIR)


def golden_base_key(spec: JobSpec, model_dir: Path) -> str:
    """The base as training loads it (folder and quantisation): its golden answers are cached under this."""
    quant = "4bit-" + spec.bnb_4bit_quant_type if spec.load_in_4bit else "8bit" if spec.load_in_8bit else "full"
    return f"{Path(model_dir).resolve()} {quant} {compute_dtype(spec)}"


def build_trainer(spec, kind, model, tokenizer, train_rows, eval_rows, out: Path, callback, device):
    """The chosen method's TRL trainer (workers/methods/), reporting through ``callback``."""
    from transformers import EarlyStoppingCallback

    from workers import trackers
    from workers.methods import TRAINERS
    from workers.threads import thread_callbacks

    threads = get_settings().train_threads
    callbacks = [callback, *thread_callbacks("all" if threads == "auto" and device != "cpu" else threads)]
    if spec.early_stopping_patience and eval_rows:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    trainer = TRAINERS[spec.method].build(spec, kind, model, tokenizer, train_rows, eval_rows, out / CHECKPOINTS,
                                         callbacks, device)
    trackers.point_tensorboard(trainer, out)
    return trainer


def best_checkpoints(spec: JobSpec, out: Path, state, eval_rows: list[dict]) -> dict:
    """The run's checkpoints with their eval loss and golden-prompt score, and the one ``spec.best_checkpoint``
    picks (chat, export and the adapter zip use it; ``studio.adapter_library.resolve``)."""
    from workers.checkpoints import checkpoint_scores, golden_references, pick_best

    rows = checkpoint_scores(out, state.log_history, state.global_step, golden_references(eval_rows))
    return {"checkpoints": rows, "best_checkpoint": pick_best(rows, spec.best_checkpoint)}


def _summary(trainer, adapter_dir: Path, model) -> dict:
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [(h["eval_loss"], h["step"]) for h in state.log_history if "eval_loss" in h]
    trainable, total = model.get_nb_trainable_parameters()
    runtime = next((h.get("train_runtime") for h in reversed(state.log_history) if "train_runtime" in h), None)
    tokens = next((h.get("num_tokens") for h in reversed(state.log_history) if "num_tokens" in h), None)
    return {
        "final_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals)[0] if evals else None,
        "best_eval_step": min(evals)[1] if evals else None,
        "runtime_seconds": runtime,
        "tokens": tokens,
        "tokens_per_second": (tokens / runtime) if tokens and runtime else None,
        "trainable_params": trainable,
        "total_params": total,
        "adapter_bytes": sum(f.stat().st_size for f in adapter_dir.rglob("*") if f.is_file()),
        "steps": state.global_step,
    }
