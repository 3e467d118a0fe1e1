"""Golden prompts: a few prompts the training model answers as it trains, to watch behaviour, not only loss.

They are answered greedily by the training model itself at every checkpoint and at the end, and once by the
base at the start (workers/golden.py: ``answer_golden`` and ``GoldenPromptsCallback``); the replies go to
JSON files in the job's folder (``golden/base.json``, ``golden/step-N.json``) that ``write_golden`` writes and
``read_golden`` reads back. Here: which prompts (``golden_prompts_for``, ``fit_prompts``), when
(``golden_save_steps``), where (``golden_dir``, ``base_cache_path``) and the table the UI shows.

No torch: ``fit_prompts`` only calls the tokenizer it is handed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .atomic import write_json

GOLDEN_DIR = "golden"
GOLDEN_FROM_EVAL = 3          # prompts taken from the eval split when the spec names none
GOLDEN_MAX_NEW_TOKENS = 32  # a glimpse of the behaviour: each new token is a forward pass of the batch


# ---- golden prompts -------------------------------------------------------------------------------

def prompt_of(row: dict) -> str | None:
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
        text = prompt_of(row)
        if text and text not in out:
            out.append(text)
        if len(out) == GOLDEN_FROM_EVAL:
            break
    return out


CHARS_PER_TOKEN = 16  # a prompt is cut to max length x this many characters before it is tokenised


def fit_prompts(tokenizer, prompts: list[str], max_length: int | None, max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
                system: tuple[str, str] = ("keep", "")) -> list[str]:
    """``prompts`` cut at the end so each, asked as a single user turn under ``system`` (its chat template and
    system prompt included), leaves room for ``max_new_tokens`` within ``max_length`` tokens: the run's max length
    bounds what answering a prompt holds in memory, however long the prompt. Prompts that fit are returned whole;
    without a ``max_length``, prompts are cut to GOLDEN_PROMPT_CHARS characters."""
    from .limits import GOLDEN_PROMPT_CHARS
    from .render import render_text, default_system_prompt, with_system_prompt

    if max_length is None:
        return [p[:GOLDEN_PROMPT_CHARS] for p in prompts]
    default = default_system_prompt(tokenizer)
    budget = max(1, max_length - max_new_tokens)

    def length(content: str) -> int:
        text = render_text(tokenizer, with_system_prompt([{"role": "user", "content": content}], *system, default),
                           generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = []
    for prompt in prompts:
        prompt = prompt[:max_length * CHARS_PER_TOKEN]
        over = length(prompt) - budget
        if over > 0:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            keep = len(ids) - over
            while keep > 1:  # a cut can merge tokens at its edge differently: measure again
                prompt = tokenizer.decode(ids[:keep])
                if (over := length(prompt) - budget) <= 0:
                    break
                keep -= over
            if keep <= 1:
                prompt = tokenizer.decode(ids[:1])
        out.append(prompt)
    return out


GOLDEN_CACHE = "cache/golden"  # under STUDIO_HOME: the base's answers, computed once per base and prompts


def base_cache_path(base: str, prompts: list[str], max_new_tokens: int) -> Path:
    """Where the base's golden answers for ``prompts`` are kept: the same base and prompts answer the same
    (greedy), so every later run of that base reuses them."""
    import hashlib

    from .settings import get_settings

    key = hashlib.sha256(json.dumps([base, prompts, max_new_tokens]).encode()).hexdigest()[:20]
    return get_settings().resolve(GOLDEN_CACHE) / f"{key}.json"


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
    return write_json(folder / name, data)


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
GOLDEN_BUDGET = 0.05  # rounds between the start and the end: at most about this share of the run's training time


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
