"""One base model in memory, many adapters attached through peft: what the inference server generates with.

The base reply comes from ``disable_adapter()``; switching adapters is ``set_adapter`` and never
reloads the base (``base_loads`` counts real loads). This model object is never the training one.
workers/inference/engine.py holds one ``ChatEngine`` per base under a memory budget; the Chat tab and
`studio chat` reach it over HTTP (studio.inference_client). Requests take the model in turn through a
``FairLock``, in time slices, so a short reply never waits for a long one to finish.
torch/transformers/peft are imported on first use.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

from studio.chat import KEEP, trained_system_prompt
from studio.generation import GenerationSettings

from .replies import batch_replies

log = logging.getLogger("studio.inference")


MAX_LOADED_ADAPTERS = 8   # least recently used adapters beyond this are dropped from memory
GENERATE_BATCH = 16       # rows per forward pass in ChatEngine.generate_batch
SLICE_SECONDS = 0.2       # a reply's turn at the model while another request waits for it
MAX_WAIT_SECONDS = 2.0    # a request waiting this long goes next, whatever its size
PREFILL_SLICE = 256       # prompt tokens read in one turn
DEFAULT_CONTEXT = 2048    # a model whose config names no context length
STREAM_TIMEOUT = 900      # seconds without a new token before a reply is given up (a slice never takes this long)


class FairLock:
    """The model's lock, handed to the waiter with the least work left (a reply's remaining tokens), and to any
    waiter that has waited ``MAX_WAIT_SECONDS`` before that, oldest first: short requests pass a long one, and
    the long one still gets its turns. Equal work goes first come, first served. Any thread may release it (a
    generator resumed on another thread), like ``threading.Lock``."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._waiting: list[tuple[int, int, float]] = []   # (work, arrival number, arrival time)
        self._arrivals = 0
        self._held = False

    def acquire(self, work: int = 0) -> None:
        with self._cond:
            self._arrivals += 1
            me = (work, self._arrivals, time.monotonic())
            self._waiting.append(me)
            while self._held or self._next() != me:
                self._cond.wait(MAX_WAIT_SECONDS)   # woken early by a release; a timeout re-checks the ages
            self._waiting.remove(me)
            self._held = True

    def _next(self) -> tuple[int, int, float]:
        oldest = min(self._waiting, key=lambda w: w[1])
        return oldest if time.monotonic() - oldest[2] >= MAX_WAIT_SECONDS else min(self._waiting)

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def should_yield(self, work: int) -> bool:
        """Whether a holder with ``work`` left should let a waiter go first."""
        with self._cond:
            now = time.monotonic()
            return any(w[0] <= work or now - w[2] >= MAX_WAIT_SECONDS for w in self._waiting)

    def __call__(self, work: int):
        """``with lock(work):`` acquires it for a holder with ``work`` left."""
        return _Held(self, work)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class _Held:
    def __init__(self, lock: FairLock, work: int):
        self.lock, self.work = lock, work

    def __enter__(self):
        self.lock.acquire(self.work)
        return self.lock

    def __exit__(self, *exc):
        self.lock.release()


def _remaining(kwargs: dict, budget: int, generated: int) -> dict:
    """generate()'s arguments for the rest of a reply that has ``generated`` of its ``budget`` tokens."""
    rest = {**kwargs, "max_new_tokens": budget - generated}
    floor = rest.pop("min_new_tokens", 0) - generated
    return {**rest, "min_new_tokens": floor} if floor > 0 else rest


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _rng_state(seed: int | None = None):
    """The random generators' state (after seeding them with ``seed``), to carry a request's sampling across
    the slices of other requests."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state) -> None:
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def base_key(ref: str) -> str:
    """One spelling per base model, so aliases of the same model never reload it."""
    from studio.models import is_bundled, local_folder
    from studio.spec import BUNDLED_MODEL

    ref = (ref or "").strip()
    if is_bundled(ref):
        return BUNDLED_MODEL
    p = local_folder(ref)
    return str(p.resolve()) if p is not None and p.exists() else ref


class ChatEngine:
    def __init__(self):
        self.lock = FairLock()     # requests take the model in turn (a generator may resume on another thread)
        self.base_ref: str | None = None
        self.model = None          # PeftModel once an adapter is attached, else the plain base
        self.tokenizer = None
        self.adapters: dict[str, str] = {}   # adapter name -> folder, least recently used first
        self.solo: dict[str, object] = {}    # adapters of a type that cannot share the base: name -> own model
        self.systems: dict[str, tuple[str, str]] = {}  # adapter name -> the system prompt (mode, text) it trained with
        self.default_system: str | None = None  # what the base's chat template writes when a chat has no system turn
        self.base_loads = 0

    # -- loading ------------------------------------------------------------------------------------
    def ensure_base(self, ref: str) -> None:
        ref = base_key(ref)
        with self.lock:
            if self.base_ref == ref and self.model is not None:
                return
            from transformers import AutoTokenizer

            from workers.bundled import model_folder

            path = model_folder(ref)
            t0 = time.time()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model, self.base_ref, self.adapters, self.solo = self._load_base(path), ref, {}, {}
            from studio.render import default_system_prompt

            self.default_system, self.systems = default_system_prompt(self.tokenizer), {}
            log.info("chat: loaded base %s in %.1f s", ref, time.time() - t0)

    def _load_base(self, path):
        import torch
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.base_loads += 1
        return model.eval()

    def ensure_adapter(self, name: str, folder: str | Path, system: tuple[str, str] | None = None) -> None:
        """Attach an adapter (safetensors only) under ``name``; a no-op when already attached.

        LoRA adapters share the one base; an adapter of a type that cannot share it with others (IA3, prompt
        and prefix tuning: peft attaches one type per model) gets its own copy of the base. ``system``: the
        system prompt choice (mode, text) its conversations get, by default the one its run trained with
        (``trained_system_prompt``)."""
        with self.lock:
            folder = str(folder)
            self.systems[name] = system or trained_system_prompt(folder)
            if self.adapters.get(name) == folder:
                self.adapters[name] = self.adapters.pop(name)  # most recently used last
                return
            from peft import PeftModel

            if not (Path(folder) / "adapter_model.safetensors").exists():
                raise FileNotFoundError(f"the adapter in {folder} has no adapter_model.safetensors")
            if name in self.adapters:
                self._drop_adapter(name)
            while len(self.adapters) >= MAX_LOADED_ADAPTERS:
                self._drop_adapter(next(iter(self.adapters)))
            from studio.adapter_types import of_folder
            from workers.bundled import model_folder

            kind = of_folder(folder)
            if kind is not None and not kind.multi_adapter:
                self.solo[name] = PeftModel.from_pretrained(self._load_base(model_folder(self.base_ref)), folder,
                                                            adapter_name=name, use_safetensors=True).eval()
            elif isinstance(self.model, PeftModel):
                self.model.load_adapter(folder, adapter_name=name, use_safetensors=True)
            else:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name, use_safetensors=True)
            self.model.eval()
            self.adapters[name] = folder

    def _drop_adapter(self, name: str) -> None:
        if self.solo.pop(name, None) is None:
            self.model.delete_adapter(name)
        del self.adapters[name]

    def conversation(self, messages: list[dict], adapter: str | None) -> list[dict]:
        """The turns as the model answering them was trained: an adapter whose run left the template's
        default system prompt out (or replaced it) is asked the same way; the base as its template writes."""
        from studio.render import with_system_prompt

        if adapter is None:
            return messages
        mode, text = self.systems.get(adapter, KEEP)
        return with_system_prompt(messages, mode, text, self.default_system)

    def adapter_context(self, adapter: str | None):
        """The context that makes the next forward pass the base (adapter=None) or base + ``adapter``."""
        shared = any(name not in self.solo for name in self.adapters)
        if adapter is None:
            return self.model.disable_adapter() if shared else contextlib.nullcontext()
        if adapter not in self.adapters:
            raise KeyError(f"adapter {adapter} is not loaded")
        if adapter in self.solo:
            return self._using(self.solo[adapter])
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _using(self, model):
        """Generation (under the engine's lock) runs on an adapter's own model, then back on the shared one."""
        shared, self.model = self.model, model
        try:
            yield
        finally:
            self.model = shared

    # -- generation -----------------------------------------------------------------------------------
    def context_length(self) -> int:
        """The most tokens (prompt and reply together) the base model was built for."""
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(self.tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and 0 < limit < 10**7 else DEFAULT_CONTEXT

    def encode(self, messages: list[dict], adapter: str | None) -> list[int]:
        """The prompt's token ids: the conversation rendered with the generation prompt, as ``stream`` sends it."""
        from studio.render import render_text

        text = render_text(self.tokenizer, self.conversation(messages, adapter), generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def stream(self, messages: list[dict], adapter: str | None, settings: GenerationSettings,
               prompt_ids: list[int] | None = None, counted=None) -> Iterator[str]:
        """Yield the growing reply of the base (adapter=None) or of base+adapter; closing the iterator stops it.

        Generation runs in time slices under the engine's FairLock: while a request with less left to generate
        waits for the model (or one that has waited ``MAX_WAIT_SECONDS``), a slice ends after ``SLICE_SECONDS``
        and that request runs, so one long reply never holds up the short ones, nor they it for long. Each slice re-enters its own adapter and carries on from the key/value cache of the last
        (the prompt is read in pieces of ``PREFILL_SLICE`` tokens the same way); the sampling generator's state
        travels with the request, so a seed gives the same reply however the slices fell.
        ``prompt_ids``: the prompt already encoded (``encode``). ``counted``: told the prompt's and the
        reply's token counts as they grow (``prompt_tokens``, ``completion_tokens``: a server's Reply).
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        lock, cancelled = self.lock, threading.Event()
        with lock:
            ids = prompt_ids if prompt_ids is not None else self.encode(messages, adapter)
            tok = self.tokenizer
            device = self.model.device
            sliced = adapter not in self.solo  # peft's prompt-learning models keep their own cache: one slice
        if counted is not None:
            counted.prompt_tokens = len(ids)
        budget = int(settings.max_new_tokens)
        kwargs = {**settings.generate_kwargs(), "pad_token_id": tok.pad_token_id}
        eos = set(_as_list(self.model.generation_config.eos_token_id)) | {tok.eos_token_id} - {None}

        class SliceStreamer(TextIteratorStreamer):
            """Text as it is generated; a slice's end only means the next ``put`` is that slice's prompt."""

            def end(self):
                self.next_tokens_are_prompt = True

            def finish(self):
                super().end()

        streamer = SliceStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT)

        class Slice(StoppingCriteria):
            """Ends a slice when the client went, or when it has had its time and a request that should go
            first waits (a shorter one, or one that waited long)."""
            started, work = 0.0, 0

            def __call__(self, input_ids, scores, **kw):
                return cancelled.is_set() or (time.monotonic() - self.started > SLICE_SECONDS
                                              and lock.should_yield(self.work))

        ends = Slice()
        errors: list[BaseException] = []

        def work():
            try:
                x = torch.tensor([ids], device=device)
                cache, generated = None, 0
                state = _rng_state(settings.seed)
                with torch.inference_mode():
                    if sliced:   # read the prompt in pieces, all but its last token, into the cache
                        for start in range(0, x.size(1) - 1, PREFILL_SLICE):
                            with lock(x.size(1) - start + budget), self.adapter_context(adapter):
                                if cancelled.is_set():
                                    return
                                piece = x[:, start:min(start + PREFILL_SLICE, x.size(1) - 1)]
                                cache = self.model(input_ids=piece, cache=cache, use_cache=True).cache
                    while generated < budget and not cancelled.is_set():
                        with lock(budget - generated), self.adapter_context(adapter):
                            ends.started, ends.work = time.monotonic(), budget - generated
                            _set_rng_state(state)
                            out = self.model.generate(
                                input_ids=x, attention_mask=torch.ones_like(x), cache=cache,
                                streamer=streamer, stopping_criteria=StoppingCriteriaList([ends]),
                                return_dict_in_generate=True,
                                **_remaining(kwargs, budget, generated))
                            state = _rng_state()
                        new = out.sequences.size(1) - x.size(1)
                        generated += new
                        if counted is not None:
                            counted.completion_tokens = generated
                        x, cache = out.sequences, out.cache if sliced else None
                        if not sliced or new == 0 or int(x[0, -1]) in eos:
                            break
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)
            finally:
                streamer.finish()

        thread = threading.Thread(target=work, daemon=True, name="generate")
        thread.start()
        reply = ""
        try:
            for piece in streamer:
                reply += piece
                yield reply
        finally:
            cancelled.set()
            thread.join()
        if errors:
            raise errors[0]

    def reply(self, messages: list[dict], adapter: str | None, settings: GenerationSettings | None = None) -> str:
        out = ""
        for out in self.stream(messages, adapter, settings or GenerationSettings()):
            pass
        return out

    def generate_batch(self, conversations: list[list[dict]], adapter: str | None,
                       settings: GenerationSettings | None = None, batch_size: int = GENERATE_BATCH) -> list[str]:
        """Replies of the base (adapter=None) or of base+adapter to many conversations at once
        (``replies.batch_replies``: left-padded batches of similar lengths); replies come back in the order of
        ``conversations``. Greedy by default; each row stops at its own end of turn.
        """
        from studio.render import render_text

        settings = settings or GenerationSettings(temperature=0.0, repetition_penalty=1.0)
        with self.lock:
            texts = [render_text(self.tokenizer, self.conversation(messages, adapter), generation_prompt=True)
                     for messages in conversations]
            with self.adapter_context(adapter):
                return batch_replies(self.model, self.tokenizer, texts, settings.generate_kwargs(), batch_size,
                                     seed=settings.seed)

    def nll(self, messages: list[dict], adapter: str | None, max_length: int | None = 2048) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood (sum, token count) of the assistant tokens of a conversation,
        the same tokens training puts its loss on (``studio.render.encode_chat``)."""
        import torch

        from studio.render import encode_chat

        with self.lock:
            ids, mask = encode_chat(self.tokenizer, self.conversation(messages, adapter), max_length)
            targets = torch.tensor(mask[1:], dtype=torch.bool)
            if len(ids) < 2 or not targets.any():
                return 0.0, 0
            x = torch.tensor([ids], device=self.model.device)
            with self.adapter_context(adapter), torch.inference_mode():
                # prompt tuning returns logits for its virtual tokens first: keep the positions of the input
                logits = self.model(input_ids=x).logits[0, -x.size(1):-1].float()
            targets = targets.to(logits.device)
            loss = torch.nn.functional.cross_entropy(logits[targets], x[0, 1:][targets], reduction="sum")
            return float(loss), int(targets.sum())

    def score(self, messages: list[dict], adapter: str | None, add_generation_prompt: bool = True,
              continue_final_message: bool = False, top: int = 0,
              settings: GenerationSettings | None = None) -> tuple[list[dict | None], str]:
        """The log-probability of every token of the rendered conversation given the ones before it (vLLM's
        ``prompt_logprobs``: None for the first token, then {token id: {"logprob", "rank", "decoded_token"}}
        holding the token itself and the ``top`` likeliest), and one next token generated with ``settings``.
        The conversation is rendered as ``encode`` and ``stream`` render it (``render_scored``), so a reply's
        tokens here are the ones generation would have read."""
        import torch

        settings = settings or GenerationSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
        with self.lock:
            tok = self.tokenizer
            text = render_scored(tok, self.conversation(messages, adapter), add_generation_prompt,
                                 continue_final_message)
            x = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.model.device)
            with self.adapter_context(adapter), torch.inference_mode():
                # prompt tuning returns logits for its virtual tokens first: keep the positions of the input
                logprobs = self.model(input_ids=x).logits[0, -x.size(1):-1].float().log_softmax(-1)
                torch.manual_seed(settings.seed)
                out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), pad_token_id=tok.pad_token_id,
                                          **{**settings.generate_kwargs(), "max_new_tokens": 1})
            ids = x[0, 1:]
            chosen = logprobs.gather(1, ids[:, None])[:, 0]
            ranks = (logprobs > chosen[:, None]).sum(1) + 1
            best = logprobs.topk(top, dim=-1) if top else None
            entries: list[dict | None] = [None]
            for i, token in enumerate(ids.tolist()):
                entry = {token: (float(chosen[i]), int(ranks[i]))}
                if best is not None:
                    for r, (value, other) in enumerate(zip(best.values[i].tolist(), best.indices[i].tolist())):
                        entry.setdefault(other, (value, r + 1))
                entries.append({str(t): {"logprob": lp, "rank": rank, "decoded_token": tok.decode([t])}
                                for t, (lp, rank) in entry.items()})
            return entries, tok.decode(out[0, x.size(1):], skip_special_tokens=True)


CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for where the last turn's content ends


def render_scored(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                  continue_final_message: bool = False) -> str:
    """The conversation as generation renders it (``studio.render.render_text``: a system turn folded into the first
    user turn where the template has no system role, the thinking switch set from the conversation), with the
    generation prompt after it, or with its last turn left open (``continue_final_message``, cut where its content
    ends as transformers' ``apply_chat_template`` cuts it)."""
    from studio.render import render_text

    if add_generation_prompt and continue_final_message:
        raise ValueError("continue_final_message and add_generation_prompt are not compatible")
    if not continue_final_message:
        return render_text(tokenizer, messages, generation_prompt=add_generation_prompt)
    final = messages[-1]["content"]
    text = render_text(tokenizer, [*messages[:-1], {**messages[-1], "content": final + CONTINUE_TAG}])
    if final.strip() not in text or CONTINUE_TAG.strip() not in text:
        raise ValueError("continue_final_message is set but the final message does not appear in the chat after "
                         "applying the chat template")
    at = text.rindex(CONTINUE_TAG.strip())
    return text[:at] if text[at:at + len(CONTINUE_TAG)] == CONTINUE_TAG else text[:at].rstrip()
