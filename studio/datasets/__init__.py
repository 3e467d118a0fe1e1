"""Dataset intake: ``load_file`` reads a file (``read``: files -> records), detects its format and normalises
its rows (``formats``: a registry of formats, each ``detect`` + ``normalise``), maps columns, drops empty rows
and exact duplicates; ``stats`` counts turns and tokens. Every problem is one sentence naming the row or line.

torch-free at import and at run time: the UI process uses this package, and the token counts of a preview
take the light tokenizer of studio.tokenizer (any object with a chat template and ``__call__`` will do).
Nothing here writes anywhere; callers store the file once ``load_file`` accepts it. The row shapes are
described in ``formats``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .formats import (BY_NAME, CANONICAL_COLUMNS, FORMAT_FIELDS, FORMAT_HINTS, FORMATS, KIND_OF, KINDS, REGISTRY,
                      ROLES, BadRow, Format, apply_mapping, detect_format, is_blank, media_column, one_row,
                      propose_mapping, sft_rows)
from .read import EXTENSIONS, MAX_DEPTH, DatasetError, Records, content_hash, read_file, read_records, split_documents
from .read import quote
from .stats import check_fill, fill_note, fill_placeholders, placeholder_note, token_stats, turn_stats

__all__ = ["BY_NAME", "CANONICAL_COLUMNS", "EXTENSIONS", "FORMATS", "FORMAT_FIELDS", "FORMAT_HINTS", "KINDS", "KIND_OF",
           "MAX_DEPTH", "REGISTRY", "ROLES", "DatasetError", "Format", "LoadedDataset", "Records", "content_hash",
           "detect_format", "load_file", "media_column", "propose_mapping", "read_file", "read_records", "sft_rows",
           "split_documents", "token_stats"]


@dataclass
class LoadedDataset:
    format: str
    kind: str
    rows: list[dict]
    total_rows: int
    dropped: list[str]
    columns: list[str]
    mapping: dict[str, str]
    fill: dict[str, str] = field(default_factory=dict)  # template blank -> the value the user filled it with
    empty_dropped: int = 0
    duplicates_dropped: int = 0
    bad_dropped: int = 0
    media_dropped: int = 0
    notes: list[str] = field(default_factory=list)  # how the file was read, in sentences (shown with the preview)

    def dropped_sentence(self) -> str | None:
        """How many rows were left out and why, in one sentence (a run's log); None when every row is used."""
        parts = [f"{n} {what}" for n, what in ((self.bad_dropped, "bad"), (self.empty_dropped, "empty"),
                                               (self.duplicates_dropped, "exact duplicates"),
                                               (self.media_dropped, "with pictures, video or audio")) if n]
        if not parts:
            return None
        first = next((d for d in self.dropped if "empty row" not in d and "duplicate" not in d), self.dropped[0])
        return (f"{len(self.rows)} of {self.total_rows} rows used; left out: {', '.join(parts)} (first: {first})")

    def stats(self) -> dict:
        return {
            "rows": len(self.rows),
            "total_rows": self.total_rows,
            **turn_stats(self.rows, self.kind),
            "duplicates_dropped": self.duplicates_dropped,
            "empty_dropped": self.empty_dropped,
            "bad_dropped": self.bad_dropped,
            "media_dropped": self.media_dropped,
        }


def load_file(path, *, format: str | None = None, mapping: dict | None = None, drop_bad: bool = False,
              max_bytes: int = 1 << 30, fill: dict | None = None) -> LoadedDataset:
    """Read, detect (or take ``format``), map columns, normalise, drop empty rows and exact duplicates.

    ``fill`` (template blank -> value): the rows' "{{name}}" blanks filled in as read, as the user asked when
    adding the file (identity sets are shipped as templates); the file itself is never rewritten.

    Bad rows raise DatasetError naming the first one, unless ``drop_bad`` keeps the good rows and lists
    the reasons in ``dropped``. Rows with pictures, video or audio are never read as text: they are bad rows
    (one sentence naming the column and how many). Raises DatasetError when nothing usable remains.
    """
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown dataset format {quote(format)}; choose one of {', '.join(FORMATS)}")
    read = read_file(path, max_bytes=max_bytes, one_row=one_row)
    records, columns = read.rows, read.columns
    fill, filled = check_fill(records, {str(k): str(v) for k, v in fill.items()}) if fill else ({}, {})
    if fill:
        records = [fill_placeholders(r, fill) for r in records]
    used: dict[str, str] = {}
    rows_in, cols_in = records, columns
    if mapping:
        used = {str(k): str(v) for k, v in mapping.items() if str(k) != str(v)}
        rows_in, cols_in = apply_mapping(records, columns, used)
    try:
        detected = detect_format(rows_in, cols_in)
    except DatasetError:
        proposal = {} if mapping else propose_mapping(columns)
        mapped = apply_mapping(records, columns, proposal) if proposal else None
        if mapped is None or not _detects(mapped, format):
            if format is None:
                raise
            detected = None
        else:
            used, (rows_in, cols_in) = proposal, mapped
            detected = detect_format(rows_in, cols_in)
    fmt = BY_NAME[format or detected]

    rows: list[dict] = []
    dropped: list[tuple[int, str]] = []
    bad: list[tuple[int, str]] = []
    media: list[tuple[int, str]] = []
    seen: dict[Any, int] = {}
    empty = duplicates = 0
    for i, record in enumerate(rows_in, 1):
        present = [record[k] for k in fmt.fields if k in record]
        if is_blank(present or list(record.values())):
            dropped.append((i, f"row {i}: empty row"))
            empty += 1
            continue
        column = media_column(record)
        if column is not None:
            media.append((i, column))
            continue
        try:
            row = fmt.normalise(record)
        except BadRow as exc:
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
    if media and (not drop_bad or not rows):
        raise DatasetError(_media_sentence(media, total) + (": fix or remove them, or drop those rows (tick 'Drop "
                                                            "bad rows' in the Datasets tab, or --drop-bad-rows)"
                                                            if rows else ""))
    if bad and not rows:
        more = f"; none of the {total} rows is usable" if total > 1 else ""
        raise DatasetError(f"{bad[0][1]}{more}")
    if bad and not drop_bad:
        verb = "has" if len(bad) == 1 else "have"
        raise DatasetError(f"{bad[0][1]} ({len(bad)} of {total} rows {verb} problems: fix them, or drop the bad "
                           "rows to train on the rest: tick 'Drop bad rows' in the Datasets tab, or add "
                           "--drop-bad-rows to `studio dataset add`)")
    if not rows:
        raise DatasetError(f"all {total} rows are empty: every field they hold is blank or null" if total > 1
                           else "the only row is empty: every field it holds is blank or null")
    notes = [read.note] if read.note else []
    if media:
        notes.append(f"{len(media)} rows with pictures, video or audio were dropped ({_media_sentence(media, total)})")
    notes += [n for n in [sft_rows(fmt.kind, rows)[1], fill_note(filled, fill) if fill else None,
                          placeholder_note(rows)] if n]
    return LoadedDataset(
        format=fmt.name, kind=fmt.kind, rows=rows, total_rows=total,
        dropped=[reason for _, reason in sorted(dropped + bad + [(i, f"row {i}: holds media in {quote(c)}")
                                                                  for i, c in media])],
        columns=list(columns), mapping=used, fill=fill, empty_dropped=empty, duplicates_dropped=duplicates,
        bad_dropped=len(bad), media_dropped=len(media), notes=notes,
    )


def _media_sentence(media: list[tuple[int, str]], total: int) -> str:
    columns = list(dict.fromkeys(c for _, c in media))
    where = " and ".join(quote(c) for c in columns)
    return (f"{len(media)} of {total} rows hold pictures, video or audio (in {where}), and the studio trains "
            "text-only models, so they cannot be trained as text without them")


def _row_key(row: dict) -> Any:
    """A hashable form of a normalised row, equal exactly when the rows are."""
    if "text" in row and "segments" not in row:
        return row["text"]
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _detects(mapped: tuple[list[dict], list[str]], wanted: str | None) -> bool:
    try:
        found = detect_format(*mapped)
    except DatasetError:
        return False
    return wanted is None or found == wanted
