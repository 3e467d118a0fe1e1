"""Export: merge an adapter, write GGUF (F16 / Q8_0), load it back with transformers, Modelfile, snippets.

All on the tiny random Llama; the module-scoped fixtures build the adapter, the merge and the F16 GGUF once.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio import export as files  # the torch-free half: Modelfile, serving snippets
from workers.inference import export

PROMPTS = ["Hello, how are you?", "What is the capital of France?", "What is your name?"]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on every linear layer with random, non-zero A and B: merging it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, adapter_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merge") / "merged"
    result = export.merge_adapter(tiny_model_dir, adapter_dir, out)
    assert result["bytes"] > 0 and result["seconds"] >= 0
    return out


@pytest.fixture(scope="module")
def f16_gguf(merged_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    result = export.write_gguf(merged_dir, out, "f16")
    assert result["bytes"] == out.stat().st_size
    return out


def _input_ids():
    import torch

    return torch.tensor([[1, 5, 40, 77, 123, 200, 9, 31]])


def test_merge_matches_base_plus_adapter(tiny_model_dir, adapter_dir, merged_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.inference_mode():
        plain = base(_input_ids()).logits
        with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()(_input_ids()).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(_input_ids()).logits
    assert (with_adapter - plain).abs().max() > 1e-2  # the adapter really changes the model
    assert torch.allclose(merged, with_adapter, atol=1e-4, rtol=0)

    assert not (merged_dir / "adapter_config.json").exists()
    assert list(merged_dir.glob("*.safetensors"))
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template == AutoTokenizer.from_pretrained(
        tiny_model_dir).chat_template
    assert not [p for p in merged_dir.parent.iterdir() if p.name.endswith(".partial")]


def test_merge_failure_leaves_nothing(tiny_model_dir, adapter_dir, tmp_path):
    out = tmp_path / "merged"
    with pytest.raises(FileNotFoundError):
        export.merge_adapter(tiny_model_dir, tmp_path / "no-such-adapter", out)
    assert not out.exists()

    broken = tmp_path / "broken-adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):
        export.merge_adapter(tiny_model_dir, broken, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-adapter"]  # no out_dir, no .partial

    with pytest.raises(ValueError, match="dtype"):
        export.merge_adapter(tiny_model_dir, adapter_dir, out, dtype="int4")


def test_merge_refuses_to_overwrite(tiny_model_dir, adapter_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export.merge_adapter(tiny_model_dir, adapter_dir, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_qk_permutation_is_what_transformers_undoes():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = np.arange(32 * 6, dtype=np.float32).reshape(32, 6)
    permuted = export._permute_qk(weights, 4, 2)
    assert not np.array_equal(permuted, weights)
    restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, 4, 2)
    assert np.array_equal(restored, weights)


def test_gguf_metadata_and_tensors(merged_dir, f16_gguf):
    from gguf import GGMLQuantizationType, GGUFReader

    config = json.loads((merged_dir / "config.json").read_text())
    reader = GGUFReader(f16_gguf)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == config["num_hidden_layers"]
    assert field("llama.embedding_length") == config["hidden_size"]
    assert field("llama.feed_forward_length") == config["intermediate_size"]
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.context_length") == 1024
    assert field("llama.rope.dimension_count") == config["hidden_size"] // 4
    assert field("general.file_type") == 1
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert len(field("tokenizer.ggml.tokens")) == config["vocab_size"]
    assert len(field("tokenizer.ggml.merges")) > 0
    assert field("tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert "<|im_start|>" in field("tokenizer.chat_template")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert types[tokens.index("<|im_end|>")] == 3  # CONTROL

    tensors = {t.name: t for t in reader.tensors}
    assert "token_embd.weight" in tensors and "output.weight" not in tensors  # tied
    assert len(tensors) == 2 + 9 * config["num_hidden_layers"]
    assert tensors["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32


def test_gguf_f16_round_trip(merged_dir, f16_gguf):
    report = export.drift_check(merged_dir, f16_gguf, PROMPTS, max_new_tokens=16)
    assert report["prompts"] == 3
    assert report["identical_prompt_tokens"] == 3
    assert report["identical_replies"] == 3, report["replies"]
    assert all(ref for ref, _ in report["replies"])
    assert report["max_abs_logit_diff"] < 5e-3, report  # a missing q/k permute gives ~0.17


def test_gguf_q8_0_round_trip(merged_dir, f16_gguf, tmp_path, record_property):
    from gguf import GGMLQuantizationType, GGUFReader

    out = tmp_path / "tiny-q8_0.gguf"
    result = export.write_gguf(merged_dir, out, "q8_0")
    assert result["bytes"] < f16_gguf.stat().st_size
    tensors = {t.name: t for t in GGUFReader(out).tensors}
    assert tensors["blk.0.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert tensors["token_embd.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert tensors["output_norm.weight"].tensor_type == GGMLQuantizationType.F32

    report = export.drift_check(merged_dir, out, PROMPTS[:2], max_new_tokens=8)
    record_property("q8_0_max_abs_logit_diff", report["max_abs_logit_diff"])
    print(f"\nq8_0 drift: max {report['max_abs_logit_diff']:.4f} mean {report['mean_abs_logit_diff']:.5f}, "
          f"{report['identical_replies']}/{report['prompts']} identical replies")
    assert report["identical_prompt_tokens"] == 2
    assert 0 < report["max_abs_logit_diff"] < 0.1
    assert report["mean_abs_logit_diff"] < 0.02


def test_write_gguf_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="Llama"):
        export.write_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="quant"):
        export.write_gguf(tmp_path, tmp_path / "x.gguf", "q4_k")
    assert not list(tmp_path.glob("*.gguf*"))


def test_modelfile_chatml(tmp_path):
    from tiny import CHATML

    gguf_file = tmp_path / "my-model.gguf"
    path = files.write_modelfile(gguf_file, tmp_path / "Modelfile", CHATML,
                                  {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1,
                                   "max_new_tokens": 256, "do_sample": True})
    text = path.read_text()
    assert text.startswith("FROM ./my-model.gguf\n")
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n' in text
    assert "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n" in text
    assert "<|im_start|>assistant\n{{ .Response }}<|im_end|>" in text
    assert 'SYSTEM """You are a helpful assistant."""' in text
    for line in ("PARAMETER temperature 0.7", "PARAMETER top_p 0.9", "PARAMETER top_k 40",
                 "PARAMETER repeat_penalty 1.1", "PARAMETER num_predict 256",
                 'PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"'):
        assert line in text.splitlines()
    assert "do_sample" not in text


def test_modelfile_other_template(tmp_path):
    path = files.write_modelfile(tmp_path / "gguf" / "m.gguf", tmp_path / "Modelfile",
                                  "{{ bos_token }}[INST] {{ messages[0]['content'] }} [/INST]", {"stop": ["</s>"]})
    text = path.read_text()
    assert text.startswith("FROM ./gguf/m.gguf\n")
    assert "TEMPLATE" not in text.replace("# chat template", "")
    assert 'PARAMETER stop "</s>"' in text


def test_serving_snippets(adapter_dir):
    snippets = files.serving_snippets("HuggingFaceTB/SmolLM2-135M-Instruct", str(adapter_dir), "support-bot",
                                       "/data/exports/support-bot.gguf")
    assert snippets["vllm"] == (f"vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora "
                                f"--lora-modules support-bot={adapter_dir}")
    assert '"model": "support-bot"' in snippets["openai"]
    assert "PeftModel.from_pretrained(model, " + repr(str(adapter_dir)) in snippets["peft"]
    compile(snippets["peft"], "snippet", "exec")
    assert "ollama create support-bot -f Modelfile" in snippets["ollama"]
    assert snippets["llama_cpp"].startswith("llama-server -m /data/exports/support-bot.gguf")
    assert "ollama" not in files.serving_snippets("b", "a", "n", None)


def test_serving_snippets_raise_vllm_rank(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64}))
    assert files.serving_snippets("b", str(tmp_path), "n", None)["vllm"].endswith("--max-lora-rank 64")


@pytest.mark.slow
def test_gguf_round_trip_on_the_bundled_smollm2(tmp_path, monkeypatch, record_property):
    """The real model, merged with a LoRA adapter: F16 GGUF gives the same greedy replies on the golden
    prompts; Q8_0 stays close (its error is the 8-bit rounding of weights that came from a Q4_1 file)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from browser import SHARED_MODELS
    from studio import settings
    from studio.models import ensure_bundled

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

    f16 = export.write_gguf(merged, tmp_path / "m-f16.gguf", "f16")
    report = export.drift_check(merged, tmp_path / "m-f16.gguf", golden, max_new_tokens=24)
    print(f"\nbundled F16: {f16['bytes'] / 1e6:.1f} MB in {f16['seconds']:.1f} s, "
          f"{report['identical_replies']}/3 identical, max logit diff {report['max_abs_logit_diff']:.4f}")
    assert report["identical_prompt_tokens"] == 3  # the GGUF's own tokenizer encodes the prompts identically
    assert report["identical_replies"] == 3, report["replies"]
    assert "Paris" in report["replies"][0][0]  # a real model, really answering
    assert report["max_abs_logit_diff"] < 0.1, report

    q8 = export.write_gguf(merged, tmp_path / "m-q8_0.gguf", "q8_0")
    assert q8["bytes"] < 0.6 * f16["bytes"]
    report = export.drift_check(merged, tmp_path / "m-q8_0.gguf", golden[:2], max_new_tokens=8)
    record_property("bundled_q8_0_mean_abs_logit_diff", report["mean_abs_logit_diff"])
    print(f"bundled Q8_0: {q8['bytes'] / 1e6:.1f} MB, max logit diff {report['max_abs_logit_diff']:.3f}, "
          f"mean {report['mean_abs_logit_diff']:.3f}")
    assert report["identical_prompt_tokens"] == 2
    assert report["mean_abs_logit_diff"] < 0.6 and report["max_abs_logit_diff"] < 3.0, report
    assert report["identical_replies"] >= 1, report["replies"]
