"""Inference for the Chat tab: one base model in memory, many adapters attached through peft.

The base reply comes from ``disable_adapter()``; switching adapters is ``set_adapter`` and never
reloads the base. This model object is never the training one. torch/transformers/peft are imported
lazily on first use, so the UI process starts light.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger("studio.chat")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0          # 0 = greedy (deterministic, the fairest comparison)
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 0

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": int(self.max_new_tokens), "repetition_penalty": float(self.repetition_penalty)}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p),
                      top_k=int(self.top_k))
        else:
            kw.update(do_sample=False)
        return kw


class ChatEngine:
    def __init__(self):
        self.lock = threading.Lock()  # plain Lock: a gradio generator may resume on another thread
        self.base_ref: str | None = None
        self.model = None          # PeftModel once an adapter is attached, else the plain base
        self.tokenizer = None
        self.adapters: dict[str, str] = {}   # adapter name -> folder
        self.base_loads = 0
        self.stop_event = threading.Event()

    # -- loading ------------------------------------------------------------------------------------
    def ensure_base(self, ref: str) -> None:
        with self.lock:
            if self.base_ref == ref and self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from .models import resolve_model

            path = resolve_model(ref)
            t0 = time.time()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            if torch.cuda.is_available():
                model = model.to("cuda")
            model.eval()
            self.model, self.base_ref, self.adapters = model, ref, {}
            self.base_loads += 1
            log.info("chat: loaded base %s in %.1f s", ref, time.time() - t0)

    def ensure_adapter(self, name: str, folder: str | Path) -> None:
        """Attach an adapter (safetensors only) under ``name``; a no-op when already attached."""
        with self.lock:
            folder = str(folder)
            if self.adapters.get(name) == folder:
                return
            from peft import PeftModel

            if not (Path(folder) / "adapter_model.safetensors").exists():
                raise FileNotFoundError(f"the adapter in {folder} has no adapter_model.safetensors")
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name, use_safetensors=True)
            else:
                if name in self.adapters:
                    self.model.delete_adapter(name)
                self.model.load_adapter(folder, adapter_name=name, use_safetensors=True)
            self.model.eval()
            self.adapters[name] = folder

    # -- generation -----------------------------------------------------------------------------------
    def stream(self, messages: list[dict], adapter: str | None, settings: GenerationSettings) -> Iterator[str]:
        """Yield the growing reply of the base (adapter=None) or of base+adapter."""
        import contextlib

        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stop_event = self.stop_event

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop_event.is_set()

        with self.lock:
            stop_event.clear()
            tok = self.tokenizer
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            enc = tok(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
            if adapter is None:
                ctx = self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
            else:
                if adapter not in self.adapters:
                    raise KeyError(f"adapter {adapter} is not loaded")
                self.model.set_adapter(adapter)
                ctx = contextlib.nullcontext()
            errors: list[BaseException] = []

            def work():
                try:
                    torch.manual_seed(settings.seed)
                    with ctx, torch.inference_mode():
                        self.model.generate(**enc, streamer=streamer, pad_token_id=tok.pad_token_id,
                                            stopping_criteria=StoppingCriteriaList([_Stop()]),
                                            **settings.generate_kwargs())
                except BaseException as exc:  # surfaced to the caller below
                    errors.append(exc)
                    streamer.end()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            reply = ""
            try:
                for piece in streamer:
                    reply += piece
                    yield reply
            finally:
                stop_event.set()
                thread.join()
            if errors:
                raise errors[0]

    def reply(self, messages: list[dict], adapter: str | None, settings: GenerationSettings | None = None) -> str:
        out = ""
        for out in self.stream(messages, adapter, settings or GenerationSettings()):
            pass
        return out

    def stop(self) -> None:
        self.stop_event.set()


_engine: ChatEngine | None = None


def get_engine() -> ChatEngine:
    global _engine
    if _engine is None:
        _engine = ChatEngine()
    return _engine


def settings_dict(s: GenerationSettings) -> dict:
    return asdict(s)
