"""GGUF through llama.cpp's own converter and quantizer, checked in llama.cpp itself.

The fast tests use the tiny random Llama saved with SmolLM2's tokenizer (``tiny_gguf_model_dir``: the converter
refuses pre-tokenizers it does not know); the slow one merges a LoRA into the real bundled SmolLM2.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio import serving as files
from workers.inference import export, llamacpp

PROMPTS = ["Hello, how are you?", "What is the capital of France?", "What is your name?"]


@pytest.fixture(scope="module")
def f16_gguf(tiny_gguf_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    result = export.write_gguf(tiny_gguf_model_dir, out, "f16")
    assert result["bytes"] == out.stat().st_size
    assert result["converter"].startswith("llama.cpp's convert_hf_to_gguf.py (llama-cpp-python ")
    return out


def _fields(path: Path):
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return (lambda key: reader.fields[key].contents()), {t.name: t for t in reader.tensors}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_the_converter_writes_the_gguf(tiny_gguf_model_dir, f16_gguf):
    from gguf import GGMLQuantizationType

    config = json.loads((tiny_gguf_model_dir / "config.json").read_text())
    field, tensors = _fields(f16_gguf)
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == config["num_hidden_layers"]
    assert field("llama.embedding_length") == config["hidden_size"]
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("general.file_type") == 1  # MOSTLY_F16
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    assert len(field("tokenizer.ggml.tokens")) == config["vocab_size"]
    assert "<|im_start|>" in field("tokenizer.chat_template")  # the model's own template travels in the file
    assert tensors["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert "output.weight" not in tensors  # tied to token_embd
    assert _leftovers(f16_gguf.parent) == []


def test_f32_and_f16_answer_in_llama_cpp_as_the_model_does_in_transformers(tiny_gguf_model_dir, f16_gguf, tmp_path):
    f32 = tmp_path / "tiny-f32.gguf"
    export.write_gguf(tiny_gguf_model_dir, f32, "f32")
    for gguf_file in (f32, f16_gguf):
        in_llama_cpp = export.check_in_llama_cpp(gguf_file, PROMPTS, max_new_tokens=16)
        assert in_llama_cpp["chat_template"]  # answered with the GGUF's own template
        report = export.drift_check(tiny_gguf_model_dir, in_llama_cpp, PROMPTS, max_new_tokens=16)
        print(f"\n{gguf_file.name}: {files.drift_sentence({'quant': gguf_file.stem, **report})}")
        assert report["runtime"].startswith("llama.cpp (llama-cpp-python ")
        assert report["prompts"] == 3 and report["identical_prompt_tokens"] == 3  # template + tokenizer agree
        if gguf_file == f32:
            assert report["identical_replies"] == 3 and report["first_difference"] is None, report["replies"]
            assert report["identical_share"] == 1.0
        else:  # f16 rounding may flip a near tie of these random weights late in a reply
            assert report["identical_replies"] >= 2, report["replies"]
            assert report["first_difference"] is None or report["first_difference"]["position"] > 0


def test_q8_0_and_q4_k_m(tiny_gguf_model_dir, f16_gguf, tmp_path):
    from gguf import GGMLQuantizationType

    q8 = tmp_path / "tiny-q8_0.gguf"
    export.write_gguf(tiny_gguf_model_dir, q8, "q8_0")
    field, tensors = _fields(q8)
    assert field("general.file_type") == 7  # MOSTLY_Q8_0
    assert tensors["blk.0.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert q8.stat().st_size < f16_gguf.stat().st_size

    q4 = tmp_path / "tiny-q4_k_m.gguf"
    result = export.write_gguf(tiny_gguf_model_dir, q4, "q4_k_m")  # f16 by the converter, then llama.cpp's quantizer
    field, _ = _fields(q4)
    assert field("general.file_type") == 15  # MOSTLY_Q4_K_M (rows of 64 fall back to other types: too short for k-quants)
    assert result["bytes"] < f16_gguf.stat().st_size
    assert _leftovers(tmp_path) == []  # no partial file, no intermediate f16

    in_llama_cpp = export.check_in_llama_cpp(q4, PROMPTS[:2], max_new_tokens=8)
    report = export.drift_check(tiny_gguf_model_dir, in_llama_cpp, PROMPTS[:2], max_new_tokens=8)
    assert report["prompts"] == 2 and report["identical_prompt_tokens"] == 2
    first = report["first_difference"]
    if first is not None:  # 4-bit random weights usually part somewhere: where, and with which tokens
        assert set(first) == {"prompt", "position", "before", "merged", "gguf"} and first["prompt"] in (1, 2)
        assert first["merged"] != first["gguf"]
    assert report["max_abs_logit_diff"] > 0


@pytest.mark.parametrize("key", sorted(__import__("families_fixtures").FAMILIES))
def test_each_family_converts_and_answers_alike_in_llama_cpp(key, tmp_path, record_property):
    """Every family of the table, as a tiny random model of its own shape, tokenizer kind and chat template
    (tests/families_fixtures.py): converted to f16 by llama.cpp's converter, loaded in llama.cpp and answering three
    prompts greedily with the template the converter stored, token for token as transformers does; then quantized
    to q8_0 by llama.cpp's quantizer, which loads and answers with the same prompt tokens. The GGUF is named as a
    run would be (no family in the name): llama.cpp reads Phi-3's token handling from the name."""
    from gguf import GGMLQuantizationType

    from browser import ensure_bundled_model
    from families_fixtures import build_family_model

    model = build_family_model(key, tmp_path / key, ensure_bundled_model())
    f16, q8 = tmp_path / f"{key}-f16.gguf", tmp_path / f"{key}-q8_0.gguf"
    export.write_gguf(model, f16, "f16", model_name="support-bot")
    llamacpp.quantize(f16, q8, "q8_0")
    field, tensors = _fields(q8)
    assert field("general.file_type") == 7 and tensors["blk.0.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q8_0

    reports = {}
    for quant, gguf_file in (("f16", f16), ("q8_0", q8)):
        in_llama_cpp = export.check_in_llama_cpp(gguf_file, PROMPTS, max_new_tokens=8)
        report = reports[quant] = export.drift_check(model, in_llama_cpp, PROMPTS, max_new_tokens=8)
        print(f"\n{key}: {files.drift_sentence({'quant': quant, **report})}")
        record_property(f"{key}_{quant}_identical_replies", report["identical_replies"])
        record_property(f"{key}_{quant}_max_abs_logit_diff", round(report["max_abs_logit_diff"], 4))
        assert in_llama_cpp["chat_template"] and report["identical_prompt_tokens"] == len(PROMPTS), report
        assert all(theirs.strip() for _, theirs in report["replies"]), report["replies"]  # llama.cpp answers each
    assert reports["f16"]["identical_replies"] == len(PROMPTS), reports["f16"]["first_difference"]


def test_an_architecture_the_converter_does_not_take_is_one_sentence(tmp_path):
    from studio.families import gguf_families, gguf_problem

    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError) as caught:
        export.write_gguf(model, tmp_path / "x.gguf", "f16")
    message = str(caught.value)
    assert message == gguf_problem({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})  # the table's
    assert message.startswith("GGUF export supports") and "gpt2" in message and "\n" not in message
    assert all(name in message for name in gguf_families())
    with pytest.raises(ValueError, match="quant must be one of f16, q8_0, q4_k_m, f32"):
        export.write_gguf(model, tmp_path / "x.gguf", "q2_k")
    assert not list(tmp_path.glob("*.gguf*"))

    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo2",
                       "granite", "smollm3"):
        (model / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert export.gguf_problem(model) is None, model_type


def test_the_gguf_name_says_phi3_exactly_when_llama_cpp_can_use_it(tmp_path):
    """llama.cpp right-strips Phi-3's special tokens, as Phi-3's tokenizer does, only in a GGUF whose name says
    phi3 or phi-3, and there it looks up Llama 2's </s>, <s> and <unk> by text (the phi3 family test above converts
    under a run's name and gets transformers' prompt tokens)."""
    model = tmp_path / "m"
    model.mkdir()

    def name(model_type: str, tokenizer_class: str, given: str | None):
        (model / "config.json").write_text(json.dumps({"model_type": model_type}))
        (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
        return export.gguf_name(model, given)

    assert name("phi3", "LlamaTokenizer", "support-bot") == "support-bot (Phi-3)"  # Phi-3-mini's vocabulary
    assert name("phi3", "LlamaTokenizer", "my-phi3-bot") == "my-phi3-bot"
    assert name("phi3", "LlamaTokenizer", None) == "m (Phi-3)"
    assert name("phi3", "GPT2Tokenizer", "my-Phi-3-bot") == "my-phi-bot"  # phi-4's: no </s> to look up
    assert name("phi3", "GPT2Tokenizer", "support-bot") == "support-bot"
    assert name("qwen2", "Qwen2Tokenizer", "phi3-ish") == "phi3-ish" and name("qwen2", "Qwen2Tokenizer", None) is None


def test_a_converter_failure_is_the_converters_own_words(tiny_model_dir, tmp_path):
    """tests/tiny.py's own BPE tokenizer: a Llama the converter takes, with a pre-tokenizer it does not know."""
    with pytest.raises(llamacpp.LlamaCppError, match="^llama.cpp's converter failed: NotImplementedError: BPE "
                                                     "pre-tokenizer was not recognized"):
        export.write_gguf(tiny_model_dir, tmp_path / "x.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_a_template_llama_cpp_cannot_render_is_said_apart_from_a_load_failure(tiny_gguf_model_dir, tmp_path):
    import shutil

    model = tmp_path / "raising"
    shutil.copytree(tiny_gguf_model_dir, model)
    (model / "chat_template.jinja").write_text("{{ raise_exception('this template takes no user turn') }}")
    export.write_gguf(model, tmp_path / "raising.gguf", "f16")
    assert export.check_in_llama_cpp(tmp_path / "raising.gguf", [])["answers"] == []  # it loads
    with pytest.raises(llamacpp.LlamaCppError) as caught:
        export.check_in_llama_cpp(tmp_path / "raising.gguf", ["Hello"])
    assert str(caught.value).startswith("llama.cpp loaded raising.gguf but could not answer: error: ValueError: "
                                        "this template takes no user turn")


def test_messages_are_picked_from_the_logs():
    converter_log = ("INFO:hf-to-gguf:Loading model: m\nTraceback (most recent call last):\n  File \"x\", line 1\n"
                     "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()\n")
    assert llamacpp.converter_message(converter_log) == ("NotImplementedError: BPE pre-tokenizer was not "
                                                         "recognized - update get_vocab_base_pre()")
    assert llamacpp.converter_message("INFO:x:y\nERROR:hf-to-gguf:Model Foo is not supported\n") == \
        "Model Foo is not supported"
    llama_log = ("llama_model_load: error loading model: tensor 'token_embd.weight' data is not within the file "
                 "bounds, model is corrupted or incomplete\nllama_model_load_from_file_impl: failed to load model\n"
                 "Failed to load model from file: x.gguf\n")
    assert llamacpp.llama_message(llama_log) == (
        "llama_model_load: error loading model: tensor 'token_embd.weight' data is not within the file bounds, "
        "model is corrupted or incomplete; llama_model_load_from_file_impl: failed to load model")


def test_a_gguf_llama_cpp_cannot_load_fails_the_export_and_keeps_the_merge(tiny_gguf_model_dir, f16_gguf,
                                                                           studio_home, monkeypatch):
    from adapter_fixtures import make_job

    from studio import db, jobs
    from studio.settings import get_settings
    from workers.inference.task import run_task

    def truncated(model_dir, out_file, outtype, model_name=None):  # a converter that stopped half-way
        data = f16_gguf.read_bytes()
        Path(out_file).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(llamacpp, "convert", truncated)
    run = make_job(tiny_gguf_model_dir, "corrupt", seed=1)
    task = jobs.submit_task("gguf", "gguf corrupt", {"ref": run.id, "quant": "f16", "drift": True}, queue=False)
    assert run_task(task.id) == "failed"
    error = db.get_job(task.id).error
    assert error.startswith("llama.cpp could not load corrupt-f16.gguf: llama_model_load: error loading model: "
                            "tensor 'token_embd.weight' data is not within the file bounds"), error
    assert error.endswith("(the merged model stays in corrupt-merged)")
    exports = get_settings().exports_dir
    assert list((exports / "corrupt-merged").glob("*.safetensors"))  # the merge is kept
    gguf_dir = exports / "corrupt-gguf"
    assert not gguf_dir.exists() or list(gguf_dir.iterdir()) == []  # no GGUF, no Modelfile, no partial file


@pytest.mark.slow
def test_bundled_smollm2_in_llama_cpp(tmp_path, monkeypatch, record_property):
    """The real model, merged with a LoRA adapter, exported f16, q8_0 and q4_k_m and answering the golden
    prompts greedily in llama.cpp beside transformers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from browser import SHARED_MODELS
    from studio import settings
    from workers.bundled import ensure_bundled

    monkeypatch.setenv("STUDIO_MODELS_DIR", str(SHARED_MODELS))
    settings.reset_settings()
    base = ensure_bundled()
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.0005)  # a real change to every layer that keeps replies fluent
    model.save_pretrained(tmp_path / "adapter")
    del model
    merged = tmp_path / "merged"
    export.merge_adapter(base, tmp_path / "adapter", merged)
    golden = ["What is the capital of France?", "Give me three tips for staying focused.",
              "Explain what a neural network is in one sentence."]

    reports, sizes = {}, {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        out = tmp_path / f"m-{quant}.gguf"
        written = export.write_gguf(merged, out, quant)
        sizes[quant] = written["bytes"]
        in_llama_cpp = export.check_in_llama_cpp(out, golden, max_new_tokens=16)
        report = reports[quant] = export.drift_check(merged, in_llama_cpp, golden, max_new_tokens=16)
        record_property(f"bundled_{quant}_identical_share", report["identical_share"])
        print(f"\nbundled {quant}: {written['bytes'] / 1e6:.1f} MB in {written['seconds']:.1f} s; "
              f"{files.drift_sentence({'quant': quant, **report})} ({report['seconds']:.1f} s)")
        assert report["identical_prompt_tokens"] == 3  # the GGUF's template and tokenizer encode them as HF does
        assert all(theirs for _, theirs in report["replies"])  # llama.cpp answers every prompt
    f16 = reports["f16"]
    assert "Paris" in f16["replies"][0][1]  # a real model, really answering, in llama.cpp
    # the first prompt's first token is a near tie here ("The" 25.31 vs "L" 25.25): f16 keeps it, 8 and 4 bits
    # (llama.cpp also rounds activations to 8 bits in their dot products) tip it
    assert f16["identical_replies"] >= 2 and f16["max_abs_logit_diff"] < 0.5, f16
    assert reports["q8_0"]["mean_abs_logit_diff"] < 1.0, reports["q8_0"]
    assert sizes["q4_k_m"] < sizes["q8_0"] < 0.6 * sizes["f16"]
