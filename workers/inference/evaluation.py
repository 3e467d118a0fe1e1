"""Batch evaluation on a worker: held-out conversations through the base and up to three adapters.

``evaluate_batch`` asks an inference server (workers/inference/server.py, found through
studio.inference_client) over HTTP: each reply is generated greedily and streamed, and the reference
reply is scored with vLLM's ``prompt_logprobs`` extension (its teacher-forced negative log-likelihood),
so the task holds no model of its own and works against vLLM as well. The replies are scored with
studio/batch_evaluation.py's text metrics. ``run_evaluation`` is what the queued task does: the rows from their
source, the result as result.json and a CSV in the task's folder.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from studio import inference_client
from studio.atomic import write_json, write_text
from studio.batch_evaluation import (contains_reference, eval_conversations, eval_rows, exact_match, last_user,
                                     rouge_l, to_csv)
from studio.generation import GenerationSettings

RESULT_FILE = "result.json"
CSV_FILE = "batch-evaluation.csv"
NO_SERVER = ("no inference server is running: batch evaluation asks one for its replies; start one with "
             "`studio worker` (beside the queue consumer) or `studio infer` (alone)")


def evaluate_batch(base_model: str, adapters: dict[str, str], rows: list[dict], max_new_tokens: int = 64,
                   limit: int | None = 20, url: str | None = None, progress=None) -> dict[str, Any]:
    """Answer each held-out prompt with the base and every adapter; score replies and reference likelihood.

    ``adapters``: display name -> the name the inference server knows it by (a run, ``RUN/checkpoint-N``,
    ``imported/NAME``; "base" is reserved). ``url``: the server's OpenAI base URL, else a live one's.
    Returns {"models", "rows": [{"prompt", "reference", "replies", "scores"}], "metrics": {model: {...}},
    "seconds"}. ``progress(done, total)`` is called before the first reply and after each one.
    """
    if "base" in adapters:
        raise ValueError("'base' names the base model; give the adapters other names")
    conversations = eval_conversations(rows)[: limit or None]
    if not conversations:
        raise ValueError("no row to evaluate: batch evaluation needs conversations that end with an assistant reply")
    if url is None:
        try:
            url = inference_client.pick_server(base_model).url
        except inference_client.InferenceError:
            raise inference_client.InferenceError(NO_SERVER) from None
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
    started = time.perf_counter()
    names = {"base": base_model, **adapters}
    models = list(names)
    totals = {m: {"nll": 0.0, "tokens": 0, "exact": 0, "contains": 0, "rouge": 0.0} for m in models}
    out_rows = []
    done, total = 0, len(conversations) * len(models)
    if progress is not None:
        progress(done, total)
    for conv in conversations:
        row = {"prompt": last_user(conv["prompt"]), "reference": conv["reference"], "replies": {}, "scores": {}}
        for model in models:
            reply, usage = "", {}
            for reply in inference_client.chat_stream(conv["prompt"], names[model], settings, url=url, usage=usage):
                pass
            reply = reply.strip()
            nll, tokens = inference_client.reply_nll(inference_client.score(conv["messages"], names[model], url),
                                                     int(usage.get("prompt_tokens", 0)))
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
            "adapters": dict(adapters), "max_new_tokens": settings.max_new_tokens, "server": url,
            "seconds": round(time.perf_counter() - started, 3)}


def run_evaluation(params: dict, folder: Path, progress) -> dict:
    """The task: rows from ``params["source"]``, the replies and scores from a live inference server, the
    result written into ``folder`` (result.json, batch-evaluation.csv, each through a rename). Returns the
    job's summary: models, metrics, rows, seconds, the server asked and the two files' paths."""
    from studio.adapter_library import resolve

    refs = dict(params.get("adapters", {}))
    folders = {label: str(resolve(ref).folder) for label, ref in refs.items()}  # a ref that is gone fails here
    rows = eval_rows(params["source"])
    result = evaluate_batch(params["base_model"], refs, rows, max_new_tokens=int(params.get("max_new_tokens", 64)),
                            limit=int(params.get("limit") or 0) or None,
                            progress=lambda done, total: progress(f"{done} of {total} replies", total=total, done=done))
    result["adapters"] = folders
    write_json(folder / RESULT_FILE, result)
    write_text(folder / CSV_FILE, to_csv(result))
    return {"models": result["models"], "metrics": result["metrics"], "rows": len(result["rows"]),
            "seconds": result["seconds"], "server": result["server"], "result": str(folder / RESULT_FILE),
            "csv": str(folder / CSV_FILE)}
