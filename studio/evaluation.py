"""Watching behaviour, not only loss: golden prompts during training, batch evaluation after it.

Golden prompts are answered greedily by the training model itself at every checkpoint and at the end, and once
by the base at the start (workers/golden.py: ``answer_golden`` and ``GoldenPromptsCallback``); the replies go to
JSON files in the job's folder (``golden/base.json``, ``golden/step-N.json``) that ``write_golden`` writes and
``read_golden`` reads back. Here: which prompts (``golden_prompts_for``, ``fit_prompts``), when
(``golden_save_steps``), where (``golden_dir``, ``base_cache_path``) and the table the UI shows.

Batch evaluation runs held-out conversations (``eval_rows`` picks them) through the base and up to three
adapters as a queued task on a worker (workers/inference/evaluation.py): replies, teacher-forced eval
loss and perplexity on the reference replies, and the text metrics here (exact match,
contains-reference, ROUGE-L F1). ``metrics_table`` and ``to_csv`` show the result.

No torch: ``fit_prompts`` only calls the tokenizer it is handed.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from pathlib import Path

GOLDEN_DIR = "golden"
GOLDEN_FROM_EVAL = 3          # prompts taken from the eval split when the spec names none
GOLDEN_MAX_NEW_TOKENS = 32  # a glimpse of the behaviour: each new token is a forward pass of the batch


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


CHARS_PER_TOKEN = 16  # a prompt is cut to max length x this many characters before it is tokenised


def fit_prompts(tokenizer, prompts: list[str], max_length: int | None, max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
                system: tuple[str, str] = ("keep", "")) -> list[str]:
    """``prompts`` cut at the end so each, asked as a single user turn under ``system`` (its chat template and
    system prompt included), leaves room for ``max_new_tokens`` within ``max_length`` tokens: the run's max length
    bounds what answering a prompt holds in memory, however long the prompt. Prompts that fit are returned whole;
    without a ``max_length``, prompts are cut to GOLDEN_PROMPT_CHARS characters."""
    from .limits import GOLDEN_PROMPT_CHARS
    from .render import _render, default_system_prompt, with_system_prompt

    if max_length is None:
        return [p[:GOLDEN_PROMPT_CHARS] for p in prompts]
    default = default_system_prompt(tokenizer)
    budget = max(1, max_length - max_new_tokens)

    def length(content: str) -> int:
        text = _render(tokenizer, with_system_prompt([{"role": "user", "content": content}], *system, default),
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


def eval_rows(source: str) -> list[dict]:
    """The rows a batch evaluation answers: ``dataset:NAME`` (the whole dataset) or ``run:ID`` (the rows the
    run held out: its eval dataset, else the same seeded split training made)."""
    from . import db, library
    from .spec import JobSpec

    kind, _, value = (source or "").partition(":")
    if kind == "dataset":
        return library.load(value).rows
    if kind == "run":
        job = db.get_job(value)
        if job is None:
            raise ValueError("that run no longer exists")
        spec = JobSpec.from_dict(job.spec)
        if spec.eval_dataset:
            return library.load(spec.eval_dataset).rows
        _, held_out = library.split_rows(library.load(spec.dataset).rows, spec.eval_split, spec.seed)
        if not held_out:
            raise ValueError(f"{job.name} held out no rows (eval split 0); choose a dataset instead")
        return held_out
    raise ValueError("choose where the evaluation rows come from")


def last_user(messages: list[dict]) -> str:
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
