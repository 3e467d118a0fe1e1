"""The forgetting check on the training worker, right after a run's final save.

The model is still in memory: it answers the general-skills probe as the base (peft's ``disable_adapter()``;
those answers are cached once per base model, weights and probe version) and as base + adapter. Replies are
greedy, in left-padded batches of similar lengths (workers/inference/replies.py), each question with its short
reply budget (``studio.probe.runner.max_new_tokens``). The report goes to ``<job>/probe/general.json`` and a short
form of it into the job's summary.

``probe_adapter`` runs the same probe on any adapter later (`studio evaluate --probe`), through the inference
engine (workers/inference/chat_engine.py) instead of the training model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NoReturn

from studio.adapter_library import result_folder
from studio.atomic import write_json
from studio.generation import GenerationSettings
from studio.probe import PROBE_FOLDER, load_probe
from studio.probe.runner import (CACHE_DIR, DROP_THRESHOLD, MAX_NEW_TOKENS, MAX_NEW_TOKENS_BY_CHECK, Generate,
                                 base_answers, flag_line, forgetting_report, probe_base_and_adapter, run_probe)

from .inference.chat_engine import base_key
from .inference.replies import batch_replies, single_turn

log = logging.getLogger("studio.forgetting")

PROBE_BATCH = 32          # prompts per generate call: the probe's prompts are short, so padding costs little
SUMMARY_KEYS = ("summary", "kept", "drop_points", "flagged", "threshold", "base_correct", "adapter_correct", "total",
                "base_cached", "seconds")


class ProbeStopped(Exception):
    """The worker is shutting down or the job was cancelled: generation stops between batches or between tokens
    (nothing is cached or recorded as done)."""


def generate_replies(model, tokenizer, prompts: list[str], max_new_tokens: int, base: bool = False,
                     batch_size: int = PROBE_BATCH, stop=None, system: tuple[str, str] = ("keep", ""),
                     wait=None) -> list[str]:
    """Greedy single-turn replies of ``model`` (as its base when ``base``), in the order of ``prompts``, under the
    system-prompt choice ``system`` (mode, text): an adapter is asked as it was trained, and as the Chat tab asks
    it; the base with its template's own default. ``wait``, when given, is called before every generated token
    (it may block: a worker's idle-time answers hold still while a chat is answered) and changes no reply.
    ``stop``, when given, is asked before every batch and after every generated token; once it says stop,
    ``ProbeStopped`` is raised and no reply is returned.

    Left-padded batches of prompts sorted by length; every module's train/eval flag is restored after, so a
    model that goes on training is left as it was."""
    kwargs = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0).generate_kwargs()
    return batch_replies(model, tokenizer, single_turn(tokenizer, prompts, system), {**kwargs, "use_cache": True},
                         batch_size, base=base, stop=stop, halt=_stopped, wait=wait)


def _stopped() -> NoReturn:
    raise ProbeStopped


def model_generate(model, tokenizer, base: bool, batch_size: int = PROBE_BATCH, stop=None,
                   system: tuple[str, str] = ("keep", "")) -> Generate:
    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        return generate_replies(model, tokenizer, prompts, max_new_tokens, base, batch_size, stop, system)

    return generate


def generation_settings(spec, model, batch_size: int = PROBE_BATCH) -> dict:
    """What the cached base answers depend on besides the model and the probe: the base's weights as loaded for
    training (4-bit answers differ from 16-bit ones), the batch and the reply budgets."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    qc = getattr(base.config, "quantization_config", None)   # as loaded: a CPU may load a 4-bit spec unquantised
    qc = (qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)) if qc is not None else {}
    quant = ("4bit-" + str(qc.get("bnb_4bit_quant_type")) if qc.get("load_in_4bit")
             else "8bit" if qc.get("load_in_8bit") else "none")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {"backend": "training-model", "greedy": True, "repetition_penalty": 1.0, "batch": batch_size,
            "quantization": quant, "dtype": dtype, "max_new_tokens": MAX_NEW_TOKENS,
            "max_new_tokens_by_check": MAX_NEW_TOKENS_BY_CHECK}


def check_training_model(spec, model, tokenizer, out: Path, adapter_name: str, cache_dir: Path,
                         stop=None) -> tuple[dict, Path]:
    """Run the probe on the in-memory model as base (cached) and as adapter; the report and its file."""
    probe = load_probe("general")
    key = base_key(spec.base_model)
    started = time.perf_counter()
    base_result, cached = base_answers(model_generate(model, tokenizer, base=True, stop=stop), probe, key, cache_dir,
                                       generation_settings(spec, model))
    base_seconds = time.perf_counter() - started
    adapter_result = run_probe(model_generate(model, tokenizer, base=False, stop=stop,
                                              system=(spec.system_prompt_mode, spec.system_prompt)), probe)
    seconds = time.perf_counter() - started
    report = forgetting_report(probe, base_result, adapter_result, spec.forgetting_threshold)
    report.update(base_model=key, base_cached=cached, seconds=round(seconds, 1),
                  base_seconds=None if cached else round(base_seconds, 1),
                  adapter_seconds=round(seconds - base_seconds, 1), time=time.time(), adapter_name=adapter_name,
                  where="training worker, after the final save")
    return report, write_json(out / PROBE_FOLDER / f"{probe.name}.json", report)


def short(report: dict) -> dict:
    """The part of the report the job's summary carries (the Runs card, the Adapters list, the model card)."""
    return {"state": "done", **{k: report.get(k) for k in SUMMARY_KEYS}, "flag": flag_line(report)}


SKIPPED = {"interrupted": "the worker was shutting down", "cancelled": "the check was cancelled"}


def after_run(job_id: str, spec, model, tokenizer, out: Path, summary: dict, skip=lambda: False) -> dict:
    """The forgetting check of a run already marked completed: its outcome goes into the job's summary. A
    failure is logged and recorded in one sentence; it never changes the run's status. ``skip`` (the worker's
    shutdown) or a cancel of the run while it checks (``studio.jobs.cancel``) stops it between batches and between
    generated tokens, and it is recorded as skipped."""
    from studio import db
    from studio.cancel import Watch
    from studio.settings import get_settings

    watch = Watch(job_id, skip)
    if skip():
        outcome = {"state": "skipped", "error": SKIPPED["interrupted"]}
    else:
        try:
            log.info("job %s: checking general skills (the %s probe, base and adapter)", job_id, "general")
            report, _ = check_training_model(spec, model, tokenizer, out, spec.name or job_id,
                                             get_settings().home / CACHE_DIR, stop=watch)
            log.info("job %s: %s in %.1f s%s", job_id, report["summary"], report["seconds"],
                     " (base answers from the cache)" if report["base_cached"] else "")
            if report["flagged"]:
                log.warning("job %s: %s", job_id, flag_line(report))
            outcome = short(report)
        except ProbeStopped:  # between two batches or two tokens: the worker moves on, the run stays completed
            reason = SKIPPED[watch.reason() or "interrupted"]
            log.info("job %s: the forgetting check stopped: %s", job_id, reason)
            outcome = {"state": "skipped", "error": reason}
        except Exception as exc:  # noqa: BLE001 - the run is complete; the check only adds to it
            log.warning("job %s: the forgetting check failed", job_id, exc_info=True)
            outcome = {"state": "failed", "error": f"the forgetting check failed: {type(exc).__name__}: {exc}"[:300]}
    summary = {**summary, "forgetting": outcome}
    if db.get_job(job_id) is not None:  # deleted meanwhile: nothing to record
        db.update_job(job_id, summary_json=__import__("json").dumps(summary))
    return summary


# ---- an adapter on its own, through the inference engine (`studio evaluate --probe`) ----------------------

def engine_generate(engine, adapter: str | None) -> Generate:
    """Greedy single-turn replies of the engine's base (adapter=None) or of base + ``adapter``."""
    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
        return engine.generate_batch([[{"role": "user", "content": p}] for p in prompts], adapter, settings)

    return generate


def engine_settings() -> dict:
    """What the cached base answers depend on besides the model and the probe."""
    from .inference.chat_engine import GENERATE_BATCH

    return {"backend": "chat-engine", "greedy": True, "repetition_penalty": 1.0, "batch": GENERATE_BATCH,
            "max_new_tokens": MAX_NEW_TOKENS, "max_new_tokens_by_check": MAX_NEW_TOKENS_BY_CHECK}


def probe_adapter(ref, probe_name: str = "general", engine=None, threshold: float | None = None) -> tuple[dict, Path]:
    """Run the probe on an adapter (``studio.adapter_library.AdapterRef``) and its base; the report and its file
    (``studio.adapter_library.result_folder``). ``threshold``: the run's forgetting_threshold by default
    (DROP_THRESHOLD for an imported adapter). ``engine``: a ChatEngine to reuse, else a new one."""
    from studio import db
    from studio.settings import get_settings

    from .inference.chat_engine import ChatEngine

    if threshold is None:
        job = db.get_job(ref.job_id) if ref.job_id else None
        threshold = float((job.spec if job else {}).get("forgetting_threshold", DROP_THRESHOLD))

    probe = load_probe(probe_name)
    engine = engine or ChatEngine()
    engine.ensure_base(ref.base_model)
    engine.ensure_adapter(ref.key, ref.folder)
    key = base_key(ref.base_model)
    report = probe_base_and_adapter(probe, key, engine_generate(engine, None), engine_generate(engine, ref.key),
                                    get_settings().home / CACHE_DIR, engine_settings(), threshold)
    report.update(adapter=ref.ref, adapter_name=ref.name)
    return report, write_json(result_folder(ref, PROBE_FOLDER) / f"{probe.name}.json", report)
