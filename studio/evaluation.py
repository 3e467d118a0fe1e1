"""Watching behaviour, not only loss: golden prompts during training, batch evaluation after it.

Golden prompts (``GoldenPromptsCallback``) are answered greedily by the training model itself at every
checkpoint and at the end, and once by the base at the start; the replies go to JSON files in the job's
folder (``golden/base.json``, ``golden/step-N.json``) that ``read_golden`` reads back.

Batch evaluation (``evaluate_batch``) runs held-out conversations through the base and up to three
adapters on one ``ChatEngine``: replies, teacher-forced eval loss and perplexity on the reference
replies, and text metrics (exact match, contains-reference, ROUGE-L F1). ``to_csv`` writes it out.

No torch at import time; ``GoldenPromptsCallback`` (a transformers TrainerCallback) is built on first
access, so the UI can import this module for ``read_golden`` without the training stack.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("studio.evaluation")

GOLDEN_DIR = "golden"
GOLDEN_FROM_EVAL = 3          # prompts taken from the eval split when the spec names none
GOLDEN_MAX_NEW_TOKENS = 48


# ---- golden prompts -------------------------------------------------------------------------------

def _prompt_of(row: dict) -> str | None:
    """The user turn a held-out row answers: the last user message before its last assistant turn."""
    messages = row.get("messages") or row.get("prompt") or []
    if not isinstance(messages, list):
        return messages.strip() if isinstance(messages, str) and messages.strip() else None
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    users = [m.get("content") for m in messages[:last_assistant] if m.get("role") == "user"]
    text = users[-1] if users else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def golden_prompts_for(spec, eval_rows: list[dict]) -> list[str]:
    """The spec's golden prompts, else up to three user prompts of the held-out rows (single-turn first)."""
    chosen = [p.strip() for p in (getattr(spec, "golden_prompts", None) or []) if isinstance(p, str) and p.strip()]
    if chosen:
        return chosen
    def turns(row: dict) -> int:
        return sum(m.get("role") == "user" for m in row.get("messages") or [])

    out: list[str] = []
    for row in sorted(eval_rows, key=lambda r: turns(r) != 1):  # stable: single-turn rows first
        text = _prompt_of(row)
        if text and text not in out:
            out.append(text)
        if len(out) == GOLDEN_FROM_EVAL:
            break
    return out


def answer_golden(model, tokenizer, prompts: list[str], max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
                  disable_adapter: bool = False) -> list[str]:
    """Greedy replies of ``model`` (the training model is fine) to single-turn prompts.

    Runs in eval mode under ``torch.inference_mode`` and restores every module's train/eval flag after,
    so training resumes exactly as it was. ``disable_adapter``: answer as the base (peft models only).
    """
    import contextlib

    import torch

    from .render import _render

    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = model.disable_adapter() if disable_adapter and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    replies = []
    model.eval()
    try:
        with ctx, torch.inference_mode():
            for prompt in prompts:
                text = _render(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad, use_cache=True)
                replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    finally:
        for module, training in modes:
            module.training = training
    return replies


def golden_dir(job) -> Path:
    from . import db
    from .settings import get_settings

    if isinstance(job, str):
        found = db.get_job(job)
        if found is None:
            raise KeyError(f"there is no job {job}")
        job = found
    return get_settings().resolve(job.output_dir) / GOLDEN_DIR


def write_golden(folder: Path, step: int | str, prompts: list[str], replies: list[str], **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = "base.json" if step == "base" else f"step-{int(step)}.json"
    data = {"step": step, "replies": [{"prompt": p, "reply": r} for p, r in zip(prompts, replies)],
            "time": time.time(), **extra}
    tmp = folder / f".{name}.partial"
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(tmp, folder / name)
    return folder / name


def read_golden(job) -> list[dict]:
    """Stored golden answers of a job (a Job or its id): the base first, then by step."""
    folder = golden_dir(job)
    entries = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("replies"), list):
            entries.append(data)
    return sorted(entries, key=lambda d: (d.get("step") != "base", d.get("step") if d.get("step") != "base" else 0))


def golden_table(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for a table: one row per prompt, one column for the base and each step."""
    columns = ["base" if e["step"] == "base" else f"step {e['step']}" for e in entries]
    prompts: list[str] = []
    for e in entries:
        prompts += [r["prompt"] for r in e["replies"] if r["prompt"] not in prompts]
    rows = []
    for prompt in prompts:
        by_column = [next((r["reply"] for r in e["replies"] if r["prompt"] == prompt), "") for e in entries]
        rows.append([prompt, *by_column])
    return ["prompt", *columns], rows


GOLDEN_ROUNDS = 3  # checkpoints answered before the end, under the automatic cadence
GOLDEN_SHORT_RUN = 100  # steps; shorter runs answer at the start (base) and at the end only


def golden_save_steps(total_steps: int, save_steps: int, rounds: int = GOLDEN_ROUNDS) -> set[int]:
    """The checkpoint steps answered under the automatic cadence, besides the base at the start and the end.

    Answering costs a greedy generation per prompt, several training steps' worth on a CPU, so a run under
    GOLDEN_SHORT_RUN steps answers none in between, and a longer one at most ``rounds`` checkpoints spread over it.
    """
    saves = list(range(save_steps, total_steps, save_steps)) if save_steps > 0 else []
    if total_steps < GOLDEN_SHORT_RUN or not saves:
        return set()
    if len(saves) <= rounds:
        return set(saves)
    return {saves[(i + 1) * len(saves) // rounds - 1] for i in range(rounds)}


class _GoldenPromptsCallbackMixin:
    """Answers golden prompts at train begin (base, once), at checkpoints and at the end (rank 0 only).

    ``automatic``: only at the checkpoints ``golden_save_steps`` picks; otherwise at every one. A failure is
    logged and never stops training. ``skip`` (e.g. the worker's shutdown flag) makes a stopping worker save
    without spending time on answers.
    """

    def __init__(self, job_id: str, prompts: list[str], tokenizer, max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
                 output_dir: str | Path | None = None, skip=None, automatic: bool = False):
        self.job_id = job_id
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.skip = skip or (lambda: False)
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.answered_step: int | None = None
        self.automatic = automatic

    def _folder(self) -> Path:
        return self.output_dir if self.output_dir is not None else golden_dir(self.job_id)

    def _answer(self, model, step: int | str, **extra) -> None:
        if not self.is_main or not self.prompts or model is None or self.skip():
            return
        started = time.perf_counter()
        try:
            replies = answer_golden(model, self.tokenizer, self.prompts, self.max_new_tokens,
                                    disable_adapter=step == "base")
            seconds = time.perf_counter() - started
            write_golden(self._folder(), step, self.prompts, replies, seconds=round(seconds, 3), **extra)
            log.info("timing golden-prompts %.3f s at step %s", seconds, step)
        except Exception:  # noqa: BLE001 - golden answers are a view on training, never a reason to stop it
            log.warning("job %s: answering the golden prompts at step %s failed", self.job_id, step, exc_info=True)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.is_main and self.prompts and not (self._folder() / "base.json").exists():
            self._answer(model, "base")

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.automatic and state.global_step not in golden_save_steps(state.max_steps, args.save_steps):
            return
        self._answer(model, state.global_step)
        self.answered_step = state.global_step

    def on_train_end(self, args, state, control, model=None, **kwargs):
        best_loaded = bool(getattr(args, "load_best_model_at_end", False))
        path = self._folder() / f"step-{state.global_step}.json"
        if self.answered_step == state.global_step and not best_loaded and path.exists():
            try:  # the last save already answered with these very weights: mark it final
                data = json.loads(path.read_text())
                write_golden(self._folder(), state.global_step, self.prompts, [r["reply"] for r in data["replies"]],
                             **{k: v for k, v in data.items() if k not in ("step", "replies", "time")}, final=True)
                return
            except (OSError, ValueError, KeyError):
                pass
        self._answer(model, state.global_step, final=True, best_model_loaded=best_loaded)


def __getattr__(name: str):
    """``GoldenPromptsCallback``: the mixin on transformers' TrainerCallback, created on first use."""
    if name == "GoldenPromptsCallback":
        from transformers import TrainerCallback

        cls = type("GoldenPromptsCallback", (_GoldenPromptsCallbackMixin, TrainerCallback),
                   {"__module__": __name__, "__doc__": _GoldenPromptsCallbackMixin.__doc__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- text metrics -------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, collapsed whitespace, no surrounding punctuation: what exact match compares."""
    return " ".join((text or "").lower().split()).strip(" .,!?;:\"'")


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme, O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens: LCS-based precision and recall, their harmonic mean."""
    cand, ref = words(candidate), words(reference)
    if not cand or not ref:
        return 1.0 if not cand and not ref else 0.0
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(candidate: str, reference: str) -> bool:
    return normalise(candidate) == normalise(reference)


def contains_reference(candidate: str, reference: str) -> bool:
    ref = normalise(reference)
    return bool(ref) and ref in normalise(candidate)


# ---- batch evaluation -----------------------------------------------------------------------------

def eval_conversations(rows: list[dict]) -> list[dict]:
    """Normalised rows -> {"prompt": messages before the last assistant turn, "reference", "messages"}.

    Chat rows ending in an assistant turn are used; preference rows use prompt + chosen. Others are skipped.
    """
    out = []
    for row in rows:
        if "messages" in row:
            messages = row["messages"]
        elif "prompt" in row and "chosen" in row:
            chosen = row["chosen"]
            chosen = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
            messages = list(row["prompt"]) + list(chosen)
        else:
            continue
        if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
            continue
        out.append({"prompt": messages[:-1], "reference": messages[-1]["content"], "messages": messages})
    return out


def evaluate_batch(base_model: str, adapter_dirs: dict[str, str | Path], rows: list[dict],
                   max_new_tokens: int = 64, limit: int | None = 20, engine=None, settings=None,
                   progress=None) -> dict[str, Any]:
    """Answer each held-out prompt with the base and every adapter; score replies and reference likelihood.

    ``adapter_dirs``: display name -> adapter folder ("base" is reserved). Returns
    {"models", "rows": [{"prompt", "reference", "replies", "scores"}], "metrics": {model: {...}}, "seconds"}.
    ``progress(done, total)`` is called after each reply.
    """
    from .chat import GenerationSettings, get_engine

    if "base" in adapter_dirs:
        raise ValueError("'base' names the base model; give the adapters other names")
    conversations = eval_conversations(rows)[: limit or None]
    if not conversations:
        raise ValueError("no row to evaluate: batch evaluation needs conversations that end with an assistant reply")
    engine = engine or get_engine()
    settings = settings or GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
    started = time.perf_counter()
    engine.ensure_base(base_model)
    keys: dict[str, str | None] = {"base": None}
    for name, folder in adapter_dirs.items():
        key = "eval_" + hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:12]
        engine.ensure_adapter(key, folder)
        keys[name] = key
    models = list(keys)
    totals = {m: {"nll": 0.0, "tokens": 0, "exact": 0, "contains": 0, "rouge": 0.0} for m in models}
    out_rows = []
    done, total = 0, len(conversations) * len(models)
    for conv in conversations:
        row = {"prompt": _last_user(conv["prompt"]), "reference": conv["reference"], "replies": {}, "scores": {}}
        for model in models:
            reply = engine.reply(conv["prompt"], keys[model], settings).strip()
            nll, tokens = engine.nll(conv["messages"], keys[model])
            score = {"exact_match": exact_match(reply, conv["reference"]),
                     "contains_reference": contains_reference(reply, conv["reference"]),
                     "rouge_l": rouge_l(reply, conv["reference"]),
                     "loss": nll / tokens if tokens else None}
            t = totals[model]
            t["nll"] += nll
            t["tokens"] += tokens
            t["exact"] += score["exact_match"]
            t["contains"] += score["contains_reference"]
            t["rouge"] += score["rouge_l"]
            row["replies"][model], row["scores"][model] = reply, score
            done += 1
            if progress is not None:
                progress(done, total)
        out_rows.append(row)
    n = len(conversations)
    metrics = {}
    for model, t in totals.items():
        loss = t["nll"] / t["tokens"] if t["tokens"] else None
        metrics[model] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)) if loss is not None else None,
                          "exact_match": t["exact"] / n, "contains_reference": t["contains"] / n,
                          "rouge_l": t["rouge"] / n, "rows": n, "tokens": t["tokens"]}
    return {"models": models, "rows": out_rows, "metrics": metrics, "base_model": base_model,
            "adapters": {k: str(v) for k, v in adapter_dirs.items()}, "max_new_tokens": settings.max_new_tokens,
            "seconds": round(time.perf_counter() - started, 3)}


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])


def metrics_table(result: dict) -> tuple[list[str], list[list]]:
    headers = ["model", "eval loss", "perplexity", "exact match", "contains reference", "ROUGE-L", "rows"]
    rows = []
    for model in result["models"]:
        m = result["metrics"][model]
        rows.append([model, _round(m["eval_loss"]), _round(m["perplexity"]), _round(m["exact_match"]),
                     _round(m["contains_reference"]), _round(m["rouge_l"]), m["rows"]])
    return headers, rows


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def to_csv(result: dict) -> str:
    """One line per held-out row: prompt, reference, then each model's reply, ROUGE-L, exact, contains, loss."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["row", "prompt", "reference"]
    for model in result["models"]:
        header += [f"{model} reply", f"{model} rouge_l", f"{model} exact_match", f"{model} contains_reference",
                   f"{model} loss"]
    writer.writerow(header)
    for i, row in enumerate(result["rows"], 1):
        line = [i, row["prompt"], row["reference"]]
        for model in result["models"]:
            s = row["scores"][model]
            line += [row["replies"][model], f"{s['rouge_l']:.4f}", int(s["exact_match"]),
                     int(s["contains_reference"]), "" if s["loss"] is None else f"{s['loss']:.4f}"]
        writer.writerow(line)
    return buf.getvalue()
