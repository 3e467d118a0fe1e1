"""Importing an adapter someone else trained: a .zip, a folder or its files, stored under <home>/adapters/<name>/.

    import_adapter(src, name, base)      any adapter type the studio trains (studio.adapter_types), safetensors
                                         only, zip-slip safe, checked against the base's shapes
    safe_extract(zip, dest, max_bytes)   unzip without ever writing outside ``dest``
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import zipfile
import zlib
from pathlib import Path

from .adapter_check import check_against_base
from .adapter_library import ADAPTER_FILES, IMPORTS, META_FILE, TOKENIZER_FILES, AdapterError
from .settings import UnsafePath, check_name, get_settings, shown_mib

PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "pytorch_model.bin")
MAX_ZIP_MEMBERS = 256
# what zipfile raises for a damaged archive: bad headers, bad CRC, bad deflate data, offsets past the end,
# encryption or compression methods it cannot read
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)

PICKLE_SENTENCE = ("this adapter is stored as {file}, a pickle file that can run code when it is loaded; "
                   "only adapter_model.safetensors is imported (convert it with peft: load it where you trust it "
                   "and save_pretrained(..., safe_serialization=True))")


def import_adapter(path_or_zip, name: str, base_model: str) -> Path:
    """Check and store an adapter under <home>/adapters/<name>/; returns that folder.

    ``path_or_zip``: a .zip, a folder, or a list of files (adapter_config.json + adapter_model.safetensors).
    The adapter's own ``base_model_name_or_path`` is ignored: the shapes are checked against ``base_model``,
    which is recorded instead.
    """
    try:
        name = check_name(name, "adapter name")
        target = get_settings().resolve(f"{IMPORTS}/{name}")
    except UnsafePath as exc:
        raise AdapterError(str(exc)) from None
    if not (base_model or "").strip():
        raise AdapterError("choose the base model the adapter was trained on")
    if target.exists():
        raise AdapterError(f"an adapter named '{name}' already exists; choose another name")
    settings = get_settings()
    staging = settings.tmp_dir / f"import-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        source = _gather(path_or_zip, staging / "src", settings.upload_limit_bytes)
        folder = _adapter_root(source)
        report = check_against_base(folder, base_model)
        out = staging / "out"
        out.mkdir()
        for fname in ADAPTER_FILES + TOKENIZER_FILES + ("README.md",):
            src = folder / fname
            if src.is_file() and not src.is_symlink():
                shutil.copyfile(src, out / fname)
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_model  # the user's choice, not the file's claim
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
        label = path_or_zip if not isinstance(path_or_zip, (list, tuple)) else path_or_zip[0]
        meta = {"name": name, "base_model": base_model, "imported_at": time.time(),
                "source": Path(str(label)).name, **report}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gather(path_or_zip, dest: Path, max_bytes: int) -> Path:
    """Put the uploaded material in one folder: extract a zip, copy listed files; a folder is used in place."""
    if isinstance(path_or_zip, (list, tuple)):
        paths = [Path(str(p)) for p in path_or_zip]
        if len(paths) == 1:
            return _gather(paths[0], dest, max_bytes)
        if any(zipfile.is_zipfile(p) for p in paths if p.is_file()):
            raise AdapterError("upload either one .zip or the adapter's files, not both")
        dest.mkdir(parents=True)
        for p in paths:
            if not p.is_file():
                raise AdapterError(f"the file '{p.name}' does not exist")
            shutil.copyfile(p, dest / re.sub(r"[^A-Za-z0-9._-]", "_", p.name).lstrip("."))
        return dest
    path = Path(str(path_or_zip))
    if path.is_dir():
        return path
    if not path.is_file():
        raise AdapterError(f"'{path}' does not exist")
    if zipfile.is_zipfile(path):
        safe_extract(path, dest, max_bytes)
        return dest
    if path.name.endswith(PICKLE_WEIGHTS):
        raise AdapterError(PICKLE_SENTENCE.format(file=path.name))
    raise AdapterError("upload the adapter as a .zip, or both adapter_config.json and adapter_model.safetensors")


def safe_extract(zip_path: Path, dest: Path, max_bytes: int) -> None:
    """Extract a zip without ever writing outside ``dest``: no absolute paths, no '..', no links, bounded size."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except ZIP_ERRORS:
        raise AdapterError("the zip is damaged and cannot be read; nothing was imported") from None
    with zf:
        members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
        if len(members) > MAX_ZIP_MEMBERS:
            raise AdapterError(f"the zip holds {len(members)} entries; an adapter needs a handful")
        total = 0
        for m in members:
            name = m.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            mode = (m.external_attr >> 16) & 0o170000
            target = (root / "/".join(parts)).resolve() if parts else root
            if (name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or mode == 0o120000
                    or not target.is_relative_to(root)):
                raise AdapterError(f"the zip holds an unsafe path '{m.filename}' (a link, or a path that leaves "
                                   "its folder); nothing was imported")
            total += m.file_size
            if total > max_bytes:
                raise AdapterError(f"the zip unpacks to more than {shown_mib(max_bytes)} (the upload limit, "
                                   "STUDIO_UPLOAD_LIMIT_MB)")
        for m in members:
            parts = [p for p in m.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            if not parts:
                continue
            try:
                _unpack(zf, m, root.joinpath(*parts))
            except OSError as exc:  # names that clash (a file where a folder must go) or that the disk refuses
                raise AdapterError(f"cannot unpack '{m.filename[:80]}' from the zip ({exc.strerror or exc}); "
                                   "nothing was imported") from None


def _unpack(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as dst:
        copied = 0
        for chunk in _member_chunks(zf, member):
            copied += len(chunk)
            if copied > member.file_size:
                raise AdapterError(f"'{member.filename}' in the zip is larger than its header says")
            dst.write(chunk)


def _member_chunks(zf: zipfile.ZipFile, member: zipfile.ZipInfo):
    """The bytes of one zip member in 1 MB chunks; a damaged member is an AdapterError."""
    try:
        with zf.open(member) as src:
            while chunk := src.read(1 << 20):
                yield chunk
    except ZIP_ERRORS:
        raise AdapterError(f"'{member.filename[:80]}' in the zip is damaged and cannot be read; "
                           "nothing was imported") from None


def _adapter_root(folder: Path) -> Path:
    """The folder holding adapter_config.json: the upload itself, or its single sub-folder."""
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    for c in candidates:
        if (c / "adapter_config.json").is_file() or any((c / f).is_file() for f in PICKLE_WEIGHTS):
            root = c
            break
    else:
        raise AdapterError("the upload holds no adapter_config.json; is it a peft adapter?")
    if not (root / "adapter_model.safetensors").is_file():
        pickled = next((f for f in PICKLE_WEIGHTS if (root / f).is_file()), None)
        if pickled:
            raise AdapterError(PICKLE_SENTENCE.format(file=pickled))
        raise AdapterError("the upload has no adapter_model.safetensors")
    if not (root / "adapter_config.json").is_file():
        raise AdapterError("the upload has no adapter_config.json next to adapter_model.safetensors")
    return root
