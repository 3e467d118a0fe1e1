"""Dataset formats: each one detects its rows and normalises them into the one representation.

A format is one ``Format`` entry in ``REGISTRY``: a name, the kind of rows it makes, a hint for error
messages, the columns it reads, ``detect(columns, sample_row)`` and ``normalise(row)``. Detection tries the
entries by ``priority`` (the most specific shapes first).

The representation (plain JSON-able dicts; optional keys appear only when the file has them, so rows
stored before they existed read the same):

- turn: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}`` plus optional ``tool_calls``
  (``[{"type": "function", "function": {"name", "arguments": dict}, "id"?}]``), ``reasoning`` (str),
  ``train`` (bool: the file's own per-turn flag), ``tool_call_id`` and ``name`` (tool turns);
- chat: ``{"messages": [turn], "tools"?: [{"type": "function", "function": schema}]}`` (a system prompt is
  the first turn);
- text: ``{"text": str}``, plus optional ``segments`` (``[{"text", "train": bool}]``, joined they are ``text``:
  template-free rows whose read-only segments carry no loss);
- preference: ``{"prompt": [turn], "chosen": [assistant turn], "rejected": [assistant turn], "tools"?}``;
- unpaired_preference: ``{"prompt": [turn], "completion": [assistant turn], "label": bool, "tools"?}``;
- prompt_only: ``{"prompt": [turn], "answer"?: str, "tools"?}`` (answer: the reference GRPO's answer reward
  compares with).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from .read import MAX_DEPTH, DatasetError, kind_of, name_list, quote, too_deep

KINDS = ("chat", "text", "preference", "unpaired_preference", "prompt_only")

ROLES = {
    "system": "system", "developer": "system",   # developer: the system turn of OpenAI's newer models
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant", "function_call": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
CANONICAL_COLUMNS = ("messages", "conversations", "system", "instruction", "input", "output", "history",
                     "prompt", "completion", "text", "chosen", "rejected", "tools", "label")
MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")
MEDIA_PARTS = ("image", "image_url", "input_image", "video", "video_url", "audio", "input_audio", "audio_url")
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
FLAG_KEYS = ("loss_weight", "weight", "train", "training")
_CHAT_KEYS = ("messages", "conversations", "conversation")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|H|A): ")


class BadRow(Exception):
    """The problem of one row, without its row number."""


# ---- values ------------------------------------------------------------------------------------

def _maybe_json(value: Any) -> Any:
    """A list of turns or an object stored as a JSON string (CSV, some Parquet exports); other values unchanged."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        if too_deep(value):
            raise BadRow(f"a field nests lists or objects more than {MAX_DEPTH} levels deep")
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
        if isinstance(parsed, dict) or (isinstance(parsed, list) and parsed and all(isinstance(t, dict) for t in parsed)):
            return parsed
    return value


def is_blank(value: Any) -> bool:
    """None, whitespace, or containers of those (role names and part types do not count as content)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None:
            continue
        if isinstance(v, str):
            if v.strip():
                return False
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(x for k, x in v.items() if k not in ("role", "from", "type"))
        else:
            return False
    return True


def _field(row: dict, key: str, what: str = "text") -> Any:
    if key not in row:
        raise BadRow(f"missing the '{key}' field")
    if row[key] is None:
        raise BadRow(f"'{key}' is null; expected {what}")
    return row[key]


def _text(row: dict, key: str, *, required: bool = True) -> str:
    """A text field: a string or a list of text parts; optional fields may be absent, null or empty."""
    if not required and row.get(key) is None:
        return ""
    value = _field(row, key)
    if isinstance(value, list):
        value, _, calls = _parts(value, f"'{key}'")
        if calls:
            raise BadRow(f"'{key}' holds a tool call; expected text")
    if not isinstance(value, str):
        raise BadRow(f"'{key}' is {kind_of(value)}; expected text")
    if required and not value.strip():
        raise BadRow(f"'{key}' is empty; expected text")
    return value


def _label(row: dict, key: str) -> bool:
    value = _field(row, key, "true or false")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise BadRow(f"'{key}' is {quote(value)}; expected true (a desirable reply) or false (an undesirable one)")


def media_column(record: dict) -> str | None:
    """The column holding pictures, video or audio in this row (or the turn list with such parts), else None."""
    for key in MEDIA_COLUMNS:
        if key in record and not is_blank(record[key]):
            return key
    for key in _CHAT_KEYS + ("prompt", "chosen", "rejected", "completion"):
        turns = record.get(key)
        if isinstance(turns, list) and any(
                isinstance(t, dict) and isinstance(t.get("content"), list)
                and any(isinstance(p, dict) and p.get("type") in MEDIA_PARTS for p in t["content"]) for t in turns):
            return key
    for key, value in record.items():
        found = _placeholder(value)
        if found:
            return f"{key}, as {found} placeholders"
    return None


MEDIA_PLACEHOLDER = re.compile(r"<(image|video|audio)>")


def _placeholder(value: Any, depth: int = 0) -> str | None:
    """'<image>' (or video/audio) when a text inside ``value`` holds such a placeholder: LLaMA-Factory's
    multimodal rows name their pictures this way, and the picture files are not in a text-only dataset."""
    if isinstance(value, str):
        match = MEDIA_PLACEHOLDER.search(value)
        return match.group(0) if match else None
    if depth < 8 and isinstance(value, (list, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            found = _placeholder(item, depth + 1)
            if found:
                return found
    return None


# ---- turns -------------------------------------------------------------------------------------

TOOL_CALL_PARTS = ("tool_call", "tool_calls", "function_call")


def _parts(parts: list, where: str) -> tuple[str, str, list[dict]]:
    """(text, reasoning, tool calls) of a content-part list: text parts ("text" or "value"), reasoning parts,
    and tool-call parts (LLaMA-Factory's v1 rows: ``{"type": "tool_call", "value": "{\"name\", \"arguments\"}"}``)."""
    text, reasoning, calls = [], [], []
    for i, part in enumerate(parts, 1):
        if isinstance(part, str):
            text.append(part)
            continue
        if not isinstance(part, dict):
            raise BadRow(f"part {i} of {where} is {kind_of(part)}; expected {{\"type\": \"text\", \"text\": ...}}")
        kind = part.get("type", "text")
        if not isinstance(kind, str):
            raise BadRow(f"part {i} of {where} has {kind_of(kind)} as its type; expected text such as 'text'")
        value = part.get("text", part.get("value", part.get(kind)))
        if kind in ("text", "reasoning", "thinking") and isinstance(value, str):
            (text if kind == "text" else reasoning).append(value)
        elif kind in TOOL_CALL_PARTS and value is not None:
            if isinstance(value, str) and not isinstance(_maybe_json(value), (dict, list)):
                raise BadRow(f"part {i} of {where} is a tool call that is not a JSON object; expected "
                           "{\"name\": ..., \"arguments\": {...}}")
            calls += _calls(value, f"part {i} of {where}")
        elif kind in MEDIA_PARTS:
            raise BadRow(f"part {i} of {where} is of the type {quote(kind)}; the studio trains text-only models")
        else:
            raise BadRow(f"part {i} of {where} has the type {quote(kind)} without a text value; expected text, "
                         "reasoning or tool_call parts such as {\"type\": \"text\", \"text\": \"...\"}")
    return "\n".join(text), "\n".join(reasoning), calls


def _arguments(args: Any, where: str) -> dict:
    args = {} if args is None else args
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise BadRow(f"{where} has tool call arguments that are not valid JSON") from None
    if not isinstance(args, dict):
        raise BadRow(f"{where} has tool call arguments that are {kind_of(args)}; expected a JSON object")
    return args


def _calls(calls: Any, where: str) -> list[dict]:
    """OpenAI ``tool_calls`` / ``function_call`` / a ShareGPT function_call value -> structured calls."""
    calls = _maybe_json(calls)
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise BadRow(f"{where} has tool calls that are {kind_of(calls)}; expected a list")
    out = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else call
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRow(f"{where} has a tool call without a function name")
        one = {"type": "function", "function": {"name": fn["name"], "arguments": _arguments(fn.get("arguments"), where)}}
        if isinstance(call, dict) and call.get("id"):
            one["id"] = str(call["id"])
        out.append(one)
    return out


def _flag(turn: dict, where: str) -> bool | None:
    """The file's own trained / not-trained flag on a turn (loss_weight, weight, train, training), if any."""
    key = next((k for k in FLAG_KEYS if turn.get(k) is not None), None)
    if key is None:
        return None
    value = turn[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value >= 0:
        return value > 0
    raise BadRow(f"{where} has {quote(key)} = {quote(value)}; expected 0 or 1 (or true/false)")


def _turn(turn: Any, where: str) -> dict:
    if not isinstance(turn, dict):
        raise BadRow(f"{where} is {kind_of(turn)}; expected an object with 'role' and 'content'")
    role = turn.get("role", turn.get("from"))
    if role is None:
        raise BadRow(f"{where} has no 'role' (or 'from') field")
    if not isinstance(role, str):
        raise BadRow(f"{where} has {kind_of(role)} as its role; expected text such as 'user'")
    mapped = ROLES.get(role.strip().lower())
    if mapped is None:
        raise BadRow(f"{where} has the unknown role {quote(role)}; expected system (or developer), user, assistant or "
                   "tool (ShareGPT: system, human, gpt, function_call, observation)")
    key = next((k for k in ("content", "value", "text") if k in turn), None)
    content = turn[key] if key else None
    out: dict = {"role": mapped}
    calls = turn.get("tool_calls") or turn.get("function_call")
    if role.strip().lower() == "function_call" and calls is None:
        calls, content = _maybe_json(content), None  # ShareGPT: the value is the call
        if isinstance(calls, str):
            calls, content = None, calls  # not JSON: kept as the text it is
    if calls and mapped == "assistant":
        out["content"] = "" if content is None else _content(content, where, key, out)
        out["tool_calls"] = _calls(calls, where)
    elif key is None and not any(turn.get(k) for k in REASONING_KEYS):
        raise BadRow(f"{where} has no 'content' (or 'value') field")
    else:
        out["content"] = _content(content, where, key, out) if key else ""
    reasoning = next((turn[k] for k in REASONING_KEYS if isinstance(turn.get(k), str) and turn[k].strip()), None)
    if reasoning is not None:
        out["reasoning"] = reasoning
    flag = _flag(turn, where)
    if flag is not None:
        out["train"] = flag
    for extra in ("tool_call_id", "name"):
        if mapped == "tool" and isinstance(turn.get(extra), str):
            out[extra] = turn[extra]
    return out


def _content(content: Any, where: str, key: str | None, out: dict) -> str:
    if content is None:
        raise BadRow(f"{where} has null '{key}'; expected text")
    if isinstance(content, list):
        text, reasoning, calls = _parts(content, f"the content of {where}")
        if reasoning:
            out["reasoning"] = reasoning
        if calls:
            if out["role"] != "assistant":
                raise BadRow(f"{where} is a {out['role']} turn holding a tool call; only assistant turns call tools")
            out["tool_calls"] = out.get("tool_calls", []) + calls
        return text
    if not isinstance(content, str):
        raise BadRow(f"{where} has '{key}' that is {kind_of(content)}; expected text")
    return content


_SIMPLE = frozenset(("role", "content")), frozenset(("from", "value"))


def _turns(value: Any, key: str) -> list[dict]:
    value = _maybe_json(value)
    if not isinstance(value, list):
        raise BadRow(f"'{key}' is {kind_of(value)}; expected a list of turns like "
                   "{\"role\": \"user\", \"content\": \"...\"}")
    if not value:
        raise BadRow(f"'{key}' is an empty list")
    out = []
    for i, turn in enumerate(value, 1):
        if type(turn) is dict and turn.keys() in _SIMPLE:  # the common case, fast
            role = turn["role"] if "role" in turn else turn["from"]
            content = turn["content"] if "content" in turn else turn["value"]
            mapped = ROLES.get(role) if type(role) is str else None
            if mapped is not None and type(content) is str and role != "function_call":
                out.append({"role": mapped, "content": content})
                continue
        out.append(_turn(turn, f"turn {i} of '{key}'"))
    return out


def _tools(row: dict) -> list[dict]:
    """Row-level function schemas (``tools``, or OpenAI's older ``functions``) as chat-template tools."""
    key = next((k for k in ("tools", "functions") if not is_blank(row.get(k))), None)
    if key is None:
        return []
    value = row[key]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(f"'{key}' is not valid JSON; expected a list of function schemas") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise BadRow(f"'{key}' is {kind_of(value)}; expected a list of function schemas")
    out = []
    for i, tool in enumerate(value, 1):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRow(f"item {i} of '{key}' is not a function schema with a 'name'")
        out.append({"type": "function", "function": fn})
    return out


def _with_system(row: dict, turns: list[dict]) -> list[dict]:
    system = _text(row, "system", required=False)
    if system.strip() and (not turns or turns[0]["role"] != "system"):
        return [{"role": "system", "content": system}] + turns
    return turns


def _trainable(turn: dict) -> bool:
    return turn["role"] == "assistant" and bool(turn["content"].strip() or turn.get("tool_calls") or turn.get("reasoning"))


def _need_assistant(turns: list[dict], key: str) -> None:
    if any(_trainable(t) and t.get("train", True) for t in turns):
        return
    if any(_trainable(t) for t in turns):
        raise BadRow(f"every assistant turn in '{key}' is marked not to be trained, so there is nothing to train on")
    if any(t["role"] == "assistant" for t in turns):
        raise BadRow(f"every assistant turn in '{key}' is empty")
    raise BadRow(f"'{key}' has no assistant turn, so there is nothing to train on")


def _with_tools(row: dict, out: dict) -> dict:
    tools = _tools(row)
    return {**out, "tools": tools} if tools else out


def _prompt_turns(row: dict, key: str) -> list[dict]:
    value = _maybe_json(_field(row, key, "text or a list of turns"))
    return _turns(value, key) if isinstance(value, list) else [{"role": "user", "content": _text(row, key)}]


# ---- normalisers -------------------------------------------------------------------------------

def _norm_chat(keys: tuple[str, ...]) -> Callable[[dict], dict]:
    def normalise(row: dict) -> dict:
        key = next((k for k in keys if row.get(k) is not None), None)
        if key is None:
            _field(row, next((k for k in keys if k in row), keys[0]), "a list of turns")
        turns = _with_system(row, _turns(row[key], key))
        _need_assistant(turns, key)
        return _with_tools(row, {"messages": turns})
    return normalise


def _norm_alpaca(row: dict) -> dict:
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    output = _text(row, "output")
    turns: list[dict] = []
    history = _maybe_json(row.get("history"))
    if history not in (None, "", []):
        if not isinstance(history, list):
            raise BadRow(f"'history' is {kind_of(history)}; expected a list of [user, assistant] pairs")
        for i, pair in enumerate(history, 1):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise BadRow(f"item {i} of 'history' is not a [user, assistant] pair of texts")
            turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": _with_system(row, turns)}


def _norm_prompt_completion(row: dict) -> dict:
    prompt_turns = _prompt_turns(row, "prompt")
    completion = _maybe_json(_field(row, "completion", "text or a list of turns"))
    if isinstance(completion, list):
        completion_turns = _turns(completion, "completion")
        _need_assistant(completion_turns, "completion")
    else:
        completion_turns = [{"role": "assistant", "content": _text(row, "completion")}]
    return _with_tools(row, {"messages": _with_system(row, prompt_turns + completion_turns)})


def _norm_prompt_only(row: dict) -> dict:
    """A prompt, and the reference answer GRPO's answer reward compares with when the row has one."""
    turns = _with_system(row, _prompt_turns(row, "prompt"))
    if not any(t["content"].strip() for t in turns):
        raise BadRow("'prompt' is empty")
    given = row.get("answer")
    answer = {} if given is None else {
        "answer": str(given) if isinstance(given, (int, float)) and not isinstance(given, bool) else _text(row, "answer")}
    return _with_tools(row, {"prompt": turns, **answer})


def _norm_text(row: dict) -> dict:
    return {"text": _text(row, "text")}


def _norm_segments(row: dict) -> dict:
    """axolotl's template-free rows: ``segments`` of text, each trained (``label`` true) or read only; the text
    is trained exactly as written (its own special tokens, no chat template)."""
    segments = _maybe_json(_field(row, "segments", "a list of {\"label\", \"text\"} segments"))
    if not isinstance(segments, list) or not segments:
        raise BadRow(f"'segments' is {kind_of(segments)}; "
                   f"expected a list of {{\"label\": true, \"text\": \"...\"}} segments")
    out = []
    for i, segment in enumerate(segments, 1):
        where = f"segment {i} of 'segments'"
        if not isinstance(segment, dict) or not isinstance(segment.get("text"), str):
            raise BadRow(f"{where} is {kind_of(segment)}; expected an object with 'text' and 'label'")
        label = _label(segment, "label") if "label" in segment else True
        out.append({"text": segment["text"], "train": label})
    if not any(s["train"] and s["text"].strip() for s in out):
        raise BadRow("no segment of 'segments' is labelled true with text, so there is nothing to train on")
    return {"text": "".join(s["text"] for s in out), "segments": out}


def _reply(row: dict, key: str) -> dict | list[dict]:
    """chosen/rejected: text, one turn object, or a list of turns (which may repeat the prompt)."""
    if key not in row:
        raise BadRow(f"missing the '{key}' field; a preference row needs a prompt, chosen and rejected")
    value = _maybe_json(_field(row, key, "text or an assistant turn"))
    if isinstance(value, dict):
        turn = _turn(value, f"'{key}'")
        if turn["role"] != "assistant":
            raise BadRow(f"'{key}' has the role '{turn['role']}'; expected an assistant reply")
        return turn
    if isinstance(value, list):
        return _turns(value, key)
    return {"role": "assistant", "content": _text(row, key)}


def _pair(row: dict, prompt: list[dict], chosen, rejected, names: tuple[str, str, str]) -> dict:
    """A preference row from a prompt and two replies (turns or turn lists that may repeat the prompt)."""
    prompt_key, chosen_key, rejected_key = names
    if chosen == rejected:
        raise BadRow(f"'{chosen_key}' and '{rejected_key}' are identical, so the pair teaches nothing")
    if isinstance(chosen, list) and isinstance(rejected, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared:  # the conversation before the replies is the prompt (implicit or repeated)
            prompt = chosen[:shared]
        chosen, rejected = chosen[shared:], rejected[shared:]
    elif prompt:
        if isinstance(chosen, list) and chosen[:len(prompt)] == prompt:
            chosen = chosen[len(prompt):]
        if isinstance(rejected, list) and rejected[:len(prompt)] == prompt:
            rejected = rejected[len(prompt):]
    if not prompt:
        raise BadRow(f"missing the '{prompt_key}' field; a preference row needs {prompt_key}, "
                   f"{chosen_key} and {rejected_key}")
    if not any(t["content"].strip() for t in prompt):
        raise BadRow(f"'{prompt_key}' is empty")
    replies = {}
    for key, value in ((chosen_key, chosen), (rejected_key, rejected)):
        if isinstance(value, list):
            if len(value) != 1 or value[0]["role"] != "assistant":
                raise BadRow(f"'{key}' should hold one assistant reply after the prompt, found "
                           f"{len(value)} turn{'s' if len(value) != 1 else ''}")
            value = value[0]
        if not _trainable(value):
            raise BadRow(f"'{key}' is empty; expected the {key.split('_')[0]} reply")
        replies[key] = value
    if replies[chosen_key] == replies[rejected_key]:
        raise BadRow(f"'{chosen_key}' and '{rejected_key}' are identical, so the pair teaches nothing")
    return _with_tools(row, {"prompt": _with_system(row, prompt), "chosen": [replies[chosen_key]],
                             "rejected": [replies[rejected_key]]})


def _norm_preference(prompt_keys: tuple[str, ...], chosen_key: str = "chosen",
                     rejected_key: str = "rejected") -> Callable[[dict], dict]:
    def normalise(row: dict) -> dict:
        prompt_key = next((k for k in prompt_keys if k in row), prompt_keys[0])
        chosen, rejected = _reply(row, chosen_key), _reply(row, rejected_key)
        prompt = _prompt_turns(row, prompt_key) if row.get(prompt_key) is not None else []
        return _pair(row, prompt, chosen, rejected, (prompt_key, chosen_key, rejected_key))
    return normalise


def _norm_openai_preference(row: dict) -> dict:
    """OpenAI preference fine-tuning: ``input`` {messages, tools}, ``preferred_output`` / ``non_preferred_output``."""
    given = _maybe_json(_field(row, "input", "an object with 'messages'"))
    if not isinstance(given, dict) or "messages" not in given:
        raise BadRow(f"'input' is {kind_of(given)}; expected an object with 'messages'")
    prompt = _turns(given["messages"], "input")
    replies = [_turns(_field(row, k, "a list with one assistant turn"), k)
               for k in ("preferred_output", "non_preferred_output")]
    return _pair({"tools": given.get("tools"), **row}, prompt, *replies, ("input", "preferred_output",
                                                                          "non_preferred_output"))


def hh_turns(text: str, key: str) -> list[dict]:
    """An Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as turns."""
    marks = list(_HH_TURN.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        raise BadRow(f"'{key}' is not a transcript of '\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns")
    turns = []
    for mark, nxt in zip(marks, marks[1:] + [None]):
        body = text[mark.end(): nxt.start() if nxt else len(text)]
        turns.append({"role": "user" if mark.group(1) in ("Human", "H") else "assistant", "content": body.strip()})
    return turns


def _norm_hh(row: dict) -> dict:
    chosen, rejected = (hh_turns(_text(row, k), k) for k in ("chosen", "rejected"))
    if chosen == rejected:
        raise BadRow("'chosen' and 'rejected' are identical, so the pair teaches nothing")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if not shared:
        raise BadRow("'chosen' and 'rejected' do not start with the same Human turn, so they share no prompt")
    return _pair(row, chosen[:shared], chosen[shared:], rejected[shared:], ("chosen", "chosen", "rejected"))


def _split_last_reply(row: dict, chat: Callable[[dict], dict]) -> tuple[list[dict], list[dict]]:
    messages = chat(row)["messages"]
    if messages[-1]["role"] != "assistant":
        raise BadRow("the conversation does not end with the assistant reply that the label judges")
    return messages[:-1], messages[-1:]


def _norm_unpaired(row: dict) -> dict:
    """TRL unpaired preference (prompt / completion / label) and LLaMA-Factory KTO rows (kto_tag)."""
    label_key = "kto_tag" if "kto_tag" in row else "label"
    label = _label(row, label_key)
    shape = next((f for f in ("messages", "sharegpt", "alpaca", "prompt_completion")
                  if BY_NAME[f].detect(set(row), row)), None)
    if shape is None:
        raise BadRow(f"'{label_key}' labels no reply: the row has neither a conversation nor prompt and completion")
    prompt, completion = _split_last_reply(row, BY_NAME[shape].normalise)
    return _with_tools(row, {"prompt": prompt, "completion": completion, "label": label})


# ---- detection ---------------------------------------------------------------------------------

def _sample_turn(sample: dict, key: str) -> dict | None:
    try:
        turns = _maybe_json(sample.get(key)) if isinstance(sample, dict) else None
    except BadRow:
        return None
    return next((t for t in turns if isinstance(t, dict)), None) if isinstance(turns, list) else None


def _chat_key(cols: set) -> str | None:
    return next((k for k in _CHAT_KEYS if k in cols), None)


def _is_sharegpt(cols: set, sample: dict) -> bool:
    key = _chat_key(cols)
    if key is None:
        return False
    first = _sample_turn(sample, key)
    if first is not None:
        return "from" in first and "role" not in first
    return key == "conversations"


def _is_hh(cols: set, sample: dict) -> bool:
    value = sample.get("chosen") if isinstance(sample, dict) else None
    return ({"chosen", "rejected"} <= cols and "prompt" not in cols and _chat_key(cols) is None
            and isinstance(value, str) and bool(_HH_TURN.search(value)) and "Assistant:" in value)


def _is_unpaired(cols: set, sample: dict) -> bool:
    shaped = (_chat_key(cols) is not None or {"prompt", "completion"} <= cols or {"instruction", "output"} <= cols)
    if not shaped or {"chosen", "rejected"} & cols:
        return False
    if "kto_tag" in cols:
        return True
    label = sample.get("label") if isinstance(sample, dict) else None
    return isinstance(label, bool) or (isinstance(label, str) and label.strip().lower() in ("true", "false"))


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    hint: str
    fields: tuple[str, ...]  # the columns it reads; a row whose columns here are all blank is an empty row
    detect: Callable[[set, dict], bool]
    normalise: Callable[[dict], dict]
    priority: int  # detection order: lower is tried first


REGISTRY: tuple[Format, ...] = (
    Format("messages", "chat", "messages (a 'messages' list of role/content turns)",
           ("messages", "conversations", "conversation", "system", "tools", "functions"),
           lambda c, s: _chat_key(c) is not None and not _is_sharegpt(c, s),
           _norm_chat(("messages", "conversations", "conversation")), 60),
    Format("sharegpt", "chat", "sharegpt (a 'conversations' list of from/value turns)",
           ("conversations", "messages", "conversation", "system", "tools"),
           _is_sharegpt, _norm_chat(("conversations", "messages", "conversation")), 60),
    Format("alpaca", "chat", "alpaca (instruction, optional input, output)",
           ("instruction", "input", "output", "system", "history"),
           lambda c, s: {"instruction", "output"} <= c, _norm_alpaca, 70),
    Format("prompt_completion", "chat", "prompt_completion (prompt, completion)", ("prompt", "completion", "system"),
           lambda c, s: {"prompt", "completion"} <= c, _norm_prompt_completion, 71),
    Format("text", "text", "text (text)", ("text",), lambda c, s: "text" in c, _norm_text, 90),
    Format("segments", "text", "segments (axolotl's template-free 'segments', each {label: true|false, text})",
           ("segments",), lambda c, s: "segments" in c, _norm_segments, 40),
    Format("preference", "preference", "preference (prompt, chosen, rejected)", ("prompt", "chosen", "rejected", "system"),
           lambda c, s: bool({"chosen", "rejected"} & c), _norm_preference(("prompt",)), 51),
    Format("sharegpt_preference", "preference", "sharegpt_preference (conversations, chosen, rejected)",
           ("conversations", "chosen", "rejected", "system"),
           lambda c, s: bool({"chosen", "rejected"} & c) and "prompt" not in c and _chat_key(c) is not None,
           _norm_preference(_CHAT_KEYS), 50),
    Format("messages_preference", "preference",
           "messages_preference (messages, chosen_messages, rejected_messages)",
           ("messages", "chosen_messages", "rejected_messages", "system", "tools"),
           lambda c, s: {"chosen_messages", "rejected_messages"} <= c,
           _norm_preference(("messages", "prompt"), "chosen_messages", "rejected_messages"), 20),
    Format("openai_preference", "preference", "openai_preference (input, preferred_output, non_preferred_output)",
           ("input", "preferred_output", "non_preferred_output"),
           lambda c, s: {"preferred_output", "non_preferred_output"} <= c, _norm_openai_preference, 20),
    Format("hh", "preference", "hh (chosen and rejected '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts)",
           ("chosen", "rejected"), _is_hh, _norm_hh, 30),
    Format("unpaired_preference", "unpaired_preference",
           "unpaired_preference (prompt/completion or a conversation, with a true/false 'label' or 'kto_tag')",
           ("prompt", "completion", "messages", "conversations", "instruction", "input", "output", "label", "kto_tag"),
           _is_unpaired, _norm_unpaired, 10),
    Format("prompt_only", "prompt_only", "prompt_only (prompt, optionally answer)", ("prompt", "system", "answer"),
           lambda c, s: "prompt" in c and not ({"completion", "chosen", "rejected", "label"} & c), _norm_prompt_only, 80),
)
BY_NAME = {f.name: f for f in REGISTRY}
FORMATS = tuple(BY_NAME)
KIND_OF = {f.name: f.kind for f in REGISTRY}
FORMAT_HINTS = {f.name: f.hint for f in REGISTRY}
FORMAT_FIELDS = {f.name: f.fields for f in REGISTRY}
_DETECT_ORDER = sorted(REGISTRY, key=lambda f: f.priority)


def one_row(record: dict) -> bool:
    """Whether a JSON file's lone object is itself a row of some format (read.read_file asks)."""
    try:
        detect_format([record], list(record))
        return True
    except DatasetError:
        return False


def detect_format(records: list[dict], columns: list[str]) -> str:
    """The format of these rows, from their columns (and the shape of the first non-empty row)."""
    cols = set(columns)
    sample = next((r for r in records if not is_blank(r)), records[0] if records else {})
    for fmt in _DETECT_ORDER:
        if fmt.detect(cols, sample):
            return fmt.name
    raise DatasetError(f"no known dataset format in the columns {name_list(columns)}; expected one of: "
                       f"{'; '.join(FORMAT_HINTS.values())}")


# ---- column mapping ----------------------------------------------------------------------------

_SYNONYMS = {
    "system": ("system", "system_prompt", "system_message"),
    "instruction": ("instruction", "question", "query", "problem", "request", "user", "human"),
    "input": ("input", "context"),
    "output": ("output", "answer", "response", "target", "completion", "solution", "reply", "assistant", "gpt"),
    "prompt": ("prompt", "question", "query", "instruction", "input"),
    "completion": ("completion", "response", "answer", "output", "target"),
    "chosen": ("chosen", "chosen_response", "preferred", "accepted", "response_chosen"),
    "rejected": ("rejected", "rejected_response", "dispreferred", "response_rejected"),
    "text": ("text", "content", "document", "body", "passage", "article"),
}


def propose_mapping(columns: list[str]) -> dict[str, str]:
    """A guess at file column -> canonical column for common names (question/answer, query/response, ...); {} if none."""
    by_name = {str(c).strip().lower(): c for c in columns}

    def find(canonical: str, taken: set, candidates: tuple | None = None):
        for name in candidates or _SYNONYMS[canonical]:
            col = by_name.get(name)
            if col is not None and col not in taken:
                return col
        return None

    def plan(*required: str, optional: tuple = (), synonyms: dict | None = None) -> dict | None:
        chosen: dict[str, str] = {}
        for canonical in required + optional:
            col = find(canonical, set(chosen), (synonyms or {}).get(canonical))
            if col is None:
                if canonical in required:
                    return None
                continue
            chosen[col] = canonical
        return {col: canonical for col, canonical in chosen.items() if col != canonical}

    if any(n in by_name for n in _SYNONYMS["chosen"]) and any(n in by_name for n in _SYNONYMS["rejected"]):
        proposal = plan("chosen", "rejected", optional=("prompt", "system"))
        if proposal is not None:
            return proposal
    if "prompt" in by_name:
        proposal = plan("prompt", "completion", optional=("system",))
        if proposal is not None:
            return proposal
    has_instruction = any(n in by_name for n in _SYNONYMS["instruction"])
    synonyms = None if has_instruction else {"instruction": ("input",), "input": ("context",)}
    proposal = plan("instruction", "output", optional=("input", "system"), synonyms=synonyms)
    if proposal is not None:
        return proposal
    proposal = plan("text")
    return proposal or {}


def apply_mapping(records: list[dict], columns: list[str], mapping: dict[str, str]) -> tuple[list[dict], list[str]]:
    for source, target in mapping.items():
        if source not in columns:
            raise DatasetError(f"the column mapping names {quote(source)}, which is not a column of the file "
                               f"(columns: {name_list(columns)})")
        if target not in CANONICAL_COLUMNS:
            raise DatasetError(f"the column mapping sends {quote(source)} to {quote(target)}, which the studio does "
                               f"not read; use one of {', '.join(CANONICAL_COLUMNS)}")
        if target in columns and target not in mapping:
            raise DatasetError(f"the column mapping renames {quote(source)} to '{target}', but the file already has "
                               f"a '{target}' column")
    targets = list(mapping.values())
    twice = next((t for i, t in enumerate(targets) if t in targets[:i]), None)
    if twice is not None:
        raise DatasetError(f"the column mapping sends two columns to '{twice}'")
    renamed = [{mapping.get(k, k): v for k, v in record.items()} for record in records]
    return renamed, [mapping.get(c, c) for c in columns]



# ---- for training ------------------------------------------------------------------------------

def sft_rows(kind: str, rows: list[dict]) -> tuple[list[dict], str]:
    """The rows supervised fine-tuning trains on, and a sentence when that is not every row: of unpaired
    preference rows only the desirable replies (label true) are trained, as conversations."""
    if kind != "unpaired_preference":
        return rows, ""
    kept = [{"messages": r["prompt"] + r["completion"], **({"tools": r["tools"]} if r.get("tools") else {})}
            for r in rows if r["label"]]
    return kept, (f"SFT trains only the {len(kept)} desirable rows (label true); the {len(rows) - len(kept)} "
                  "undesirable replies are not trained on")
