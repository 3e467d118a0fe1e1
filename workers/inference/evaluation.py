"""Batch evaluation on a worker: held-out conversations through the base and up to three adapters.

``evaluate_batch`` answers each prompt greedily with every model on one ``ChatEngine`` (one copy of the
base, adapters switched through peft) and scores the replies (studio/evaluation.py's text metrics) and
the teacher-forced loss of the reference reply. ``run_evaluation`` is what the queued task does: the
rows from their source, the result as result.json and a CSV in the task's folder.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from studio.evaluation import (contains_reference, eval_conversations, eval_rows, exact_match, last_user, rouge_l,
                               to_csv)

RESULT_FILE = "result.json"
CSV_FILE = "batch-evaluation.csv"


def evaluate_batch(base_model: str, adapter_dirs: dict[str, str | Path], rows: list[dict],
                   max_new_tokens: int = 64, limit: int | None = 20, engine=None, settings=None,
                   progress=None) -> dict[str, Any]:
    """Answer each held-out prompt with the base and every adapter; score replies and reference likelihood.

    ``adapter_dirs``: display name -> adapter folder ("base" is reserved). Returns
    {"models", "rows": [{"prompt", "reference", "replies", "scores"}], "metrics": {model: {...}}, "seconds"}.
    ``progress(done, total)`` is called before the first reply and after each one. ``engine``: a fresh
    ChatEngine unless given (dropped at the end, with its base).
    """
    from studio.chat import ChatEngine, GenerationSettings

    if "base" in adapter_dirs:
        raise ValueError("'base' names the base model; give the adapters other names")
    conversations = eval_conversations(rows)[: limit or None]
    if not conversations:
        raise ValueError("no row to evaluate: batch evaluation needs conversations that end with an assistant reply")
    engine = engine or ChatEngine()
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
    if progress is not None:
        progress(done, total)
    for conv in conversations:
        row = {"prompt": last_user(conv["prompt"]), "reference": conv["reference"], "replies": {}, "scores": {}}
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


def run_evaluation(params: dict, folder: Path, progress) -> dict:
    """The task: rows from ``params["source"]``, every adapter ref resolved, the result written into
    ``folder`` (result.json, batch-evaluation.csv, each through a rename). Returns the job's summary:
    models, metrics, rows, seconds and the two files' paths."""
    from studio.adapters import resolve

    adapters = {label: str(resolve(ref).folder) for label, ref in params.get("adapters", {}).items()}
    rows = eval_rows(params["source"])
    result = evaluate_batch(params["base_model"], adapters, rows, max_new_tokens=int(params.get("max_new_tokens", 64)),
                            limit=int(params.get("limit") or 0) or None,
                            progress=lambda done, total: progress(f"{done} of {total} replies", total=total, done=done))
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ((RESULT_FILE, json.dumps(result, indent=2, ensure_ascii=False)), (CSV_FILE, to_csv(result))):
        tmp = folder / f".{name}.partial"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)
    return {"models": result["models"], "metrics": result["metrics"], "rows": len(result["rows"]),
            "seconds": result["seconds"], "result": str(folder / RESULT_FILE), "csv": str(folder / CSV_FILE)}
