"""Batch evaluation, the torch-free half: which held-out rows are answered (``eval_rows``,
``eval_conversations``), the text metrics (exact match, contains-reference, ROUGE-L F1) and how the result is
shown (``metrics_table``, ``to_csv``).

A queued task on a worker (workers/inference/evaluation.py) runs the rows through the base and up to three
adapters: replies, teacher-forced eval loss and perplexity on the reference replies, and these metrics.
"""
from __future__ import annotations

import csv
import io
import re

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
