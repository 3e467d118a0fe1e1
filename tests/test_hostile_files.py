"""Hostile adapter files: malformed safetensors headers and adapter_config.json fields get one sentence
from the import and leave nothing behind (no folder under adapters/, no staging left in tmp/, no listing)."""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from adapter_fixtures import make_adapter


def _split(weights: Path) -> tuple[dict, bytes]:
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _write(weights: Path, header: bytes, data: bytes) -> None:
    weights.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _shape_is_a_number(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    header, data = _split(weights)
    header[_first_tensor(header)]["shape"] = 5
    _write(weights, json.dumps(header).encode(), data)


def _deeply_nested_header(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    _, data = _split(weights)
    depth = 100_000
    _write(weights, b'{"x": ' + b"[" * depth + b"]" * depth + b"}", data)


def _offsets_reversed(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    header, data = _split(weights)
    begin, end = header[_first_tensor(header)]["data_offsets"]
    header[_first_tensor(header)]["data_offsets"] = [end, begin]
    _write(weights, json.dumps(header).encode(), data)


def _dtype_not_a_string(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    header, data = _split(weights)
    header[_first_tensor(header)]["dtype"] = ["F32"]
    _write(weights, json.dumps(header).encode(), data)


def _config(**fields):
    def edit(folder: Path) -> None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return edit


HOSTILE = {
    "shape is a number": (_shape_is_a_number, "adapter_model.safetensors"),
    "header nested 100000 deep": (_deeply_nested_header, "adapter_model.safetensors"),
    "data_offsets reversed": (_offsets_reversed, "adapter_model.safetensors"),
    "dtype not a string": (_dtype_not_a_string, "adapter_model.safetensors"),
    "target_modules nested list": (_config(target_modules=[["q_proj"]]), "target_modules"),
    "r a list": (_config(r=[4]), "'r'"),
    "r zero": (_config(r=0), "'r'"),
    "lora_alpha a string": (_config(lora_alpha="16"), "lora_alpha"),
    "rank_pattern a list": (_config(rank_pattern=[4]), "rank_pattern"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("as_zip", [False, True], ids=["files", "zip"])
def test_malformed_adapter_is_refused_in_one_sentence_and_nothing_is_written(tiny_model_dir, studio_home, tmp_path,
                                                                             case, as_zip):
    from studio import adapter_import, adapter_library

    folder = make_adapter(tiny_model_dir, tmp_path / "hostile", 1)
    spoil, mentions = HOSTILE[case]
    spoil(folder)
    upload = [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
    if as_zip:
        upload = tmp_path / "hostile.zip"
        with zipfile.ZipFile(upload, "w") as zf:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                zf.write(folder / name, name)
    with pytest.raises(adapter_library.AdapterError) as caught:
        adapter_import.import_adapter(upload, "hostile", str(tiny_model_dir))
    message = str(caught.value)
    assert mentions in message and "\n" not in message and len(message) < 300, message
    assert not (studio_home / "adapters" / "hostile").exists()
    assert not list((studio_home / "tmp").iterdir())
    assert adapter_library.list_adapters() == []


def test_the_import_form_shows_the_sentence_not_a_bare_error(tiny_model_dir, studio_home, tmp_path):
    from studio.ui import adapters_tab

    folder = make_adapter(tiny_model_dir, tmp_path / "hostile", 1)
    _config(target_modules=[["q_proj"]])(folder)
    note, *_ = adapters_tab.on_import([str(folder / "adapter_config.json"), str(folder / "adapter_model.safetensors")],
                                      "hostile", str(tiny_model_dir))
    assert note.startswith("**Error:**") and "target_modules" in note
    assert not (studio_home / "adapters" / "hostile").exists()


def test_an_oversized_safetensors_header_is_refused_without_reading_it(tiny_model_dir, studio_home, tmp_path):
    from studio import adapter_import, adapter_library

    folder = make_adapter(tiny_model_dir, tmp_path / "hostile", 1)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(adapter_library.AdapterError, match="adapter_model.safetensors"):
        adapter_import.import_adapter(folder, "hostile", str(tiny_model_dir))
    assert not (studio_home / "adapters" / "hostile").exists()


# ---- the base-model field: local folders only from the model roots --------------------------------

def _outside_roots_sentence(ref: str) -> str:
    from studio.models import ModelError, check_model

    with pytest.raises(ModelError) as caught:
        check_model(ref)
    return str(caught.value)


def test_paths_outside_the_model_roots_get_one_sentence_whether_they_exist_or_not(studio_home, monkeypatch):
    from studio import settings

    monkeypatch.setenv("STUDIO_MODEL_ROOTS", "")  # the default roots: models/ and the hub cache
    settings.reset_settings()
    answers = {ref: _outside_roots_sentence(ref)
               for ref in ("/usr", "/nonexistent", "/etc/passwd", "~", "../../..", "/tmp", str(studio_home))}
    assert len(set(answers.values())) == 1, answers
    sentence = answers["/usr"]
    assert "inside one of the model roots" in sentence and "STUDIO_MODEL_ROOTS" in sentence
    assert "models" in sentence and str(studio_home) not in sentence  # the roots, shown relative to the data dir
    escapes = {_outside_roots_sentence(f"models/../../../{name}").replace(name, "") for name in ("usr", "nonexistent")}
    assert len(escapes) == 1, escapes


def test_a_symlink_in_a_root_that_points_outside_is_refused(studio_home, tiny_model_dir, monkeypatch):
    from studio import settings
    from studio.models import ModelError, resolve_model

    monkeypatch.setenv("STUDIO_MODEL_ROOTS", "")
    settings.reset_settings()
    models = settings.get_settings().models_dir
    (models / "linked").symlink_to(tiny_model_dir)
    with pytest.raises(ModelError, match="inside one of the model roots"):
        resolve_model("models/linked")


def test_folders_inside_the_roots_work_and_errors_there_stay_specific(studio_home, tiny_model_dir, monkeypatch):
    import shutil

    from studio import settings
    from studio.models import ModelError, check_model, resolve_model

    monkeypatch.setenv("STUDIO_MODEL_ROOTS", "")
    settings.reset_settings()
    models = settings.get_settings().models_dir
    shutil.copytree(tiny_model_dir, models / "tiny")
    (models / "empty").mkdir()
    assert resolve_model("models/tiny") == models / "tiny"
    assert resolve_model(str(models / "tiny")) == models / "tiny"
    with pytest.raises(ModelError, match="has no config.json"):
        check_model(str(models / "empty"))
    with pytest.raises(ModelError, match="inside one of the model roots"):
        check_model(str(tiny_model_dir))  # pytest's temp folder is no root now
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(tiny_model_dir.parent))
    settings.reset_settings()
    check_model(str(tiny_model_dir))


def test_the_ui_shows_local_bases_relative_to_the_data_directory(studio_home, tiny_model_dir, monkeypatch):
    import shutil

    from studio import adapter_exports, adapter_library
    from studio.settings import get_settings
    from studio.ui import adapters_tab, chat_tab

    local = get_settings().models_dir / "tiny"
    shutil.copytree(tiny_model_dir, local)
    from adapter_fixtures import make_job

    job = make_job(local, "relative-paths")
    home = str(get_settings().home)
    bases = [value for _, value in chat_tab.base_choices()]
    assert "models/tiny" in bases and not any(home in b for b in bases)
    assert any("(models/tiny)" in label for label, _ in adapter_library.chat_choices())
    snippets = adapter_exports.snippets(job.id)
    assert snippets and not any(home in text for text in snippets.values()), snippets
    assert "models/tiny" in snippets["vllm"] and f"jobs/{job.id}/adapter" in snippets["vllm"]
    assert [row[2] for row in adapters_tab.table()] == ["models/tiny"]
    # the shown form is a value the studio accepts back: the chat engine loads the same folder
    from workers.inference.chat_engine import base_key

    assert base_key("models/tiny") == base_key(str(local)) == str(local.resolve())
    assert adapter_library.same_base("models/tiny", str(local))


@pytest.mark.parametrize("damage", ["crc", "truncated", "file where a folder goes"])
def test_a_damaged_zip_is_refused_in_one_sentence(tiny_model_dir, studio_home, tmp_path, damage):
    from studio import adapter_import, adapter_library

    folder = make_adapter(tiny_model_dir, tmp_path / "hostile", 1)
    upload = tmp_path / "damaged.zip"
    with zipfile.ZipFile(upload, "w") as zf:  # stored, so the bytes of the weights are in the zip as they are
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            zf.write(folder / name, name)
        if damage == "file where a folder goes":
            zf.writestr("extra", b"a file")
            zf.writestr("extra/inside", b"and a file under it")
    raw = bytearray(upload.read_bytes())
    if damage == "crc":
        at = raw.index(b"adapter_model.safetensors") + 4096
        raw[at] ^= 0xFF
    elif damage == "truncated":
        raw = raw[:len(raw) // 2] + raw[-22:]  # the end record survives, the members it points at do not
    upload.write_bytes(bytes(raw))
    with pytest.raises(adapter_library.AdapterError, match="zip") as caught:
        adapter_import.import_adapter(upload, "hostile", str(tiny_model_dir))
    assert "\n" not in str(caught.value)
    assert not (studio_home / "adapters" / "hostile").exists()
    assert not list((studio_home / "tmp").iterdir())
