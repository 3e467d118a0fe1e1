"""Token ids and assistant-only masks from the model's own chat template, for any template.

The template renders the whole conversation once. For each assistant turn, rendering the conversation
up to it (with the generation prompt) and up to and including it gives the characters that turn adds:
its content and its end-of-turn token. The full text is tokenised once and every token that overlaps
those characters is trained on. Templates whose prefixes do not line up (some rewrite earlier turns)
fall back to finding each reply in the rendered text.

Two template quirks are handled for every rendering (training, preview, chat, evaluation): a template without a
system role (Gemma 2 raises on one; early Phi-3-mini templates drop its text) gets the system text at the start of
the first user turn, and a template with a thinking switch (Qwen3's ``enable_thinking``) renders a conversation
with thinking on when it holds reasoning and off otherwise, as the template writes it for replies without any.

No torch or transformers at import time: callers hand in a tokenizer.
"""
from __future__ import annotations

import json
import os

# used only when a tokenizer has no chat template of its own (base models)
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


TOOLS_SYSTEM_HEADER = "You can call these tools (JSON schemas, one per line):"


class RenderError(ValueError):
    """The chat template refused a conversation (one sentence, with the template's own reason)."""


def _template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    return template if isinstance(template, str) else "\n".join(map(str, dict(template).values()))


def supports(tokenizer, slot: str) -> bool:
    """Whether the chat template reads ``slot``: 'tools', 'tool_calls' or 'reasoning_content'."""
    return slot in _template(tokenizer)


def _call_text(calls: list[dict]) -> str:
    return "\n".join(json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                ensure_ascii=False) for c in calls)


def template_messages(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[dict], list | None]:
    """Normalised turns as this template expects them, and the ``tools`` to hand it (None: not supported).

    Structured tool calls and reasoning go into the template's own slots where it has them; otherwise the
    calls become JSON lines after the reply, the reasoning ``<think>...</think>`` before it, and the tool
    schemas a paragraph of the system turn.
    """
    calls_slot, reasoning_slot = supports(tokenizer, "tool_calls"), supports(tokenizer, "reasoning_content")
    out = []
    for turn in messages:
        content = turn["content"]
        message = {"role": turn["role"]}
        if turn.get("reasoning"):
            if reasoning_slot:
                message["reasoning_content"] = turn["reasoning"]
            else:
                content = f"<think>\n{turn['reasoning']}\n</think>\n\n{content}"
        if turn.get("tool_calls"):
            if calls_slot:
                message["tool_calls"] = turn["tool_calls"]
            else:
                content = f"{content}\n{_call_text(turn['tool_calls'])}" if content.strip() else _call_text(turn["tool_calls"])
        message["content"] = content
        for key in ("tool_call_id", "name"):
            if key in turn:
                message[key] = turn[key]
        out.append(message)
    if not tools:
        return out, None
    if supports(tokenizer, "tools"):
        return out, tools
    schemas = TOOLS_SYSTEM_HEADER + "\n" + "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    if out and out[0]["role"] == "system":
        return [{**out[0], "content": f"{out[0]['content']}\n\n{schemas}"}] + out[1:], None
    return [{"role": "system", "content": schemas}] + out, None


_MARK = "\x00studio-system\x00"
_SYSTEM_ROLE: dict[str, bool] = {}  # chat template -> whether it renders a system turn


def system_role(tokenizer) -> bool:
    """Whether the chat template renders a system turn: False where it refuses one (Gemma 2 raises) or drops its
    text (early Phi-3-mini templates). Found by rendering a marked system turn before one user turn, once per
    template."""
    template = _template(tokenizer)
    if template not in _SYSTEM_ROLE:
        user = [{"role": "user", "content": "hi"}]
        bare = _apply_or_none(tokenizer, user)
        marked = _apply_or_none(tokenizer, [{"role": "system", "content": _MARK}] + user)
        if len(_SYSTEM_ROLE) > 64:
            _SYSTEM_ROLE.clear()
        # a template that refuses a lone user turn as well says nothing about system turns
        _SYSTEM_ROLE[template] = bare is None or (marked is not None and _MARK in marked)
    return _SYSTEM_ROLE[template]


def fold_system(messages: list[dict]) -> list[dict]:
    """The turns for a template without a system role: the system text opens the first user turn, followed by a
    blank line ("SYSTEM\n\nUSER"); before an assistant turn it becomes a user turn of its own. An empty system
    turn is dropped."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0], messages[1:]
    text = system.get("content") or ""
    if not text.strip():
        return rest
    if rest and rest[0]["role"] == "user":
        return [{**rest[0], "content": f"{text}\n\n{rest[0]['content']}"}] + rest[1:]
    return [{"role": "user", "content": text}] + rest


def thinking_switch(tokenizer) -> bool:
    """Whether the chat template takes ``enable_thinking`` (Qwen3, SmolLM3)."""
    return "enable_thinking" in _template(tokenizer)


def thinking_on(messages: list[dict]) -> bool:
    """The thinking switch for a conversation: on when an assistant turn holds reasoning, else off (the
    template then writes what it writes for a reply without thinking, e.g. Qwen3's empty think block)."""
    return any(m["role"] == "assistant" and (m.get("reasoning_content") or m.get("reasoning")
                                             or "<think>" in str(m.get("content") or ""))
               for m in messages)


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt the chat template writes into a conversation that has none (None: it writes none).

    Found by rendering one user turn without a system turn and with a marker system turn: where the template
    injects a default, the first rendering holds it exactly where the second holds the marker."""
    user = {"role": "user", "content": "hi"}
    bare = _render_or_none(tokenizer, [user])
    marked = _render_or_none(tokenizer, [{"role": "system", "content": _MARK}, user])
    if bare is None or marked is None or _MARK not in marked:
        return None
    before, after = marked.split(_MARK, 1)
    if bare.startswith(before) and bare.endswith(after) and len(bare) > len(before) + len(after):
        return bare[len(before):len(bare) - len(after)]
    return None


def with_system_prompt(messages: list[dict], mode: str, text: str = "", default: str | None = None) -> list[dict]:
    """The turns rendered for training under the spec's system-prompt choice. A conversation with its own
    system turn keeps it; otherwise keep: the template's default (if any) stays, replace: ``text`` becomes the
    system turn, omit: an empty system turn stands in for the template's ``default`` so it is not written."""
    if (messages and messages[0]["role"] == "system") or mode == "keep":
        return messages
    if mode == "replace":
        return [{"role": "system", "content": text}] + messages
    if default is not None:
        return [{"role": "system", "content": ""}] + messages
    return messages


def system_prompt_note(tokenizer, rows: list[dict], carries_identity: bool, mode: str | None = None) -> str | None:
    """One sentence on the template's default system prompt where rows without a system turn would get it.

    ``mode``: the run's system_prompt_mode (auto, keep, replace, omit), which the preview renders as training
    does (auto resolved on these rows as the worker resolves it); None: rows not rendered through it."""
    default = default_system_prompt(tokenizer)
    turns = [r.get("messages") or r.get("prompt") or [] for r in rows]
    if default is None or not any(not t or t[0]["role"] != "system" for t in turns):
        return None
    quoted = json.dumps(default.strip())
    if mode is None:
        note = (f"system prompt: the model's chat template adds its default, {quoted}, to every row without a "
                "system turn (Train tab, System prompt: keep it, replace it or omit it)")
        return note + ("; these rows teach their own name or maker, which the default contradicts: we suggest "
                       "omitting it" if carries_identity else "")
    resolved = ("omit" if carries_identity else "keep") if mode == "auto" else mode
    why = {"omit": ": these rows teach their own name or maker", "keep": ": these rows teach no name or maker"}
    choice = f"Train tab, System prompt {mode}" + (f"{why[resolved]}, so {resolved}" if mode == "auto" else "")
    if resolved == "omit":
        note = f"system prompt: the chat template's default, {quoted}, is left out of rows without a system turn"
    elif resolved == "replace":
        note = (f"system prompt: rows without a system turn get the replacement system prompt instead of the chat "
                f"template's default, {quoted}")
    else:
        note = f"system prompt: the chat template adds its default, {quoted}, to every row without a system turn"
    note += f" ({choice}); the preview renders the rows as training does"
    if resolved == "keep" and carries_identity:
        note += ("; these rows teach their own name or maker, which the default contradicts: we suggest "
                 "omitting it (System prompt omit or auto)")
    return note


def template_notes(tokenizer, rows: list[dict]) -> list[str]:
    """How this template renders the tools, tool calls and reasoning these rows hold (one sentence each)."""
    turns = [t for r in rows for k in ("messages", "prompt", "chosen", "rejected", "completion") for t in r.get(k, [])]
    notes = []
    if any(r.get("tools") for r in rows):
        notes.append("tool schemas: passed to the chat template's tools" if supports(tokenizer, "tools") else
                     "tool schemas: this chat template has no place for tools, so they are written into the system turn")
    if any(t.get("tool_calls") for t in turns):
        notes.append("tool calls: rendered by the chat template's tool_calls" if supports(tokenizer, "tool_calls") else
                     "tool calls: this chat template has no place for them, so they are JSON lines in the reply")
    if any(t.get("reasoning") for t in turns):
        notes.append("reasoning: rendered by the chat template's reasoning_content" if supports(
            tokenizer, "reasoning_content") else "reasoning: this chat template has no place for it, so it is "
                                                 "written as <think>...</think> before the reply, and trained on")
    if not system_role(tokenizer):
        notes.append("system prompt: this chat template has no system role, so a system turn (the row's own or the "
                     "Train tab's replacement) is written at the start of the first user turn, followed by a blank "
                     "line, and not trained on, in training and in chat alike")
    if note := thinking_note(tokenizer, turns):
        notes.append(note)
    if any(t.get("train") is False for t in turns):
        notes.append("turns the file marks not to train (loss_weight / weight / train = 0) are not highlighted "
                     "and carry no loss")
    return notes


def thinking_note(tokenizer, turns: list[dict]) -> str | None:
    """One sentence on what a template with a thinking switch does with these turns (None: it has none)."""
    if not thinking_switch(tokenizer):
        return None
    user = [{"role": "user", "content": "hi"}]
    on = _apply_or_none(tokenizer, user, True, thinking=True)
    off = _apply_or_none(tokenizer, user, True, thinking=False)
    writes = (f"the template writes {json.dumps(off[len(on):])} before each reply, as part of the prompt (not "
              "trained on)" if on is not None and off is not None and off.startswith(on) and len(off) > len(on)
              else "the template renders them as it does without thinking")
    note = (f"thinking: this chat template has a thinking switch (enable_thinking); rows without reasoning are "
            f"rendered with it off, so {writes}, and chat asks the model the same way")
    if any(t.get("reasoning") for t in turns):
        note += "; rows with reasoning are rendered with it on, and their reasoning is trained"
    return note


def _apply(tokenizer, messages: list[dict], generation_prompt: bool = False, tools: list | None = None,
           thinking: bool | None = None) -> str:
    """The template's own rendering of ``messages``, as they are."""
    extra = {} if getattr(tokenizer, "chat_template", None) else {"chat_template": FALLBACK_CHAT_TEMPLATE}
    if tools:
        extra["tools"] = tools
    if thinking is not None and thinking_switch(tokenizer):
        extra["enable_thinking"] = thinking
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **extra)
    if not isinstance(text, str):  # some versions wrap a single rendering in a list
        text = text[0]
    return text


def _apply_or_none(tokenizer, messages: list[dict], generation_prompt: bool = False, tools: list | None = None,
                   thinking: bool | None = None) -> str | None:
    try:
        return _apply(tokenizer, messages, generation_prompt, tools, thinking)
    except Exception:
        return None


def render_text(tokenizer, messages: list[dict], generation_prompt: bool = False, tools: list | None = None,
                thinking: bool | None = None) -> str:
    """The conversation as the studio renders it with this template: a system turn folded into the first user
    turn where the template has no system role, and the thinking switch (where the template has one) set by
    ``thinking``, by default on exactly when the conversation holds reasoning."""
    if not system_role(tokenizer):
        messages = fold_system(messages)
    if thinking is None:
        thinking = thinking_on(messages)
    return _apply(tokenizer, messages, generation_prompt, tools, thinking)


def _render_or_none(tokenizer, messages: list[dict], generation_prompt: bool = False,
                    tools: list | None = None, thinking: bool | None = None) -> str | None:
    """A partial rendering, or None where the template refuses it (an empty or unusual prefix)."""
    try:
        return render_text(tokenizer, messages, generation_prompt, tools, thinking)
    except Exception:
        return None


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trained assistant turns (content + end-of-turn):
    every assistant turn, except those the file marks not to train (``train`` false)."""
    flags = [m["role"] == "assistant" and m.get("train", True) for m in messages]
    messages, tools = template_messages(tokenizer, messages, tools)
    flags = [False] * (len(messages) - len(flags)) + flags  # the tool schemas may have become a system turn
    thinking = thinking_on(messages)  # one switch for the conversation and every prefix of it
    try:
        full = render_text(tokenizer, messages, generation_prompt, tools, thinking)
    except Exception as exc:  # jinja raises its own types; the message is what matters
        raise RenderError(f"the model's chat template refused this conversation: {exc}") from None
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if not flags[i]:
            continue
        before = _render_or_none(tokenizer, messages[:i], True, tools, thinking)
        after = _render_or_none(tokenizer, messages[: i + 1], False, tools, thinking)
        after = after or ""
        if (before is not None and cursor <= len(before) <= len(after)
                and full.startswith(before) and full.startswith(after)):
            start, end = len(before), len(after)
        else:
            start, end = _find_reply(full, message["content"], before, after, cursor)
        start, end = _trim(full, start, end)
        if end > start:
            spans.append((start, end))
            cursor = end
    return full, spans


def _find_reply(full: str, content: str, before: str | None, after: str, cursor: int) -> tuple[int, int]:
    """Where a reply sits in ``full`` when prefixes do not line up: the content, then what the template writes after it."""
    needle = content.strip() or content
    at = full.find(needle, cursor) if needle else -1
    if at < 0:  # the template rewrote the content: fall back to where the renderings agree
        start = max(cursor, _common_prefix(before or "", full))
        return start, max(start, _common_prefix(after, full))
    end = at + len(needle)
    tail_at = after.rfind(needle)
    if tail_at >= 0:
        tail = after[tail_at + len(needle):].rstrip()
        if tail and full.startswith(tail, end):
            end += len(tail)
    return at, end


def _inside(a: int, b: int, spans: list[tuple[int, int]]) -> bool:
    """Whether the token at characters [a, b) overlaps a span (an empty token: lies in one)."""
    return any((a < e and b > s) if b > a else (s <= a < e) for s, e in spans)


def _tokenize(tokenizer, text: str, spans: list[tuple[int, int]]):
    """ids, mask and character offsets (None for slow tokenizers) of ``text``; mask 1 inside ``spans``."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        return ids, [int(_inside(a, b, spans)) for a, b in offsets], offsets
    ids, mask, pos = [], [], 0
    for start, end in spans + [(len(text), len(text))]:
        for piece, flag in ((text[pos:start], 0), (text[start:end], 1)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                mask += [flag] * len(piece_ids)
        pos = end
    return ids, mask, None


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None, tools: list[dict] | None = None,
                prompt_only: bool = False) -> tuple[list[int], list[int]]:
    """input_ids and assistant mask (1 = trained-on assistant token), truncated to ``max_length`` (start kept).
    ``prompt_only``: a prompt rendered with the generation prompt, nothing trained."""
    text, spans = render_chat(tokenizer, messages, tools, generation_prompt=prompt_only)
    ids, mask, _ = _tokenize(tokenizer, text, spans)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def encode_text(tokenizer, text: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Plain text: the tokenizer's own special tokens, then eos; every token trained on."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if max_length is not None:
        ids = ids[:max_length]
    return ids, [1] * len(ids)


def encode_segments(tokenizer, segments: list[dict], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Template-free text (axolotl's ``segments``): each segment tokenised as written, with no special tokens
    added, and trained (mask 1) where its ``train`` flag is set; truncated to ``max_length``."""
    ids: list[int] = []
    mask: list[int] = []
    for segment, piece in zip(segments, _batch_ids(tokenizer, [s["text"] for s in segments])):
        ids += piece
        mask += [int(bool(segment["train"]))] * len(piece)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def pack_text(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Documents for continued pre-training: each tokenised with the tokenizer's special tokens and eos,
    concatenated, and cut into ``max_length`` blocks, so every token of every document is trained."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in _batch_ids(tokenizer, texts, special=True):
        stream += ids
        if eos is not None and (not ids or ids[-1] != eos):
            stream.append(eos)
    return [stream[i:i + max_length] for i in range(0, len(stream), max_length)]


def preview_segments(tokenizer, messages: list[dict], max_length: int | None = None,
                     tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """Consecutive chunks of the rendered conversation with whether they are trained on (for HighlightedText)."""
    text, spans = render_chat(tokenizer, messages, tools)
    ids, mask, offsets = _tokenize(tokenizer, text, spans)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
        offsets = offsets[:max_length] if offsets is not None else None
    if not ids:
        return []
    runs: list[tuple[int, int, bool]] = []  # token ranges with one flag
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            runs.append((start, i, bool(mask[start])))
            start = i
    segments = []
    if offsets is not None:
        truncated = max_length is not None and len(ids) == max_length
        pos = 0
        for n, (a, b, flag) in enumerate(runs):
            last = n == len(runs) - 1
            cut = (offsets[b - 1][1] if truncated else len(text)) if last else max(pos, offsets[b][0])
            segments.append((text[pos:cut], flag))
            pos = cut
    else:
        segments = [(tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False), flag)
                    for a, b, flag in runs]
    return [(chunk, flag) for chunk, flag in segments if chunk]


def token_lengths(tokenizer, rows: list[dict], kind: str) -> list[int]:
    """Untruncated token count of each normalised row (preference: prompt + the longer reply)."""
    if kind == "text":
        eos = tokenizer.eos_token_id
        out = []
        for row, ids in zip(rows, _batch_ids(tokenizer, [r["text"] for r in rows], special=True)):
            if row.get("segments"):
                out.append(len(encode_segments(tokenizer, row["segments"])[0]))
            else:
                out.append(len(ids) + (1 if eos is not None and (not ids or ids[-1] != eos) else 0))
        return out
    if kind == "chat":
        return [len(ids) for ids in _batch_ids(tokenizer, [render_row(tokenizer, r["messages"], r) for r in rows])]
    if kind in ("unpaired_preference", "prompt_only"):
        return [len(ids) for ids in _batch_ids(tokenizer, [
            render_row(tokenizer, r["prompt"] + r.get("completion", []), r) for r in rows])]
    if kind == "preference":
        chosen = _batch_ids(tokenizer, [render_row(tokenizer, r["prompt"] + r["chosen"], r) for r in rows])
        rejected = _batch_ids(tokenizer, [render_row(tokenizer, r["prompt"] + r["rejected"], r) for r in rows])
        return [max(len(c), len(r)) for c, r in zip(chosen, rejected)]
    raise ValueError(f"unknown dataset kind '{kind}'; expected chat, text, preference, unpaired_preference "
                     "or prompt_only")


def render_row(tokenizer, messages: list[dict], row: dict) -> str:
    """``messages`` of a dataset row as training renders them, with the row's tools."""
    converted, tools = template_messages(tokenizer, messages, row.get("tools"))
    return render_text(tokenizer, converted, False, tools)


def _batch_ids(tokenizer, texts: list[str], special: bool = False, batch: int = 1000) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out += tokenizer(texts[i:i + batch], add_special_tokens=special)["input_ids"]
    return out
