"""Reading dataset files: bytes on disk -> raw records (one dict per row) and their columns.

Pure Python (json, csv, gzip; pyarrow only for Parquet). Every problem with the file itself is one
sentence naming the line, byte or field. Nothing here knows about formats; ``formats`` reads the records.
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
from typing import Any, Callable

EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
MAX_DEPTH = 64

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




# ---- reading ---------------------------------------------------------------------------------

def content_hash(path) -> str:
    """sha256 of the file bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

@dataclass
class Records:
    """What a file holds: raw rows, their columns, and for plain text how it was split into documents."""
    rows: list[dict]
    columns: list[str]
    note: str = ""


def read_records(path, *, max_bytes: int,
                 one_row: Callable[[dict], bool] | None = None) -> tuple[list[dict], list[str]]:
    """Raw records (one dict per row) and the columns seen, for every supported file type."""
    read = read_file(path, max_bytes=max_bytes, one_row=one_row)
    return read.rows, read.columns


def read_file(path, *, max_bytes: int, one_row: Callable[[dict], bool] | None = None) -> Records:
    """Raw records, columns and (plain text) how the documents were split. ``one_row``: whether a JSON file's
    lone object is itself a row (the caller asks the format registry); without it only its list of rows counts."""
    path = Path(path)
    name = path.name.lower()
    compressed = name.endswith(".gz")
    base = name[:-3] if compressed else name
    ext = next((e for e in EXTENSIONS if base.endswith(e)), None)
    if ext is None:
        suffix = Path(base).suffix
        shown = (f"{quote(suffix)} files are" if suffix else
                 "'.gz' files that do not name what they hold are" if compressed else "files without an extension are")
        raise DatasetError(f"{shown} not supported; upload one of {', '.join(EXTENSIONS)} (optionally gzip-compressed, "
                           "e.g. .jsonl.gz)")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"the file {quote(path.name)} does not exist") from None
    if path.is_dir():
        raise DatasetError(f"{quote(path.name)} is a folder, not a file")
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
        return Records(*_read_parquet(data, max_bytes))
    word = _TEXT_WORD[ext]
    text = _decode(data, word)
    if not text.strip():
        raise DatasetError("the file contains only whitespace: there are no rows")
    if ext in (".csv", ".tsv"):
        return Records(*_read_csv(text, word, "\t" if ext == ".tsv" else ","))
    if ext == ".txt":
        docs, note = split_documents(text)
        return Records([{"text": doc} for doc in docs], ["text"], note)
    records = _read_json(text, one_row=one_row) if ext == ".json" else _read_jsonl(text, one_row=one_row)
    return Records(records, _columns(records))


LONG_LINE = 1000  # characters: lines this long, with no blank lines between them, are documents of their own


def split_documents(text: str) -> tuple[list[str], str]:
    """A plain-text file as documents, and one sentence saying how it was split: at blank lines, or one
    document per line when no blank line separates lines that are long (a corpus saved one article a line)."""
    docs = [d.strip("\r\n") for d in re.split(r"\n(?:[ \t\r\f\v]*\n)+", text) if d.strip()]
    if len(docs) == 1:
        lines = [line.strip("\r") for line in text.split("\n") if line.strip()]
        if len(lines) > 1 and sum(map(len, lines)) / len(lines) >= LONG_LINE:
            return lines, (f"{len(lines)} documents, one per line (no blank lines separate the lines, which "
                           f"average {sum(map(len, lines)) // len(lines):,} characters)")
        return docs, "1 document (the whole file: no blank lines separate it into documents)"
    return docs, f"{len(docs)} documents, separated by blank lines"


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


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
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


def quote(value: Any, limit: int = 40) -> str:
    """A name or value from the file, quoted for a one-line sentence: control characters escaped, long ones cut."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


def name_list(names: list, limit: int = 20) -> str:
    shown = ", ".join(quote(n) for n in list(names)[:limit]) or "none"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def kind_of(value: Any) -> str:
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


def _read_json(text: str, fallback: bool = True, one_row: Callable[[dict], bool] | None = None) -> list[dict]:
    start = text.lstrip()[:1]
    if start not in ('[', '{', '"', '-', 't', 'f', 'n') and not start.isdigit():
        raise DatasetError(f"the file is not JSON: it starts with {quote(start)} "
                           "where '[' (a list of rows) was expected")
    if too_deep(text):
        raise DatasetError(f"the JSON nests lists or objects more than {MAX_DEPTH} levels deep; "
                           "rows must be objects of text fields and turn lists")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and fallback:  # JSON Lines saved as .json
            try:
                return _read_jsonl(text, fallback=False, one_row=one_row)
            except DatasetError:
                pass
        raise DatasetError(f"the file is not valid JSON: {_json_problem(exc)}") from None
    except RecursionError:  # belt and braces: too_deep already refuses this
        raise DatasetError(f"the JSON nests lists or objects more than {MAX_DEPTH} levels deep") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if one_row is not None and one_row(data):
            data = [data]  # one row saved on its own
        elif len(lists) == 1:
            data = data[lists[0]]
        elif lists:
            raise DatasetError(f"the JSON object holds several lists ({name_list(lists)}); "
                               "keep exactly one list of rows")
        else:
            raise DatasetError(f"the JSON object (keys: {name_list(list(data))}) holds no list of rows; "
                               "expected an array of objects such as [{\"messages\": [...]}]")
    if not isinstance(data, list):
        raise DatasetError(f"the file holds a single JSON {_json_type(data)}, not rows; "
                           "expected an array of objects such as [{\"messages\": [...]}]")
    if not data:
        raise DatasetError("the JSON array is empty: there are no rows")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DatasetError(f"row {i} is {kind_of(row)}, not an object; each row must be an object "
                               "such as {\"text\": \"...\"}")
    return data


def _read_jsonl(text: str, fallback: bool = True, one_row: Callable[[dict], bool] | None = None) -> list[dict]:
    lines = text.split("\n")
    deep = too_deep(text)
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if deep and too_deep(line):
            raise DatasetError(f"line {lineno} nests lists or objects more than {MAX_DEPTH} levels deep")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if fallback and not records and line.lstrip()[:1] in ("[", "{"):
                try:  # a pretty-printed JSON array saved as .jsonl
                    return _read_json(text, fallback=False, one_row=one_row)
                except DatasetError:
                    pass
            last = not "".join(lines[lineno:]).strip()
            why = ("it stops in the middle of a value (the file looks truncated)" if last and _cut_short(exc)
                   else f"{_json_reason(exc)} at column {exc.colno}")
            raise DatasetError(f"line {lineno} is not valid JSON: {why}") from None
        except RecursionError:
            raise DatasetError(f"line {lineno} nests lists or objects more than {MAX_DEPTH} levels deep") from None
        if not isinstance(row, dict):
            raise DatasetError(f"line {lineno} is {kind_of(row)}, not an object; each line must hold one "
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
                    raise DatasetError(f"the {word} header names the column {quote(twice)} twice")
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
        raise DatasetError(f"the {word} file has a header ({name_list(header)}) but no rows")
    return records, header


def _read_parquet(data: bytes, max_bytes: int) -> tuple[list[dict], list[str]]:
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise DatasetError("the file is not a Parquet file: it does not start and end with the 'PAR1' signature")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        size, columns = table.nbytes, list(table.column_names)  # both decode the schema's column names
    except UnicodeDecodeError:
        raise DatasetError("the Parquet file's column names are not UTF-8 text; it may be damaged") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"the Parquet file cannot be read ({first[:80]}); it may be damaged or truncated") from None
    if size > max_bytes:
        raise DatasetError(f"the Parquet data is {_size(size)} once read, over the {_size(max_bytes)} limit")
    if table.num_rows == 0:
        raise DatasetError(f"the Parquet file has the columns {name_list(columns)} but no rows")
    try:
        return table.to_pylist(), columns
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise DatasetError(f"the Parquet file's values cannot be read ({str(exc)[:80]}); it may be damaged") from None

