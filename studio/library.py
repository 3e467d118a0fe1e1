"""The dataset library: files stored once under the data directory (keyed by content hash), with a
database row holding format, mapping and statistics. Validation happens before anything is written."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

from . import db
from .datasets import DatasetError, LoadedDataset, content_hash, load_file
from .settings import check_name, get_settings, shown_mib


def _safe_filename(filename: str) -> str:
    base = os.path.basename(filename.replace("\\", "/")) or "data"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "data"
    return base[:120]


def _default_name(filename: str) -> str:
    stem = _safe_filename(filename)
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_") or "dataset"
    return stem[:56]


def inspect(path: str | os.PathLike, *, filename: str | None = None, format: str | None = None,
            mapping: dict | None = None, drop_bad: bool = False, fill: dict | None = None) -> LoadedDataset:
    """Read and validate without storing anything (the preview and `studio dataset check`)."""
    settings = get_settings()
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"the file '{filename or path.name}' does not exist")
    size = path.stat().st_size
    if size > settings.upload_limit_bytes:
        raise DatasetError(f"the file is {shown_mib(size)}, over the upload limit of {settings.upload_limit_text} "
                           "(STUDIO_UPLOAD_LIMIT_MB)")
    if filename and Path(filename).suffix.lower() != path.suffix.lower():
        # gradio keeps the original name; make sure the extension the reader sees is the user's
        tmp = settings.tmp_dir / f"inspect-{content_hash(path)[:16]}-{_safe_filename(filename)}"
        shutil.copyfile(path, tmp)
        try:
            return load_file(tmp, format=format, mapping=mapping, drop_bad=drop_bad,
                             max_bytes=settings.upload_limit_bytes, fill=fill)
        finally:
            tmp.unlink(missing_ok=True)
    return load_file(path, format=format, mapping=mapping, drop_bad=drop_bad, max_bytes=settings.upload_limit_bytes,
                     fill=fill)


def add(path: str | os.PathLike, *, name: str | None = None, filename: str | None = None,
        format: str | None = None, mapping: dict | None = None, drop_bad: bool = False,
        fill: dict | None = None, notes: list | None = None) -> tuple[db.DatasetRecord, bool]:
    """Validate, then store the file and its row. Returns (record, created); a re-upload of the same
    bytes, read the same way, returns the existing record. ``fill``: template blanks to fill in as the rows are
    read (the file is stored as uploaded; the record keeps the values). ``notes``, when given, receives the
    sentences the preview shows about how the rows were read."""
    settings = get_settings()
    path = Path(path)
    filename = _safe_filename(filename or path.name)
    name = check_name(name or _default_name(filename), "dataset name")
    data = inspect(path, filename=filename, format=format, mapping=mapping, drop_bad=drop_bad, fill=fill)
    if notes is not None:
        notes.extend(data.notes)
    sha = content_hash(path)
    existing = db.find_dataset_by_hash(sha)
    if (existing is not None and existing.format == data.format and existing.mapping == (data.mapping or {})
            and existing.fill == data.fill):
        return existing, False
    if db.get_dataset(name) is not None:
        raise DatasetError(f"a dataset named '{name}' already exists; choose another name")
    folder = settings.datasets_dir / sha[:16]
    target = folder / filename
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{filename}.part"
    try:
        shutil.copyfile(path, tmp)
        tmp.replace(target)
        rec = db.DatasetRecord(name=name, filename=filename, path=settings.relative(target), sha256=sha,
                               format=data.format, kind=data.kind, rows=len(data.rows),
                               stats_json=json.dumps(data.stats()), mapping_json=json.dumps(data.mapping or {}),
                               fill_json=json.dumps(data.fill, ensure_ascii=False))
        with db.session() as s:
            s.add(rec)
            s.commit()
            s.refresh(rec)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if target.exists() and db.find_dataset_by_hash(sha) is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return rec, True


def load(name: str) -> LoadedDataset:
    rec = db.get_dataset(name)
    if rec is None:
        raise DatasetError(f"there is no dataset named '{name}'")
    return load_record(rec)


def load_record(rec: db.DatasetRecord) -> LoadedDataset:
    """A stored dataset's rows, read as when it was added (its format, column mapping and filled blanks)."""
    return load_file(get_settings().resolve(rec.path), format=rec.format, mapping=rec.mapping or None, drop_bad=True,
                     fill=rec.fill or None)


def delete(name: str) -> None:
    rec = db.get_dataset(name)
    if rec is None:
        raise DatasetError(f"there is no dataset named '{name}'")
    users = [j.name for j in db.list_jobs(db.ACTIVE) if j.spec.get("dataset") in (rec.name, rec.id)]
    if users:
        raise DatasetError(f"the dataset '{name}' is used by the active run(s) {', '.join(users)}")
    settings = get_settings()
    with db.session() as s:
        row = s.get(db.DatasetRecord, rec.id)
        s.delete(row)
        s.commit()
    if db.find_dataset_by_hash(rec.sha256) is None:
        shutil.rmtree(settings.resolve(rec.path).parent, ignore_errors=True)


def split_rows(rows: list[dict], eval_split: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): the seeded split training uses, so evaluation can find the same held-out rows."""
    if eval_split <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_split)))
    eval_idx = set(order[:n_eval])
    return ([r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx])
