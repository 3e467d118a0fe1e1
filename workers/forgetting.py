"""The forgetting check on the training worker, right after a run's final save.

The model is still in memory: it answers the general-skills probe as the base (peft's ``disable_adapter()``;
those answers are cached once per base model, weights and probe version) and as base + adapter. Replies are
greedy, in left-padded batches of similar lengths, each question with its short reply budget
(``studio.probe.runner.max_new_tokens``). The report goes to ``<job>/probe/general.json`` and a short form of it
into the job's summary.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from studio.probe import PROBE_FOLDER, load_probe
from studio.probe.runner import (CACHE_DIR, MAX_NEW_TOKENS, MAX_NEW_TOKENS_BY_CHECK, Generate, base_answers, compare,
                                 flag_line, run_probe, write_json)

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
    from studio.generation import GenerationSettings, stopping_criteria
    from studio.render import _render, default_system_prompt, with_system_prompt

    default = default_system_prompt(tokenizer)
    texts = [_render(tokenizer, with_system_prompt([{"role": "user", "content": p}], *system, default),
                     generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    replies = [""] * len(texts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0).generate_kwargs()
    if wait is not None:
        from transformers import LogitsProcessor, LogitsProcessorList

        class Wait(LogitsProcessor):
            def __call__(self, input_ids, scores):
                wait()
                return scores
        kwargs["logits_processor"] = LogitsProcessorList([Wait()])
    if stop is not None:
        kwargs["stopping_criteria"] = stopping_criteria(stop)
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    ctx = model.disable_adapter() if base else contextlib.nullcontext()
    model.eval()
    try:
        with ctx, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                if stop is not None and stop():
                    raise ProbeStopped
                rows = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, padding_side="left",
                                add_special_tokens=False).to(device)
                out = model.generate(**enc, pad_token_id=pad, use_cache=True, **kwargs)
                if stop is not None and kwargs["stopping_criteria"][0].fired:  # these replies were cut short
                    raise ProbeStopped
                for i, ids in zip(rows, out[:, enc["input_ids"].shape[1]:]):
                    replies[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    finally:
        for module, training in modes:
            module.training = training
    return replies


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


def check_model(spec, model, tokenizer, out: Path, adapter_name: str, cache_dir: Path,
                stop=None) -> tuple[dict, Path]:
    """Run the probe on the in-memory model as base (cached) and as adapter; the report and its file."""
    from studio.chat import base_key

    probe = load_probe("general")
    key = base_key(spec.base_model)
    started = time.perf_counter()
    base_result, cached = base_answers(model_generate(model, tokenizer, base=True, stop=stop), probe, key, cache_dir,
                                       generation_settings(spec, model))
    base_seconds = time.perf_counter() - started
    adapter_result = run_probe(model_generate(model, tokenizer, base=False, stop=stop,
                                              system=(spec.system_prompt_mode, spec.system_prompt)), probe)
    seconds = time.perf_counter() - started
    report = compare(probe, base_result, adapter_result, spec.forgetting_threshold)
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
            report, _ = check_model(spec, model, tokenizer, out, spec.name or job_id, get_settings().home / CACHE_DIR,
                                    stop=watch)
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
