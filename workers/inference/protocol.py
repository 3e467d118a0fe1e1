"""The OpenAI chat-completions request and response shapes this server speaks (the subset vLLM's
``entrypoints/openai/protocol.py`` also speaks, plus its ``top_k``, ``repetition_penalty`` and ``min_tokens``).
OpenAI fields it cannot honour are refused by name (``UNSUPPORTED``), never silently ignored.

vLLM's scoring extension is here too, named and shaped as vLLM has it, so one client call works against
both: ``prompt_logprobs`` (the log-probability of every prompt token, answered beside ``choices``),
``add_generation_prompt`` and ``continue_final_message`` (how the conversation is rendered). A request
ending with a reference assistant reply, ``add_generation_prompt: false``, ``max_tokens: 1`` and
``prompt_logprobs: 0`` scores that reply.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from studio import limits
from studio.generation import GenerationSettings

DEFAULT_MAX_TOKENS = 512
MAX_PROMPT_LOGPROBS = 20      # the most alternatives per prompt token (OpenAI's top_logprobs limit)


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None

    def plain(self) -> dict:
        """The message as studio.render takes it: a role and text (the developer role is the system's)."""
        content = self.content or ""
        if isinstance(content, list):
            if any(part.get("type") != "text" for part in content):
                raise APIError(400, "only text content is supported", param="messages")
            content = "".join(str(part.get("text", "")) for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields this server does not act on (user, metadata…)
    model: str = Field(max_length=1024)
    messages: list[ChatMessage] = Field(min_length=1, max_length=limits.MESSAGES)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=limits.SEED_RANGE[0], le=limits.SEED_RANGE[1])
    stop: str | list[str] | None = Field(None, max_length=limits.STOP_SEQUENCES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    top_k: int | None = Field(None, ge=-1)               # -1 or 0: off
    repetition_penalty: float | None = Field(None, gt=0)  # 1: off
    min_tokens: int = Field(0, ge=0)                      # vLLM's: no end of turn before this many tokens
    # vLLM's extension: render the conversation as given, and score its tokens
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_PROMPT_LOGPROBS)
    # OpenAI's fields this server cannot honour: asked for, they are refused by name, never silently ignored
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    modalities: list | None = None
    audio: dict | None = None
    prediction: dict | None = None
    web_search_options: dict | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> "ChatCompletionRequest":
        asked = {
            "tools": bool(self.tools), "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions), "function_call": self.function_call not in (None, "none"),
            "response_format": (self.response_format or {}).get("type", "text") != "text",
            "logprobs": bool(self.logprobs), "top_logprobs": bool(self.top_logprobs),
            "logit_bias": bool(self.logit_bias), "presence_penalty": bool(self.presence_penalty),
            "frequency_penalty": bool(self.frequency_penalty), "modalities": self.modalities not in (None, ["text"]),
            "audio": self.audio is not None, "prediction": self.prediction is not None,
            "web_search_options": self.web_search_options is not None}
        for param, used in asked.items():
            if used:
                raise APIError(400, f"This server does not support `{param}`: {UNSUPPORTED[param]}", param=param,
                               code="unsupported_parameter")
        return self

    @model_validator(mode="after")
    def _text(self) -> "ChatCompletionRequest":
        """Every string is text that can be encoded (a lone UTF-16 surrogate such as "\\ud800" is not); stop
        sequences have a bounded length."""
        strings = [("model", self.model)] + [("stop", s) for s in self.stops()]
        for i, m in enumerate(self.messages):
            parts = m.content if isinstance(m.content, list) else [{"text": m.content or ""}]
            strings += [(f"messages[{i}].content", str(p.get("text", "")) if isinstance(p, dict) else "") for p in parts]
        for param, text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise APIError(400, f"{param} holds a lone surrogate ({text[exc.start]!a}) at character {exc.start}: "
                                    "send valid Unicode.", param=param.split("[")[0]) from None
        for stop in self.stops():
            if len(stop) > limits.STOP_SEQUENCE_CHARS:
                raise APIError(400, f"A stop sequence is {len(stop)} characters long, over the "
                                    f"{limits.STOP_SEQUENCE_CHARS} allowed.", param="stop")
        return self

    @model_validator(mode="after")
    def _scoring(self) -> "ChatCompletionRequest":
        """vLLM's rules for the extension (vLLM itself may answer the request: vllm_engine.py forwards it)."""
        if self.add_generation_prompt and self.continue_final_message:
            raise APIError(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to true.",
                           param="continue_final_message")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise APIError(400, "`continue_final_message` needs the conversation to end with an assistant message.",
                           param="continue_final_message")
        if self.prompt_logprobs is not None and self.stream:
            raise APIError(400, "`prompt_logprobs` are not available when `stream` is true.", param="prompt_logprobs")
        return self

    def scores(self) -> bool:
        """Whether the transformers engine answers the request by scoring (ChatEngine.score: one forward pass,
        one generated token) rather than by streaming generation; raises a 400 when it asks for more tokens."""
        if self.prompt_logprobs is None and self.add_generation_prompt and not self.continue_final_message:
            return False
        if self.stream or (self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS) != 1:
            raise APIError(400, "This server answers `prompt_logprobs`, `add_generation_prompt: false` and "
                                "`continue_final_message` with one generated token, not streamed: set `max_tokens` "
                                "to 1.", param="max_tokens")
        return True

    def settings(self) -> GenerationSettings:
        """OpenAI's defaults where a field is absent: temperature 1, top_p 1, no top-k, no penalty."""
        seed = self.seed if self.seed is not None else uuid.uuid4().int % 2**31
        return GenerationSettings(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=max(self.top_k or 0, 0),
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty, seed=seed,
            min_new_tokens=self.min_tokens)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


UNSUPPORTED = {
    "tools": "it answers in text and never calls tools.",
    "tool_choice": "it answers in text and never calls tools.",
    "functions": "it answers in text and never calls functions.",
    "function_call": "it answers in text and never calls functions.",
    "response_format": "it answers in plain text only (no JSON mode or schema).",
    "logprobs": "it returns no log-probabilities of generated tokens (vLLM's `prompt_logprobs` scores a prompt).",
    "top_logprobs": "it returns no log-probabilities of generated tokens (vLLM's `prompt_logprobs` scores a prompt).",
    "logit_bias": "leave it out.",
    "presence_penalty": "use `repetition_penalty` (vLLM's), or leave it out.",
    "frequency_penalty": "use `repetition_penalty` (vLLM's), or leave it out.",
    "modalities": "it answers in text only.",
    "audio": "it answers in text only.",
    "prediction": "leave it out.",
    "web_search_options": "it has no web search.",
}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, prompt_logprobs: list[dict | None] | None = None) -> dict:
    """A chat.completion; ``prompt_logprobs`` (vLLM's field, beside ``choices``) only when it was asked for."""
    out = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": finish_reason, "logprobs": None}],
           "usage": usage(prompt_tokens, completion_tokens)}
    if prompt_logprobs is not None:
        out["prompt_logprobs"] = prompt_logprobs
    return out


def chunk(cid: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
