"""Adapter library: listing, zip with model card, safe import (safetensors only, shapes, zip-slip), export."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from adapter_fixtures import make_adapter, make_job


def _dataset(name="tiny-data"):
    from studio import db

    rec = db.DatasetRecord(name=name, filename="tiny.jsonl", path="datasets/x/tiny.jsonl", sha256="ab" * 32,
                           format="messages", kind="chat", rows=42,
                           stats_json=json.dumps({"rows": 42, "turns_mean": 2.0, "duplicates_dropped": 1}))
    with db.session() as s:
        s.add(rec)
        s.commit()
    return rec


def _zip(path: Path, files: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data.read_bytes() if isinstance(data, Path) else data)
    return path


def test_list_adapters_shows_runs_and_imports(tiny_model_dir, studio_home, tmp_path):
    from studio import adapter_import, adapter_library

    job = make_job(tiny_model_dir, "listed", seed=1, r=8, lora_alpha=16)
    make_job(tiny_model_dir, "still-running", status="running")
    adapter_import.import_adapter(make_adapter(tiny_model_dir, tmp_path / "up", 2), "brought-in", str(tiny_model_dir))
    rows = {a["name"]: a for a in adapter_library.list_adapters()}
    assert set(rows) == {"listed", "brought-in"}
    run = rows["listed"]
    assert run["ref"] == job.id and run["kind"] == "run" and run["base_model"] == str(tiny_model_dir)
    assert "r=8" in run["config"] and "alpha=16" in run["config"] and "16-bit" in run["config"]
    assert run["final_loss"] == 1.25 and run["best_eval_loss"] == 1.5 and run["bytes"] > 1000
    imported = rows["brought-in"]
    assert imported["kind"] == "imported" and imported["ref"] == "imported/brought-in" and "r=4" in imported["config"]


def test_zip_holds_adapter_tokenizer_and_model_card(tiny_model_dir, studio_home):
    from studio import model_card
    from studio.settings import get_settings

    _dataset()
    job = make_job(tiny_model_dir, "zipped", seed=1, golden_prompts=["Who are you?"])
    path = model_card.zip_adapter(job.id)
    assert path == get_settings().exports_dir / "zipped-adapter.zip"
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        card = zf.read("README.md").decode()
    assert "library_name: peft" in card and "# zipped" in card
    assert "| final training loss | 1.25 |" in card and "| best eval loss | 1.5 |" in card
    assert "`tiny-data` (tiny.jsonl, format messages, kind chat, 42 rows" in card and "turns_mean: 2.0" in card
    assert "```yaml" in card and "golden_prompts:\n- Who are you?" in card and f"base_model: {tiny_model_dir}" in card

    adapter_dir = get_settings().resolve(job.adapter_path)  # tokenizer files travel only when present
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (adapter_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    with zipfile.ZipFile(model_card.zip_adapter(job.name)) as zf:
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(zf.namelist())


def test_import_roundtrip_ignores_the_adapters_own_base_claim(tiny_model_dir, studio_home, tmp_path):
    from studio import adapter_import, adapter_library, model_card

    job = make_job(tiny_model_dir, "source", seed=1)
    original = model_card.zip_adapter(job.id)
    with zipfile.ZipFile(original) as zf:  # the file claims another base, inside a folder
        files = {f"source/{n}": zf.read(n) for n in zf.namelist()}
    config = json.loads(files["source/adapter_config.json"])
    config["base_model_name_or_path"] = "evil/other-model"
    files["source/adapter_config.json"] = json.dumps(config).encode()
    upload = _zip(tmp_path / "upload.zip", files)

    folder = adapter_import.import_adapter(upload, "round-trip", str(tiny_model_dir))
    assert folder == studio_home / "adapters" / "round-trip"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    meta = json.loads((folder / adapter_library.META_FILE).read_text())
    assert meta["base_model"] == str(tiny_model_dir) and meta["r"] == [4] and "q_proj" in meta["modules"]
    assert (folder / "adapter_model.safetensors").read_bytes() == files["source/adapter_model.safetensors"]
    with pytest.raises(adapter_library.AdapterError, match="already exists"):
        adapter_import.import_adapter(upload, "round-trip", str(tiny_model_dir))
    with pytest.raises(adapter_library.AdapterError, match="not allowed"):
        adapter_import.import_adapter(upload, "../escape", str(tiny_model_dir))
    assert not list((studio_home / "tmp").iterdir())


def test_import_refuses_pickle_only_adapters(tiny_model_dir, studio_home, tmp_path):
    from studio import adapter_import, adapter_library

    source = make_adapter(tiny_model_dir, tmp_path / "a", 1)
    upload = _zip(tmp_path / "pickled.zip", {"adapter_config.json": source / "adapter_config.json",
                                             "adapter_model.bin": b"\x80\x04pickle"})
    with pytest.raises(adapter_library.AdapterError, match=r"adapter_model\.bin, a pickle file that can run code"):
        adapter_import.import_adapter(upload, "pickled", str(tiny_model_dir))
    loose = tmp_path / "adapter_model.bin"
    loose.write_bytes(b"\x80\x04pickle")
    for upload in ([source / "adapter_config.json", loose], [loose]):  # loose files, as the UI uploads them
        with pytest.raises(adapter_library.AdapterError, match="pickle"):
            adapter_import.import_adapter(upload, "loose", str(tiny_model_dir))
    assert not (studio_home / "adapters").exists() or not list((studio_home / "adapters").iterdir())


@pytest.mark.parametrize("shape, message", [({"hidden": 32}, "do not fit"), ({"layers": 3}, "more layers")])
def test_import_refuses_an_adapter_of_another_shape(tiny_model_dir, studio_home, tmp_path_factory, shape, message):
    from tiny import build_tiny_model

    from studio import adapter_import, adapter_library

    other = build_tiny_model(tmp_path_factory.mktemp("other"), **shape)
    folder = make_adapter(other, tmp_path_factory.mktemp("adapter") / "a", 1)
    with pytest.raises(adapter_library.AdapterError, match=message):
        adapter_import.import_adapter(folder, "wrong-shape", str(tiny_model_dir))
    assert not (studio_home / "adapters" / "wrong-shape").exists()


def test_import_checks_target_modules_and_rank(tiny_model_dir, studio_home, tmp_path):
    from studio import adapter_check, adapter_library

    folder = make_adapter(tiny_model_dir, tmp_path / "a", 1)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "wqkv"]}))
    with pytest.raises(adapter_library.AdapterError, match="targets 'wqkv'"):
        adapter_check.check_against_base(folder, str(tiny_model_dir))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(adapter_library.AdapterError, match="r=8 but the weights have rank"):
        adapter_check.check_against_base(folder, str(tiny_model_dir))
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(adapter_library.AdapterError, match="cut short"):
        adapter_check.check_against_base(folder, str(tiny_model_dir))


def test_import_takes_every_adapter_type_the_studio_trains(tiny_model_dir, studio_home, tmp_path_factory):
    """An IA3 adapter zip (and prompt / prefix tuning folders) import like a LoRA: type read from
    adapter_config.json's peft_type, shapes checked against the base; one of another base is refused."""
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig
    from tiny import build_tiny_model

    from adapter_fixtures import make_peft_adapter
    from studio import adapter_import, adapter_library, model_card

    tmp = tmp_path_factory.mktemp("types")
    ia3 = IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                    feedforward_modules=["down_proj"])
    folder = make_peft_adapter(tiny_model_dir, tmp / "ia3", ia3)
    upload = _zip(tmp / "ia3.zip", {f"ia3/{f.name}": f for f in folder.iterdir()})
    stored = adapter_import.import_adapter(upload, "ia3-in", str(tiny_model_dir))
    meta = json.loads((stored / adapter_library.META_FILE).read_text())
    assert meta["type"] == "ia3" and meta["modules"] == ["down_proj", "k_proj", "v_proj"] and meta["ia3_layers"] == 6
    row = next(a for a in adapter_library.list_adapters() if a["name"] == "ia3-in")
    assert row["config"].startswith("IA3") and "r=None" not in row["config"]
    assert adapter_library.resolve("imported/ia3-in").folder == stored
    with zipfile.ZipFile(model_card.zip_adapter("imported/ia3-in")) as zf:
        assert "An IA3 adapter imported" in zf.read("README.md").decode()

    for name, config in (("prompt", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
                         ("prefix", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))):
        stored = adapter_import.import_adapter(make_peft_adapter(tiny_model_dir, tmp / name, config), name,
                                               str(tiny_model_dir))
        assert json.loads((stored / adapter_library.META_FILE).read_text())["type"] == name + "_tuning"

    wide = build_tiny_model(tmp / "wide", hidden=32)
    for name, config in (("ia3", ia3), ("prompt", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))):
        other = make_peft_adapter(wide, tmp / f"wide-{name}", config)
        with pytest.raises(adapter_library.AdapterError, match="trained on another model"):
            adapter_import.import_adapter(other, f"wide-{name}", str(tiny_model_dir))

    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "VERA"}))
    with pytest.raises(adapter_library.AdapterError, match="of type VERA, which the studio cannot load; it takes LoRA"):
        adapter_import.import_adapter(folder, "vera", str(tiny_model_dir))


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/studio-evil.txt", "ok/../../evil.txt", "link"])
def test_import_refuses_zip_slip(tiny_model_dir, studio_home, tmp_path, member):
    from studio import adapter_import, adapter_library

    source = make_adapter(tiny_model_dir, tmp_path / "a", 1)
    upload = tmp_path / "slip.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        zf.writestr("adapter_config.json", (source / "adapter_config.json").read_bytes())
        zf.writestr("adapter_model.safetensors", (source / "adapter_model.safetensors").read_bytes())
        if member == "link":
            info = zipfile.ZipInfo("adapter_link")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(member, b"gotcha")
    with pytest.raises(adapter_library.AdapterError, match="unsafe path"):
        adapter_import.import_adapter(upload, "slip", str(tiny_model_dir))
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/studio-evil.txt").exists()
    assert not (studio_home / "adapters" / "slip").exists()
    assert not list((studio_home / "tmp").iterdir())


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(ids).logits


def test_merged_export_matches_base_plus_adapter(tiny_model_dir, studio_home, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.settings import get_settings
    from workers import cli
    from workers.inference import export

    job = make_job(tiny_model_dir, "merge-me", seed=1)
    result = export.merge(job.id)
    out = get_settings().exports_dir / "merge-me-merged"
    assert result["path"] == str(out) and result["bytes"] > 0
    ids = torch.tensor([[1, 5, 40, 77, 123, 200, 9, 31]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain = _logits(base, ids)
    reference = _logits(PeftModel.from_pretrained(base, get_settings().resolve(job.adapter_path)).eval(), ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), ids)
    assert (reference - plain).abs().max() > 1e-2
    assert torch.allclose(merged, reference, atol=1e-4, rtol=0)

    target = tmp_path / "cli-merged"  # the CLI writes where its user says, never over an existing folder
    assert cli.main(["export", "merge-me", "--merge", str(target)]) == 0 and (target / "config.json").exists()
    assert cli.main(["export", "merge-me", "--merge", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_gguf_export_writes_modelfile_drift_and_snippets(tiny_gguf_model_dir, studio_home):
    from studio import adapter_exports, model_card
    from studio.settings import get_settings
    from workers.inference import export

    job = make_job(tiny_gguf_model_dir, "to-gguf", seed=1, golden_prompts=["Hello, how are you?"])
    result = export.export_gguf(job.id, quant="f16")
    folder = get_settings().exports_dir / "to-gguf-gguf"
    assert result["merge"]["bytes"] > 0  # merged on the way
    assert Path(result["gguf"]["path"]) == folder / "to-gguf-f16.gguf" and result["gguf"]["bytes"] > 0
    assert (folder / "Modelfile").read_text().startswith("FROM ./to-gguf-f16.gguf")
    drift = json.loads((folder / "drift-f16.json").read_text())
    assert drift["prompts"] == 1 and drift["quant"] == "f16" and drift["max_abs_logit_diff"] < 0.1
    assert adapter_exports.read_drift(job.id) == [drift] == [result["drift"]]
    card = model_card.model_card(job)  # the drift check in llama.cpp, on the model card
    assert "## GGUF exports" in card and "- `to-gguf-f16.gguf`: Drift check (f16) in llama.cpp: " in card
    snippets = adapter_exports.snippets(job.id, result["gguf"]["path"])
    assert "ollama create to-gguf" in snippets["ollama"]
    assert f"to-gguf={job.adapter_path}" in snippets["vllm"]  # relative to the data directory
    assert "merge" not in export.export_gguf(job.id, quant="q8_0", drift=False)  # the merge is reused
