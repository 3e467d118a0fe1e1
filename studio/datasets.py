"""Dataset intake: read a file, detect its format, normalise its rows, explain every problem in one sentence.

Pure Python (json, csv, gzip; pyarrow only for Parquet): the UI process imports this module, so no torch
and no transformers. Nothing here writes anywhere; callers store the file once ``load_file`` accepts it.

Every format becomes one of three row shapes (``kind``):

- chat: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}``
- text: ``{"text": str}``
- preference: ``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}``
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Callable

KINDS = ("chat", "text", "preference")
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text", "preference", "sharegpt_preference")
KIND_OF = {
    "messages": "chat", "sharegpt": "chat", "alpaca": "chat", "prompt_completion": "chat",
    "text": "text", "preference": "preference", "sharegpt_preference": "preference",
}
FORMAT_HINTS = {
    "messages": "messages (a 'messages' list of role/content turns)",
    "sharegpt": "sharegpt (a 'conversations' list of from/value turns)",
    "alpaca": "alpaca (instruction, optional input, output)",
    "prompt_completion": "prompt_completion (prompt, completion)",
    "text": "text (text)",
    "preference": "preference (prompt, chosen, rejected)",
    "sharegpt_preference": "sharegpt_preference (conversations, chosen, rejected)",
}
# the columns each format reads; a row whose columns here are all blank is an empty row
FORMAT_FIELDS = {
    "messages": ("messages", "conversations", "conversation", "system"),
    "sharegpt": ("conversations", "messages", "conversation", "system"),
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "prompt_completion": ("prompt", "completion", "system"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected", "system"),
    "sharegpt_preference": ("conversations", "chosen", "rejected", "system"),
}
CANONICAL_COLUMNS = ("messages", "conversations", "system", "instruction", "input", "output", "history",
                     "prompt", "completion", "text", "chosen", "rejected")
EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
MAX_DEPTH = 64

ROLES = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant", "function_call": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}

_TEXT_WORD = {".json": "JSON", ".jsonl": "JSON Lines", ".csv": "CSV", ".tsv": "TSV", ".txt": "plain"}
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (Excel and Word files are ZIP archives)"),
    (b"\x1f\x8b", "gzip-compressed data (name it with a .gz ending)"),
    (b"PAR1", "a Parquet file (name it .parquet)"),
    (b"\x7fELF", "a program (ELF binary)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
)


class DatasetError(ValueError):
    """One specific human sentence: which row or line, which field, what was expected."""


class _Bad(Exception):
    """The problem of one row, without its row number."""


@dataclass
class LoadedDataset:
    format: str
    kind: str
    rows: list[dict]
    total_rows: int
    dropped: list[str]
    columns: list[str]
    mapping: dict[str, str]
    empty_dropped: int = 0
    duplicates_dropped: int = 0
    bad_dropped: int = 0

    def stats(self) -> dict:
        turns = [_turn_count(row, self.kind) for row in self.rows] or [0]
        return {
            "rows": len(self.rows),
            "total_rows": self.total_rows,
            "turns_min": min(turns),
            "turns_mean": round(mean(turns), 2),
            "turns_max": max(turns),
            "duplicates_dropped": self.duplicates_dropped,
            "empty_dropped": self.empty_dropped,
            "bad_dropped": self.bad_dropped,
        }


def _turn_count(row: dict, kind: str) -> int:
    if kind == "chat":
        return len(row["messages"])
    if kind == "preference":
        return len(row["prompt"]) + 1
    return 1


# ---- reading ---------------------------------------------------------------------------------

def content_hash(path) -> str:
    """sha256 of the file bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_records(path, *, max_bytes: int) -> tuple[list[dict], list[str]]:
    """Raw records (one dict per row) and the columns seen, for every supported file type."""
    path = Path(path)
    name = path.name.lower()
    compressed = name.endswith(".gz")
    base = name[:-3] if compressed else name
    ext = next((e for e in EXTENSIONS if base.endswith(e)), None)
    if ext is None:
        suffix = Path(base).suffix
        shown = (f"{_q(suffix)} files are" if suffix else
                 "'.gz' files that do not name what they hold are" if compressed else "files without an extension are")
        raise DatasetError(f"{shown} not supported; upload one of {', '.join(EXTENSIONS)} (optionally gzip-compressed, "
                           "e.g. .jsonl.gz)")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"the file {_q(path.name)} does not exist") from None
    if path.is_dir():
        raise DatasetError(f"{_q(path.name)} is a folder, not a file")
    if size > max_bytes:
        raise DatasetError(f"the file is {_size(size)}, over the {_size(max_bytes)} limit")
    data = path.read_bytes()
    if compressed:
        if not data:
            raise DatasetError("the file is empty")
        data = _gunzip(data, max_bytes)
    if not data:
        raise DatasetError("the file is empty" + (" after decompression" if compressed else ""))
    if ext == ".parquet":
        return _read_parquet(data, max_bytes)
    word = _TEXT_WORD[ext]
    text = _decode(data, word)
    if not text.strip():
        raise DatasetError("the file contains only whitespace: there are no rows")
    if ext == ".json":
        records = _read_json(text)
    elif ext == ".jsonl":
        records = _read_jsonl(text)
    elif ext in (".csv", ".tsv"):
        return _read_csv(text, word, "\t" if ext == ".tsv" else ",")
    else:
        records = [{"text": doc.strip("\r\n")} for doc in re.split(r"\n(?:[ \t\r\f\v]*\n)+", text) if doc.strip()]
    return records, _columns(records)


def _columns(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    if data[:2] != b"\x1f\x8b":
        raise DatasetError("the file is named .gz but is not gzip-compressed: it does not start with the gzip signature")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(max_bytes + 1)  # never inflate more than the limit: defeats gzip bombs
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DatasetError(f"the gzip data is damaged or truncated ({exc}); compress the file again") from None
    if len(out) > max_bytes:
        raise DatasetError(f"the decompressed size exceeds the limit of {_size(max_bytes)}; "
                           "the .gz file expands to more than that")
    return out


def _decode(data: bytes, word: str) -> str:
    """UTF-8 text, or a sentence saying why these bytes are not text."""
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise DatasetError("the file is UTF-32 encoded; save it as UTF-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError("the file is UTF-16 encoded; save it as UTF-8")
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise DatasetError(f"the file is {what}, not {word} text")
    nul = data.find(b"\x00")
    if nul >= 0:
        sample = data[:8192]
        controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
        try:
            sample.decode("utf-8")
            utf8 = True
        except UnicodeDecodeError as exc:
            utf8 = exc.start >= len(sample) - 3  # a character cut by the sample's end is fine
        if not utf8 or controls > max(4, len(sample) * 0.05):
            raise DatasetError(f"the file looks like binary data (control bytes from byte offset {nul}), not {word} text")
        line = data.count(b"\n", 0, nul) + 1
        raise DatasetError(f"the file contains a NUL byte at byte offset {nul} (line {line}); "
                           "text files cannot contain NUL bytes")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + bom
        line = data.count(b"\n", 0, offset) + 1
        raise DatasetError(f"the file is not valid UTF-8: byte 0x{data[offset]:02X} at byte offset {offset} (line {line}) "
                           "cannot be decoded; save the file as UTF-8") from None


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests lists/objects deeper than ``limit``, without recursion (C-speed string passes)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        if not brackets:
            return False
        inner = brackets.replace("[]", "").replace("{}", "")  # each pass removes one level everywhere
        if inner == brackets:
            return False  # unbalanced: the JSON parser will say where
        brackets = inner
    return bool(brackets)


def _q(value: Any, limit: int = 40) -> str:
    """A name or value from the file, quoted for a one-line sentence: control characters escaped, long ones cut."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


def _names(names: list, limit: int = 20) -> str:
    shown = ", ".join(_q(n) for n in list(names)[:limit]) or "none"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _a(value: Any) -> str:
    """The JSON type of a value with its article: "a string", "an object", "null"."""
    name = _json_type(value)
    return name if name == "null" else ("an " if name[0] in "aeiou" else "a ") + name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false value"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _cut_short(exc: json.JSONDecodeError) -> bool:
    """Whether the JSON text simply stops before the value is complete."""
    rest = exc.doc[exc.pos:]
    return not rest.strip() or (exc.msg.startswith("Unterminated string") and '"' not in rest[1:])


def _json_reason(exc: json.JSONDecodeError) -> str:
    """json's message in our voice: 'expecting ',' delimiter', 'unterminated string', ..."""
    msg = exc.msg.removesuffix(" starting at")
    return msg[0].lower() + msg[1:]


def _json_problem(exc: json.JSONDecodeError) -> str:
    if _cut_short(exc):
        return f"it stops in the middle of a value at line {exc.lineno} (the file looks truncated)"
    return f"{_json_reason(exc)} at line {exc.lineno}, column {exc.colno}"


def _read_json(text: str, fallback: bool = True) -> list[dict]:
    start = text.lstrip()[:1]
    if start not in ('[', '{', '"', '-', 't', 'f', 'n') and not start.isdigit():
        raise DatasetError(f"the file is not JSON: it starts with {_q(start)} where '[' (a list of rows) was expected")
    if _too_deep(text):
        raise DatasetError(f"the JSON nests lists or objects more than {MAX_DEPTH} levels deep; "
                           "rows must be objects of text fields and turn lists")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and fallback:  # JSON Lines saved as .json
            try:
                return _read_jsonl(text, fallback=False)
            except DatasetError:
                pass
        raise DatasetError(f"the file is not valid JSON: {_json_problem(exc)}") from None
    except RecursionError:  # belt and braces: _too_deep already refuses this
        raise DatasetError(f"the JSON nests lists or objects more than {MAX_DEPTH} levels deep") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if _detectable(data):
            data = [data]  # one row saved on its own
        elif len(lists) == 1:
            data = data[lists[0]]
        elif lists:
            raise DatasetError(f"the JSON object holds several lists ({_names(lists)}); keep exactly one list of rows")
        else:
            raise DatasetError(f"the JSON object (keys: {_names(list(data))}) holds no list of rows; "
                               "expected an array of objects such as [{\"messages\": [...]}]")
    if not isinstance(data, list):
        raise DatasetError(f"the file holds a single JSON {_json_type(data)}, not rows; "
                           "expected an array of objects such as [{\"messages\": [...]}]")
    if not data:
        raise DatasetError("the JSON array is empty: there are no rows")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DatasetError(f"row {i} is {_a(row)}, not an object; each row must be an object "
                               "such as {\"text\": \"...\"}")
    return data


def _detectable(record: dict) -> bool:
    try:
        detect_format([record], list(record))
        return True
    except DatasetError:
        return False


def _read_jsonl(text: str, fallback: bool = True) -> list[dict]:
    lines = text.split("\n")
    deep = _too_deep(text)
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if deep and _too_deep(line):
            raise DatasetError(f"line {lineno} nests lists or objects more than {MAX_DEPTH} levels deep")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if fallback and not records and line.lstrip()[:1] in ("[", "{"):
                try:  # a pretty-printed JSON array saved as .jsonl
                    return _read_json(text, fallback=False)
                except DatasetError:
                    pass
            last = not "".join(lines[lineno:]).strip()
            why = ("it stops in the middle of a value (the file looks truncated)" if last and _cut_short(exc)
                   else f"{_json_reason(exc)} at column {exc.colno}")
            raise DatasetError(f"line {lineno} is not valid JSON: {why}") from None
        except RecursionError:
            raise DatasetError(f"line {lineno} nests lists or objects more than {MAX_DEPTH} levels deep") from None
        if not isinstance(row, dict):
            raise DatasetError(f"line {lineno} is {_a(row)}, not an object; each line must hold one "
                               "object such as {\"text\": \"...\"}")
        records.append(row)
    return records


def _read_csv(text: str, word: str, delimiter: str) -> tuple[list[dict], list[str]]:
    csv.field_size_limit(1 << 30)
    first = text.lstrip("\r\n").split("\n", 1)[0]
    if delimiter == "," and "," not in first:
        delimiter = next((d for d in ("\t", ";") if d in first), ",")  # a TSV or semicolon file named .csv
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records: list[dict] = []
    try:
        for cells in reader:
            if not cells:
                continue  # blank line
            if header is None:
                header = [c.strip() or f"column_{i}" for i, c in enumerate(cells, 1)]
                twice = next((c for i, c in enumerate(header) if c in header[:i]), None)
                if twice is not None:
                    raise DatasetError(f"the {word} header names the column {_q(twice)} twice")
                continue
            if len(cells) != len(header):
                raise DatasetError(f"line {reader.line_num} has {len(cells)} fields but the header has "
                                   f"{len(header)} columns; check the quoting and the delimiter on that line")
            records.append(dict(zip(header, cells)))
    except csv.Error as exc:
        raise DatasetError(f"line {reader.line_num} of the {word} file cannot be read: {exc}") from None
    if header is None:
        raise DatasetError(f"the {word} file has no header row")
    if not records:
        raise DatasetError(f"the {word} file has a header ({_names(header)}) but no rows")
    return records, header


def _read_parquet(data: bytes, max_bytes: int) -> tuple[list[dict], list[str]]:
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise DatasetError("the file is not a Parquet file: it does not start and end with the 'PAR1' signature")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"the Parquet file cannot be read ({first}); it may be damaged or truncated") from None
    if table.nbytes > max_bytes:
        raise DatasetError(f"the Parquet data is {_size(table.nbytes)} once read, over the {_size(max_bytes)} limit")
    columns = list(table.column_names)
    if table.num_rows == 0:
        raise DatasetError(f"the Parquet file has the columns {_names(columns)} but no rows")
    return table.to_pylist(), columns


# ---- format detection and column mapping ----------------------------------------------------

_CHAT_KEYS = ("messages", "conversations", "conversation")


def _maybe_json(value: Any) -> Any:
    """A list of turns or an object stored as a JSON string (CSV, some Parquet exports); other values unchanged."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        if _too_deep(value):
            raise _Bad(f"a field nests lists or objects more than {MAX_DEPTH} levels deep")
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
        if isinstance(parsed, dict) or (isinstance(parsed, list) and parsed and all(isinstance(t, dict) for t in parsed)):
            return parsed
    return value


def _blank(value: Any) -> bool:
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


def detect_format(records: list[dict], columns: list[str]) -> str:
    """The format of these rows, from their columns (and the shape of the first non-empty row's turns)."""
    cols = set(columns)
    sample = next((r for r in records if not _blank(r)), records[0] if records else {})
    chat_key = next((k for k in _CHAT_KEYS if k in cols), None)
    if "chosen" in cols or "rejected" in cols:
        if "prompt" not in cols and chat_key is not None:
            return "sharegpt_preference"
        return "preference"
    if chat_key is not None:
        try:
            turns = _maybe_json(sample.get(chat_key)) if isinstance(sample, dict) else None
        except _Bad:
            turns = None
        first = next((t for t in turns if isinstance(t, dict)), None) if isinstance(turns, list) else None
        if first is not None:
            return "sharegpt" if "from" in first and "role" not in first else "messages"
        return "sharegpt" if chat_key == "conversations" else "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "text" in cols:
        return "text"
    raise DatasetError(f"no known dataset format in the columns {_names(columns)}; expected one of: "
                       f"{'; '.join(FORMAT_HINTS.values())}")


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


def _apply_mapping(records: list[dict], columns: list[str], mapping: dict[str, str]) -> tuple[list[dict], list[str]]:
    for source, target in mapping.items():
        if source not in columns:
            raise DatasetError(f"the column mapping names {_q(source)}, which is not a column of the file "
                               f"(columns: {_names(columns)})")
        if target not in CANONICAL_COLUMNS:
            raise DatasetError(f"the column mapping sends {_q(source)} to {_q(target)}, which the studio does not read; "
                               f"use one of {', '.join(CANONICAL_COLUMNS)}")
        if target in columns and target not in mapping:
            raise DatasetError(f"the column mapping renames {_q(source)} to '{target}', but the file already has "
                               f"a '{target}' column")
    targets = list(mapping.values())
    twice = next((t for i, t in enumerate(targets) if t in targets[:i]), None)
    if twice is not None:
        raise DatasetError(f"the column mapping sends two columns to '{twice}'")
    renamed = [{mapping.get(k, k): v for k, v in record.items()} for record in records]
    return renamed, [mapping.get(c, c) for c in columns]


# ---- normalising one row --------------------------------------------------------------------

def _field(row: dict, key: str, what: str = "text") -> Any:
    if key not in row:
        raise _Bad(f"missing the '{key}' field")
    if row[key] is None:
        raise _Bad(f"'{key}' is null; expected {what}")
    return row[key]


def _parts(parts: list, where: str) -> str:
    out = []
    for i, part in enumerate(parts, 1):
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif isinstance(part, dict):
            raise _Bad(f"part {i} of {where} has the type {_q(part.get('type'))}; only text parts are supported")
        else:
            raise _Bad(f"part {i} of {where} is {_a(part)}; expected {{\"type\": \"text\", \"text\": ...}}")
    return "\n".join(out)


def _text(row: dict, key: str, *, required: bool = True) -> str:
    """A text field: a string or a list of text parts; optional fields may be absent, null or empty."""
    if not required and row.get(key) is None:
        return ""
    value = _field(row, key)
    if isinstance(value, list):
        value = _parts(value, f"'{key}'")
    if not isinstance(value, str):
        raise _Bad(f"'{key}' is {_a(value)}; expected text")
    if required and not value.strip():
        raise _Bad(f"'{key}' is empty; expected text")
    return value


def _tool_calls(calls: Any, where: str) -> str:
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise _Bad(f"{where} has 'tool_calls' that is {_a(calls)}; expected a list")
    lines = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else call
        if not isinstance(fn, dict) or "name" not in fn:
            raise _Bad(f"{where} has a tool call without a function name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        lines.append(json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False))
    return "\n".join(lines)


def _turn(turn: Any, where: str) -> dict:
    if not isinstance(turn, dict):
        raise _Bad(f"{where} is {_a(turn)}; expected an object with 'role' and 'content'")
    role = turn.get("role", turn.get("from"))
    if role is None:
        raise _Bad(f"{where} has no 'role' (or 'from') field")
    if not isinstance(role, str):
        raise _Bad(f"{where} has {_a(role)} as its role; expected text such as 'user'")
    mapped = ROLES.get(role.strip().lower())
    if mapped is None:
        raise _Bad(f"{where} has the unknown role {_q(role)}; expected system, user, assistant or tool "
                   "(ShareGPT: system, human, gpt, function_call, observation)")
    key = next((k for k in ("content", "value", "text") if k in turn), None)
    content = turn[key] if key else None
    calls = turn.get("tool_calls") or turn.get("function_call")
    if calls and mapped == "assistant":
        text = _tool_calls(calls, where)
        prefix = _turn_content(content, where, key) if content is not None else ""
        return {"role": mapped, "content": f"{prefix}\n{text}" if prefix.strip() else text}
    if key is None:
        raise _Bad(f"{where} has no 'content' (or 'value') field")
    return {"role": mapped, "content": _turn_content(content, where, key)}


def _turn_content(content: Any, where: str, key: str) -> str:
    if content is None:
        raise _Bad(f"{where} has null '{key}'; expected text")
    if isinstance(content, list):
        return _parts(content, f"the content of {where}")
    if not isinstance(content, str):
        raise _Bad(f"{where} has '{key}' that is {_a(content)}; expected text")
    return content


def _turns(value: Any, key: str) -> list[dict]:
    value = _maybe_json(value)
    if not isinstance(value, list):
        raise _Bad(f"'{key}' is {_a(value)}; expected a list of turns like "
                   "{\"role\": \"user\", \"content\": \"...\"}")
    if not value:
        raise _Bad(f"'{key}' is an empty list")
    out = []
    for i, turn in enumerate(value, 1):
        if type(turn) is dict and "tool_calls" not in turn and "function_call" not in turn:  # the common case, fast
            role = turn["role"] if "role" in turn else turn.get("from")
            content = turn["content"] if "content" in turn else turn.get("value")
            mapped = ROLES.get(role) if type(role) is str else None
            if mapped is not None and type(content) is str:
                out.append({"role": mapped, "content": content})
                continue
        out.append(_turn(turn, f"turn {i} of '{key}'"))
    return out


def _with_system(row: dict, turns: list[dict]) -> list[dict]:
    system = _text(row, "system", required=False)
    if system.strip() and (not turns or turns[0]["role"] != "system"):
        return [{"role": "system", "content": system}] + turns
    return turns


def _need_assistant(turns: list[dict], key: str) -> None:
    if any(t["role"] == "assistant" and t["content"].strip() for t in turns):
        return
    if any(t["role"] == "assistant" for t in turns):
        raise _Bad(f"every assistant turn in '{key}' is empty")
    raise _Bad(f"'{key}' has no assistant turn, so there is nothing to train on")


def _norm_chat(keys: tuple[str, ...]) -> Callable[[dict], dict]:
    def normalise(row: dict) -> dict:
        key = next((k for k in keys if row.get(k) is not None), None)
        if key is None:
            _field(row, next((k for k in keys if k in row), keys[0]), "a list of turns")
        turns = _with_system(row, _turns(row[key], key))
        _need_assistant(turns, key)
        return {"messages": turns}
    return normalise


def _norm_alpaca(row: dict) -> dict:
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    output = _text(row, "output")
    turns: list[dict] = []
    history = _maybe_json(row.get("history"))
    if history not in (None, "", []):
        if not isinstance(history, list):
            raise _Bad(f"'history' is {_a(history)}; expected a list of [user, assistant] pairs")
        for i, pair in enumerate(history, 1):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise _Bad(f"item {i} of 'history' is not a [user, assistant] pair of texts")
            turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": _with_system(row, turns)}


def _norm_prompt_completion(row: dict) -> dict:
    prompt = _maybe_json(_field(row, "prompt", "text or a list of turns"))
    prompt_turns = _turns(prompt, "prompt") if isinstance(prompt, list) else [
        {"role": "user", "content": _text(row, "prompt")}]
    completion = _maybe_json(_field(row, "completion", "text or a list of turns"))
    if isinstance(completion, list):
        completion_turns = _turns(completion, "completion")
        _need_assistant(completion_turns, "completion")
    else:
        completion_turns = [{"role": "assistant", "content": _text(row, "completion")}]
    return {"messages": _with_system(row, prompt_turns + completion_turns)}


def _reply(row: dict, key: str) -> str | list[dict]:
    """chosen/rejected: text, one turn object, or a list of turns (which may repeat the prompt)."""
    if key not in row:
        raise _Bad(f"missing the '{key}' field; a preference row needs a prompt, chosen and rejected")
    value = _maybe_json(_field(row, key, "text or an assistant turn"))
    if isinstance(value, dict):
        turn = _turn(value, f"'{key}'")
        if turn["role"] != "assistant":
            raise _Bad(f"'{key}' has the role '{turn['role']}'; expected an assistant reply")
        return turn["content"]
    if isinstance(value, list):
        return _turns(value, key)
    return _text(row, key)


def _norm_preference(prompt_keys: tuple[str, ...]) -> Callable[[dict], dict]:
    def normalise(row: dict) -> dict:
        prompt_key = next((k for k in prompt_keys if k in row), prompt_keys[0])
        chosen, rejected = _reply(row, "chosen"), _reply(row, "rejected")
        if chosen == rejected:
            raise _Bad("'chosen' and 'rejected' are identical, so the pair teaches nothing")
        prompt: list[dict] = []
        if prompt_key in row:
            value = _maybe_json(_field(row, prompt_key, "text or a list of turns"))
            prompt = _turns(value, prompt_key) if isinstance(value, list) else [
                {"role": "user", "content": _text(row, prompt_key)}]
        if isinstance(chosen, list) and isinstance(rejected, list):
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            if shared:  # the conversation before the replies is the prompt (implicit or repeated)
                prompt = chosen[:shared]
            chosen, rejected = chosen[shared:], rejected[shared:]
        elif prompt:
            for key, value in (("chosen", chosen), ("rejected", rejected)):
                if isinstance(value, list) and value[:len(prompt)] == prompt:
                    if key == "chosen":
                        chosen = value[len(prompt):]
                    else:
                        rejected = value[len(prompt):]
        if not prompt:
            raise _Bad(f"missing the '{prompt_key}' field; a preference row needs {prompt_key}, chosen and rejected")
        if not any(t["content"].strip() for t in prompt):
            raise _Bad(f"'{prompt_key}' is empty")
        texts = {}
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(value, list):
                if len(value) != 1 or value[0]["role"] != "assistant":
                    raise _Bad(f"'{key}' should hold one assistant reply after the prompt, found "
                               f"{len(value)} turn{'s' if len(value) != 1 else ''}")
                value = value[0]["content"]
            if not value.strip():
                raise _Bad(f"'{key}' is empty; expected the {key} reply")
            texts[key] = value
        if texts["chosen"] == texts["rejected"]:
            raise _Bad("'chosen' and 'rejected' are identical, so the pair teaches nothing")
        return {"prompt": _with_system(row, prompt),
                "chosen": [{"role": "assistant", "content": texts["chosen"]}],
                "rejected": [{"role": "assistant", "content": texts["rejected"]}]}
    return normalise


def _norm_text(row: dict) -> dict:
    return {"text": _text(row, "text")}


_NORMALISERS: dict[str, Callable[[dict], dict]] = {
    "messages": _norm_chat(("messages", "conversations", "conversation")),
    "sharegpt": _norm_chat(("conversations", "messages", "conversation")),
    "alpaca": _norm_alpaca,
    "prompt_completion": _norm_prompt_completion,
    "text": _norm_text,
    "preference": _norm_preference(("prompt",)),
    "sharegpt_preference": _norm_preference(_CHAT_KEYS),
}


# ---- the whole file -------------------------------------------------------------------------

def load_file(path, *, format: str | None = None, mapping: dict | None = None, drop_bad: bool = False,
              max_bytes: int = 1 << 30) -> LoadedDataset:
    """Read, detect (or take ``format``), map columns, normalise, drop empty rows and exact duplicates.

    Bad rows raise DatasetError naming the first one, unless ``drop_bad`` keeps the good rows and lists
    the reasons in ``dropped``. Raises DatasetError when nothing usable remains.
    """
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown dataset format {_q(format)}; choose one of {', '.join(FORMATS)}")
    records, columns = read_records(path, max_bytes=max_bytes)
    used: dict[str, str] = {}
    rows_in, cols_in = records, columns
    if mapping:
        used = {str(k): str(v) for k, v in mapping.items() if str(k) != str(v)}
        rows_in, cols_in = _apply_mapping(records, columns, used)
    try:
        detected = detect_format(rows_in, cols_in)
    except DatasetError:
        proposal = {} if mapping else propose_mapping(columns)
        mapped = _apply_mapping(records, columns, proposal) if proposal else None
        if mapped is None or not _detects(mapped, format):
            if format is None:
                raise
            detected = None
        else:
            used, (rows_in, cols_in) = proposal, mapped
            detected = detect_format(rows_in, cols_in)
    fmt = format or detected
    normalise = _NORMALISERS[fmt]
    fields = FORMAT_FIELDS[fmt]

    rows: list[dict] = []
    dropped: list[tuple[int, str]] = []
    bad: list[tuple[int, str]] = []
    seen: dict[Any, int] = {}
    empty = duplicates = 0
    for i, record in enumerate(rows_in, 1):
        present = [record[k] for k in fields if k in record]
        if _blank(present or list(record.values())):
            dropped.append((i, f"row {i}: empty row"))
            empty += 1
            continue
        try:
            row = normalise(record)
        except _Bad as exc:
            bad.append((i, f"row {i}: {exc}"))
            continue
        key = _row_key(row)
        if key in seen:
            dropped.append((i, f"row {i}: exact duplicate of row {seen[key]}"))
            duplicates += 1
            continue
        seen[key] = i
        rows.append(row)

    total = len(records)
    if bad and not rows:
        more = f"; none of the {total} rows is usable" if total > 1 else ""
        raise DatasetError(f"{bad[0][1]}{more}")
    if bad and not drop_bad:
        verb = "has" if len(bad) == 1 else "have"
        raise DatasetError(f"{bad[0][1]} ({len(bad)} of {total} rows {verb} problems: fix them, or choose "
                           "'drop bad rows' to skip them)")
    if not rows:
        raise DatasetError(f"all {total} rows are empty: every field they hold is blank or null" if total > 1
                           else "the only row is empty: every field it holds is blank or null")
    return LoadedDataset(
        format=fmt, kind=KIND_OF[fmt], rows=rows, total_rows=total,
        dropped=[reason for _, reason in sorted(dropped + bad)], columns=list(columns), mapping=used,
        empty_dropped=empty, duplicates_dropped=duplicates, bad_dropped=len(bad),
    )


def _row_key(row: dict) -> Any:
    """A hashable form of a normalised row, equal exactly when the rows are."""
    if "text" in row:
        return row["text"]
    return tuple(tuple((m["role"], m["content"]) for m in row[k]) for k in ("messages", "prompt", "chosen", "rejected")
                 if k in row)


def _detects(mapped: tuple[list[dict], list[str]], wanted: str | None) -> bool:
    try:
        found = detect_format(*mapped)
    except DatasetError:
        return False
    return wanted is None or found == wanted
