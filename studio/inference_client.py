"""Find a running inference server and talk to it: the torch-free side of workers/inference.

Servers register in the ``inference_servers`` table (URL, device, loaded bases). ``chat_stream`` reads
an OpenAI chat-completions stream (server-sent events) with httpx and yields the growing reply (the whole text
so far, not the new piece); ``score`` asks for vLLM's ``prompt_logprobs`` of a conversation and ``reply_nll``
sums its last reply's. The Chat tab (studio.chat.compare), `studio chat` and batch evaluation
(workers/inference/evaluation.py) talk to models only through here.
"""
from __future__ import annotations

import json
from typing import Iterator

import httpx

from . import db
from .generation import GenerationSettings
from .lifecycle import live_rows
from .settings import api_key

TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0)  # a first request may load a base


class InferenceError(RuntimeError):
    """No server to ask, or the server refused or failed the request; the message is one sentence."""


def live_servers(stale_seconds: float | None = None) -> list[db.InferenceServerRecord]:
    """Inference servers running now (on this host a live pid, elsewhere a recent beat), most recently
    seen first. Rows of servers that died without removing theirs are removed on the way."""
    return live_rows(db.list_inference_servers(), db.remove_inference_server, stale_seconds)


def pick_server(base: str | None = None) -> db.InferenceServerRecord:
    """A live server, preferring one that holds ``base`` in memory already."""
    servers = live_servers()
    if not servers:
        raise InferenceError("no inference server is running: start one with `studio infer` (or `studio worker`)")
    holding = [s for s in servers if base and any(b.get("model") == base for b in s.loaded_bases or [])]
    return (holding or servers)[0]


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key()}"}


def request_body(messages: list[dict], model: str, settings: GenerationSettings, stream: bool) -> dict:
    """An OpenAI chat-completions request with the Chat tab's settings (0 temperature = greedy); a stream
    ends with its usage (the prompt's token count)."""
    body = {"model": model, "messages": messages, "stream": stream, "max_tokens": int(settings.max_new_tokens),
            "temperature": float(settings.temperature), "top_p": float(settings.top_p), "top_k": int(settings.top_k),
            "repetition_penalty": float(settings.repetition_penalty), "seed": int(settings.seed)}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def score_body(messages: list[dict], model: str) -> dict:
    """vLLM's scoring request: the conversation rendered as it is (its last turn included, no generation
    prompt after it) and the log-probability of each of its tokens (``prompt_logprobs``)."""
    return {"model": model, "messages": messages, "add_generation_prompt": False, "prompt_logprobs": 0,
            "max_tokens": 1, "temperature": 0.0}


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"the inference server answered {response.status_code}"


def chat_stream(messages: list[dict], model: str, settings: GenerationSettings | None = None,
                url: str | None = None, usage: dict | None = None) -> Iterator[str]:
    """Yield the growing reply of ``model`` (a base, a run, ``RUN/checkpoint-N`` or ``imported/NAME``) from
    the server at ``url`` (an OpenAI base URL ending in /v1), or from a live one. ``usage`` receives the
    stream's token counts (``prompt_tokens``, ``completion_tokens``) once it ends."""
    settings = settings or GenerationSettings()
    url = url or pick_server().url
    body = request_body(messages, model, settings, stream=True)
    reply = ""
    try:
        with httpx.stream("POST", f"{url}/chat/completions", json=body, headers=headers(), timeout=TIMEOUT) as r:
            if r.status_code != 200:
                r.read()
                raise InferenceError(_error_message(r))
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: "):])
                if "error" in event:
                    raise InferenceError(event["error"]["message"])
                if usage is not None and event.get("usage"):
                    usage.update(event["usage"])
                for choice in event.get("choices", []):
                    reply += choice.get("delta", {}).get("content") or ""
                    yield reply
    except httpx.HTTPError as exc:
        raise InferenceError(f"cannot reach the inference server at {url}: {exc}") from None


def score(messages: list[dict], model: str, url: str | None = None) -> list[dict | None]:
    """vLLM's ``prompt_logprobs`` of the conversation ``messages`` as ``model`` reads it: one entry per token,
    None for the first, then {token id: {"logprob", "rank", "decoded_token"}} (score_body)."""
    url = url or pick_server().url
    try:
        r = httpx.post(f"{url}/chat/completions", json=score_body(messages, model), headers=headers(), timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise InferenceError(f"cannot reach the inference server at {url}: {exc}") from None
    if r.status_code != 200:
        raise InferenceError(_error_message(r))
    entries = r.json().get("prompt_logprobs")
    if not isinstance(entries, list):
        raise InferenceError(f"the inference server at {url} does not return prompt_logprobs")
    return entries


def reply_nll(entries: list[dict | None], prompt_tokens: int) -> tuple[float, int]:
    """Negative log-likelihood (sum, token count) of the last reply of a scored conversation: the tokens after
    the first ``prompt_tokens`` (the conversation before it with its generation prompt), up to its end of turn
    (the template's trailing whitespace is no part of the reply)."""
    tokens = [next(iter(e.values())) for e in entries[prompt_tokens:] if e]
    while tokens and not (tokens[-1].get("decoded_token") or "").strip():
        tokens.pop()
    return -sum(float(t["logprob"]) for t in tokens), len(tokens)
