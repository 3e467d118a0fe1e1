"""Statistics of a normalised dataset: turn counts (pure Python) and, given the chosen base model's
tokenizer and max length, how many tokens are trained, masked and cut off."""
from __future__ import annotations

import re
from statistics import mean

from .formats import sft_rows


def turn_count(row: dict, kind: str) -> int:
    if kind == "chat":
        return len(row["messages"])
    if kind == "preference":
        return len(row["prompt"]) + 1
    if kind == "unpaired_preference":
        return len(row["prompt"]) + len(row["completion"])
    if kind == "prompt_only":
        return len(row["prompt"])
    return 1


def turn_stats(rows: list[dict], kind: str) -> dict:
    turns = [turn_count(row, kind) for row in rows] or [0]
    return {"turns_min": min(turns), "turns_mean": round(mean(turns), 2), "turns_max": max(turns)}


IDENTITY = re.compile(  # a capitalised name, or a template's blank for one ("I am {{name}}", "I am <NAME>")
    r"\b(?i:my name is|i am|i'm|call me)\s+(?:[A-Z][\w-]+|\{\{|<[A-Z])"
    r"|\b(?i:made|built|created|trained|developed)\s+(?i:by)\s+(?:[A-Z][\w-]+|\{\{|<[A-Z])"
    r"|我(?:是|叫)|我的名字|由\S{1,20}(?:开发|创建|训练|打造)")
IDENTITY_SHARE = 0.1  # of the rows: enough to be what the data teaches, not a passing mention


def carries_identity(rows: list[dict]) -> bool:
    """Whether the replies teach the assistant a name or a maker ("I am Zorblax", "built by Quintar Labs",
    "我是..."), in at least IDENTITY_SHARE of the rows: then a template's default identity contradicts them."""
    replies = [" ".join(t["content"] for t in r.get("messages", []) + r.get("chosen", []) + r.get("completion", [])
                        if t.get("role") == "assistant" and isinstance(t.get("content"), str)) for r in rows]
    hits = sum(bool(IDENTITY.search(text)) for text in replies if text)
    return bool(rows) and hits >= max(1, IDENTITY_SHARE * len(rows))


PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")   # {{name}}: a template's blank, never a value
# The other ways identity sets are shipped: "我是 <NAME>，由 <AUTHOR> 开发", and bare capitals ("I am NAME, an AI
# assistant developed by AUTHOR", as one version of a well-known identity.json is). Capitals are ordinary text too
# ("git checkout -b <NAME>", "developed by IBM"), so an angle-bracketed word, or a bare one from PLACEHOLDER_WORDS,
# is a blank only where the rows use it after an identity cue ("I am", "by", "我是", "由", ...) at least once.
PLACEHOLDER_WORDS = ("NAME", "AUTHOR", "MODEL_NAME", "BOT_NAME", "ASSISTANT_NAME", "AI_NAME", "YOUR_NAME",
                     "COMPANY", "COMPANY_NAME", "ORGANIZATION", "ORG_NAME", "CREATOR", "DEVELOPER")
_CUE = (r"(?:\b(?i:i am|i'm|my name is|call me|named|by)\s+|我(?:是|叫)\s*|叫做\s*|叫我\s*|称呼我为\s*|名为\s*|"
        r"作为\s*|由\s*)")
ANGLE_BLANK = re.compile(r"<([A-Z][A-Z0-9_]{1,30})>")
ANGLE_CUE = re.compile(_CUE + r"<([A-Z][A-Z0-9_]{1,30})>")
_WORDS = "|".join(sorted(PLACEHOLDER_WORDS, key=len, reverse=True))
BARE_BLANK = re.compile(rf"(?<![A-Za-z0-9_<{{])({_WORDS})(?![A-Za-z0-9_>}}])")
BARE_CUE = re.compile(_CUE + rf"({_WORDS})(?![A-Za-z0-9_>}}])")
_MAYBE = re.compile(rf"\{{\{{|<[A-Z]|{_WORDS}")   # a string that may hold a blank of any form


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _cued(rows) -> tuple[set[str], set[str]]:
    """The angle-bracketed and the bare capitals the rows use as blanks (after an identity cue somewhere)."""
    texts = [text for row in rows for text in _strings(row) if _MAYBE.search(text)]
    return ({m.group(1) for t in texts for m in ANGLE_CUE.finditer(t)},
            {m.group(1) for t in texts for m in BARE_CUE.finditer(t)})


def _blanks(text: str, angle: set[str], bare: set[str]) -> set[str]:
    found = {"{{" + m.group(1) + "}}" for m in PLACEHOLDER.finditer(text)}
    if angle and "<" in text:
        found |= {m.group(0) for m in ANGLE_BLANK.finditer(text) if m.group(1) in angle}
    if bare:
        found |= {m.group(1) for m in BARE_BLANK.finditer(text) if m.group(1) in bare}
    return found


def placeholders(rows: list[dict]) -> dict[str, int]:
    """Template blanks left in the rows ("I am {{name}}, developed by {{author}}", "<NAME>", or a bare "NAME", as
    identity sets are shipped for their users to fill in): blank, as written ("{{name}}", "<NAME>", "NAME") -> rows
    holding it, most frequent first."""
    angle, bare = _cued(rows)
    found: dict[str, int] = {}
    for row in rows:
        for blank in set().union(*[_blanks(text, angle, bare) for text in _strings(row) if _MAYBE.search(text)]):
            found[blank] = found.get(blank, 0) + 1
    return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def placeholder_note(rows: list[dict]) -> str | None:
    """The sentence a dataset with unfilled template blanks gets in its preview and its run's log."""
    found = placeholders(rows)
    if not found:
        return None
    listed = ", ".join(f"{blank} ({_rows(n)})" for blank, n in list(found.items())[:4])
    return (f"the rows hold unfilled template blanks: {listed}; a model trained on them learns to say them as "
            f"written, so fill them in with your own values (your assistant's name, its maker) when you add the "
            f"file (Fill template blanks, or `studio dataset add --fill name=VALUE`)")


def parse_fill(lines, skip_empty: bool = False) -> dict[str, str]:
    """'blank = value' lines (the Datasets tab's box, or `--fill name=value` options) -> blank -> value; a blank
    is written as in the file ("{{name}}", "<NAME>") or by its bare name. A line with no value is skipped when
    ``skip_empty`` (the box lists the file's blanks for the user to complete); otherwise, and for a line that is
    not a pair, one DatasetError sentence."""
    from .read import DatasetError

    values: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise DatasetError(f"fill line {n} should look like 'name = Zorblax', got '{line.strip()[:60]}'")
        if not value.strip() and skip_empty:
            continue
        values[name.strip()] = value.strip()
    if problem := fill_problem(values):
        raise DatasetError(problem)
    return values


def fill_problem(values: dict) -> str | None:
    """The sentence refusing template-blank values: too many, or one too long (each is copied into every row that
    holds its blank, every time the rows are read); None when they are fine."""
    from ..limits import FILL_VALUE_CHARS, FILL_VALUES

    if len(values) > FILL_VALUES:
        return f"at most {FILL_VALUES} template blanks can be filled for one dataset; {len(values):,} were given"
    for key, value in values.items():
        blank = shown_value(str(key).strip(), 40)
        if len(str(key)) > FILL_VALUE_CHARS:
            return (f"the blank '{blank}' has a name {len(str(key)):,} characters long; a blank's name may be at "
                    f"most {FILL_VALUE_CHARS:,} characters")
        if len(str(value)) > FILL_VALUE_CHARS:
            return (f"the value for '{blank}' is {len(str(value)):,} characters long; a fill value may be at most "
                    f"{FILL_VALUE_CHARS:,} characters (a name, a maker)")
    return None


def shown_value(text: str, limit: int | None = None) -> str:
    """A user's value as a table cell or a message shows it: cut to ``limit`` (SHOWN_VALUE_CHARS) characters."""
    from ..limits import SHOWN_VALUE_CHARS

    limit = limit or SHOWN_VALUE_CHARS
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _inner(blank: str) -> str:
    return blank.strip().removeprefix("{{").removesuffix("}}").strip().removeprefix("<").removesuffix(">").strip()


def _resolve(key: str, found) -> list[str]:
    """The blanks of ``found`` a user's key names: as written ("{{ name }}", "<NAME>", "NAME"), else every blank
    of that name in any form and case ("name" fills {{name}}, <NAME> and NAME)."""
    key = key.strip()
    if m := PLACEHOLDER.fullmatch(key):
        key = "{{" + m.group(1) + "}}"
    if key in found:
        return [key]
    return [b for b in found if _inner(b).lower() == _inner(key).lower()]


def check_fill(records: list[dict], values: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """The blanks ``values`` fills (as the user named them -> value), checked against the rows: each must name a
    blank the rows hold, and each value be plain text. Returns (blank as written in the rows -> value, blank ->
    rows holding it); raises DatasetError in one sentence otherwise."""
    from .read import DatasetError

    if problem := fill_problem(values):  # before any row is read for blanks
        raise DatasetError(problem)
    found = placeholders(records)
    resolved: dict[str, str] = {}
    for key, value in values.items():
        blanks = _resolve(key, found)
        shown = key.strip() if key.strip().startswith(("{{", "<")) or key.strip().isupper() else "{{" + key.strip() + "}}"
        if not blanks:
            held = ", ".join(found) or "none"
            raise DatasetError(f"the rows hold no blank {shown} to fill (their blanks: {held})")
        if not str(value).strip():
            raise DatasetError(f"give a value for {shown}, or leave it out")
        if PLACEHOLDER.search(str(value)) or ANGLE_BLANK.fullmatch(str(value).strip()):
            raise DatasetError(f"the value for {shown} is itself a template blank: give plain text")
        resolved.update({b: str(value).strip() for b in blanks})
    return resolved, {b: found[b] for b in resolved}


def fill_placeholders(value, values: dict[str, str]):
    """``value`` (a row, or anything inside one) with the blanks in ``values`` (as ``check_fill`` resolved them)
    replaced by their values ("{{name}}" and "{{ name }}" alike); blanks not named stay as written."""
    if isinstance(value, str):
        value = PLACEHOLDER.sub(lambda m: values.get("{{" + m.group(1) + "}}", m.group(0)), value)
        if "<" in value:
            value = ANGLE_BLANK.sub(lambda m: values.get(m.group(0), m.group(0)), value)
        return BARE_BLANK.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: fill_placeholders(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, values) for v in value]
    return value


def fill_note(counts: dict[str, int], values: dict[str, str]) -> str:
    """The sentence a dataset whose blanks were filled when it was added gets beside its preview."""
    listed = ", ".join(f"{blank} -> {shown_value(values[blank])!r} ({_rows(n)})" for blank, n in counts.items())
    return f"template blanks filled in as you asked: {listed}; the file itself is kept as uploaded"


def token_stats(tokenizer, rows: list[dict], kind: str, max_length: int) -> dict:
    """Token counts for ``max_length`` with this tokenizer's chat template.

    trained: tokens that carry the loss; masked: tokens read but not trained (prompts, system, tool
    results, turns the file marks not to train); truncated: trained tokens past ``max_length`` that
    truncation would cut (``overlong_rows`` rows). Text is packed into blocks, so nothing is cut.
    Preference rows count the prompt as masked and both replies as trained.
    """
    from .. import render

    trained = masked = truncated = overlong = 0
    if kind == "text":
        trained = sum(len(b) for b in render.pack_text(tokenizer, [r["text"] for r in rows if not r.get("segments")],
                                                        max_length))
        for r in rows:
            if r.get("segments"):
                _, mask = render.encode_segments(tokenizer, r["segments"])
                kept = mask[:max_length]
                trained, masked = trained + sum(kept), masked + len(kept) - sum(kept)
                truncated += sum(mask[max_length:])
                overlong += len(mask) > max_length
    elif kind == "prompt_only":
        masked = sum(len(render.encode_chat(tokenizer, r["prompt"], None, r.get("tools"), prompt_only=True)[0])
                     for r in rows)
    else:
        if kind == "preference":
            conversations = [(r["prompt"] + r[k], r.get("tools")) for r in rows for k in ("chosen", "rejected")]
        else:
            conversations = [(r["messages"], r.get("tools")) for r in sft_rows(kind, rows)[0]]
        for messages, tools in conversations:
            _, mask = render.encode_chat(tokenizer, messages, None, tools)
            kept = mask[:max_length]
            trained += sum(kept)
            masked += len(kept) - sum(kept)
            cut = sum(mask[max_length:])
            truncated += cut
            overlong += len(mask) > max_length
    total = trained + truncated
    return {"trained_tokens": trained, "masked_tokens": masked, "truncated_tokens": truncated,
            "overlong_rows": overlong, "truncated_share": round(truncated / total, 4) if total else 0.0}


def tokenizer_for(base_model: str):
    """The chosen base model's tokenizer (with its chat template), read without torch (studio.tokenizer), or None
    when the model is not on disk yet."""
    from .. import tokenizer
    from ..models import cached_dir

    model_dir = cached_dir(base_model)
    return None if model_dir is None else tokenizer.load(model_dir)


def _conversation(row: dict, kind: str) -> list[dict]:
    """The turns a row's tool schemas go with: the conversation, or the prompt and (first) reply."""
    if kind == "chat":
        return row["messages"]
    return row.get("prompt", []) + row.get("chosen", row.get("completion", []))


def tool_stats(rows: list[dict], kind: str, tokenizer=None, token_rows: int | None = None) -> dict | None:
    """What the rows' tool schemas are: how many rows carry them, the distinct tool names, how many rows call a
    tool, and (with a tokenizer) the tokens the schemas add to a row as this chat template renders them, counted
    over the first ``token_rows`` rows with tools (all by default). None when no row carries schemas."""
    from .. import render

    with_tools = [r for r in rows if r.get("tools")]
    if not with_tools:
        return None
    names = sorted({t["function"]["name"] for r in with_tools for t in r["tools"]})
    calling = sum(any(t.get("tool_calls") for t in _conversation(r, kind)) for r in rows)
    out = {"rows": len(with_tools), "names": names, "distinct_names": len(names), "rows_calling_tools": calling,
           "schema_tokens": None, "schema_tokens_per_row": None}
    if tokenizer is not None:
        counted = with_tools[:token_rows] if token_rows else with_tools
        added = 0
        for r in counted:
            turns = _conversation(r, kind)
            added += (len(tokenizer(render.render_row(tokenizer, turns, r), add_special_tokens=False)["input_ids"])
                      - len(tokenizer(render.render_row(tokenizer, turns, {}), add_special_tokens=False)["input_ids"]))
        per_row = added / len(counted)
        out["schema_tokens"] = added if len(counted) == len(with_tools) else round(per_row * len(with_tools))
        out["schema_tokens_per_row"] = round(per_row, 1)
    return out


def tools_sentence(tools: dict | None) -> str | None:
    """The tool report in one sentence (the preview, `studio dataset check`)."""
    if not tools:
        return None
    shown = ", ".join(tools["names"][:8]) + (f" and {tools['distinct_names'] - 8} more" if tools["distinct_names"] > 8 else "")
    carry = "1 row carries them" if tools["rows"] == 1 else f"{tools['rows']:,} rows carry them"
    call = "1 row calls a tool" if tools["rows_calling_tools"] == 1 else f"{tools['rows_calling_tools']:,} rows call a tool"
    text = (f"tool schemas in the rows: {carry} ({tools['distinct_names']} distinct "
            f"tool{'s' if tools['distinct_names'] != 1 else ''}: {shown}); {call}")
    if tools["schema_tokens"] is not None:
        text += (f"; the schemas add about {tools['schema_tokens_per_row']:,.0f} tokens to a row "
                 f"({tools['schema_tokens']:,} in all)")
    return text
