"""Many bases, many adapters: one ``ChatEngine`` (chat_engine.py) per base model, least recently used evicted.

Each ChatEngine holds one copy of its base with adapters attached through peft (``set_adapter`` /
``disable_adapter``) and streams through transformers' ``TextIteratorStreamer``. This module adds what
an OpenAI-style request needs on top: several bases under a memory budget (``STUDIO_INFER_MEMORY_GB``),
stop sequences, and token counts with a finish reason.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from studio.generation import GenerationSettings
from studio.models import shown_model

from .chat_engine import ChatEngine, base_key
from .names import Target

log = logging.getLogger("studio.inference")

DEFAULT_BUDGET_SHARE = 0.5   # without STUDIO_INFER_MEMORY_GB: half the device's memory holds bases


def memory_budget_bytes(env: dict[str, str] | None = None) -> int:
    """``STUDIO_INFER_MEMORY_GB``, else half of the GPU's (or, on a CPU, the machine's) memory."""
    from studio.settings import infer_memory_bytes  # one sentence for a value that is not a size

    budget = infer_memory_bytes(env)
    if budget is not None:
        return budget
    from workers.arguments import device_facts

    return int(device_facts()["memory_gb"] * 1e9 * DEFAULT_BUDGET_SHARE)


def held_back(text: str, stops: list[str]) -> tuple[str, bool]:
    """The part of a growing reply that may be sent, and whether a stop sequence ended it: the reply up to
    the first stop sequence, or, while none has appeared, all but a tail that could begin one."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[:min(hits)], True
    tail = max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
               default=0)
    return text[:len(text) - tail], False


class Serving:
    """How many requests this process's server is answering now. A worker's idle-time work (the bundled model's
    replay answers made at its start, workers/consumer.prewarm_replay) waits between its batches while any is,
    so a newcomer's first chat in the worker's first minute has the CPU to itself."""

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            self._count += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._count -= 1

    def busy(self) -> bool:
        return self._count > 0


SERVING = Serving()


@dataclass
class Reply:
    """What a finished generation reports beside its text (OpenAI's ``finish_reason`` and ``usage``)."""
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0



class InferenceEngine:
    def __init__(self, budget_bytes: int | None = None, on_change: Callable[[list[dict]], object] | None = None):
        self.budget_bytes = memory_budget_bytes() if budget_bytes is None else budget_bytes
        self.on_change = on_change          # told the loaded bases whenever they change
        self.bases: OrderedDict[str, ChatEngine] = OrderedDict()   # least recently used first
        self.lock = threading.Lock()

    # -- bases ----------------------------------------------------------------------------------------
    def chat_engine(self, base: str) -> ChatEngine:
        """The ChatEngine of ``base``, loaded on first use; older bases go while the budget is exceeded."""
        key = base_key(base)
        with self.lock:
            engine = self.bases.get(key)
            if engine is not None:
                self.bases.move_to_end(key)
                return engine
            engine = ChatEngine()
            engine.ensure_base(base)
            self.bases[key] = engine
            self._evict(keep=key)
        self._changed()
        return engine

    def _evict(self, keep: str) -> None:
        while len(self.bases) > 1 and sum(map(footprint, self.bases.values())) > self.budget_bytes:
            key = next(k for k in self.bases if k != keep)
            self.bases.pop(key)
            log.info("inference: unloaded %s (over the %.1f GB budget)", shown_model(key), self.budget_bytes / 1e9)
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded_bases(self) -> list[dict]:
        """[{"model", "memory_mb"}], least recently used first."""
        return [{"model": shown_model(k), "memory_mb": round(footprint(e) / 1e6, 1)}
                for k, e in list(self.bases.items())]

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.loaded_bases())
            except Exception:  # the next heartbeat reports them again
                log.warning("could not record the loaded bases", exc_info=True)

    def prepare(self, target: Target) -> tuple[ChatEngine, str | None]:
        """Load the base (and attach the adapter) of ``target``; returns its engine and adapter name."""
        engine = self.chat_engine(target.base)
        if target.adapter is None:
            return engine, None
        engine.ensure_adapter(target.adapter.key, target.adapter.folder)
        return engine, target.adapter.key

    # -- generation -----------------------------------------------------------------------------------
    def admit(self, target: Target, messages: list[dict], settings: GenerationSettings) -> "Admitted":
        """The request made ready to generate: its base loaded, its prompt encoded and measured against the
        model's context, and its reply's budget cut to what the context has left. PromptTooLong otherwise."""
        engine, adapter = self.prepare(target)
        ids, context = measure(engine, adapter, messages)
        budget = min(int(settings.max_new_tokens), context - len(ids))
        return Admitted(engine, adapter, ids, replace(settings, max_new_tokens=budget))

    def generate(self, target: Target, messages: list[dict], settings: GenerationSettings,
                 stops: list[str] | None = None, reply: Reply | None = None,
                 admitted: "Admitted | None" = None) -> Iterator[str]:
        """Yield the reply of ``target`` in pieces; ``reply`` receives the finish reason and token counts.
        Closing the iterator stops generation. ``admitted``: the request already admitted (``admit``)."""
        reply = reply if reply is not None else Reply()
        with SERVING:
            admitted = admitted or self.admit(target, messages, settings)
            settings = admitted.settings
            stops = [s for s in (stops or []) if s]
            sent, full, hit, ended = "", "", False, False
            stream = admitted.engine.stream(messages, admitted.adapter, settings, admitted.ids, reply)
            try:
                for full in stream:
                    safe, hit = held_back(full, stops)
                    if len(safe) > len(sent):
                        yield safe[len(sent):]
                        sent = safe
                    if hit:
                        break
                ended = True
            finally:
                stream.close()   # stops generation when the caller stopped listening or a stop sequence came
                if not ended:
                    log.info("inference: the client left; generation stopped after %d tokens", reply.completion_tokens)
            if not hit and len(full) > len(sent):  # a held-back tail that never became a stop sequence
                yield full[len(sent):]
                sent = full
        reply.text = sent
        reply.finish_reason = "length" if not hit and reply.completion_tokens >= settings.max_new_tokens else "stop"

    def score(self, target: Target, messages: list[dict], add_generation_prompt: bool, continue_final_message: bool,
              top: int | None, settings: GenerationSettings, reply: Reply) -> list[dict | None] | None:
        """vLLM's ``prompt_logprobs`` of the conversation as rendered (``top`` None: not asked for), and one
        generated token in ``reply`` (ChatEngine.score). PromptTooLong when it does not fit the context."""
        with SERVING:
            engine, adapter = self.prepare(target)
            measure(engine, adapter, messages)
            entries, text = engine.score(messages, adapter, add_generation_prompt, continue_final_message, top or 0,
                                         settings)
        reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason = text, len(entries), 1, "length"
        return entries if top is not None else None


def measure(engine: ChatEngine, adapter: str | None, messages: list[dict]) -> tuple[list[int], int]:
    """The prompt's token ids and the model's context; PromptTooLong when the prompt leaves no room for a reply."""
    with engine.lock:
        ids, context = engine.encode(messages, adapter), engine.context_length()
    if len(ids) >= context:
        raise PromptTooLong(len(ids), context)
    return ids, context


class PromptTooLong(ValueError):
    """The messages hold more tokens than the model's context."""

    def __init__(self, tokens: int, context: int):
        super().__init__(f"This model's maximum context length is {context:,} tokens, and the messages hold "
                         f"{tokens:,} tokens: shorten the messages.")
        self.tokens, self.context = tokens, context


@dataclass
class Admitted:
    """A request ready to generate (InferenceEngine.admit)."""
    engine: ChatEngine
    adapter: str | None
    ids: list[int]
    settings: GenerationSettings


def footprint(engine: ChatEngine) -> int:
    """Bytes of the weights (and buffers) of an engine's base, with its attached adapters."""
    models = [engine.model, *engine.solo.values()]
    return sum(m.get_memory_footprint() for m in models if m is not None)
