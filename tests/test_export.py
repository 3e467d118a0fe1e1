"""Export: merge an adapter, the Ollama Modelfile, the drift sentence, serving snippets.

All on the tiny random Llama; the module-scoped fixtures build the adapter and the merge once. GGUF through
llama.cpp's converter and the drift check in llama.cpp: tests/test_gguf_llamacpp.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio import serving as files  # the torch-free half: Modelfile, serving snippets
from workers.inference import export

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
    assert not [line for line in text.splitlines() if line.startswith("TEMPLATE")]
    assert "# No TEMPLATE here: Ollama derives it from the chat template stored in the GGUF" in text
    assert 'PARAMETER stop "</s>"' in text


def test_drift_sentence():
    report = {"quant": "q8_0", "runtime": "llama.cpp (llama-cpp-python 0.3.36)", "prompts": 3, "identical_replies": 2,
              "max_abs_logit_diff": 0.41234,
              "first_difference": {"prompt": 3, "position": 11, "before": "The sea",
                                   "merged": {"id": 260, "text": " the"}, "gguf": {"id": 253, "text": " a"}}}
    assert files.drift_sentence(report) == ('Drift check (q8_0) in llama.cpp: 2/3 identical greedy replies (67%); '
                                            'first difference: prompt 3, token 12, merged " the" vs GGUF " a"; '
                                            'max |logit diff| 0.4123.')
    report["first_difference"]["gguf"] = None  # llama.cpp had stopped there
    assert 'merged " the" vs GGUF (stopped)' in files.drift_sentence(report)
    same = {**report, "identical_replies": 3, "first_difference": None}
    assert "3/3 identical greedy replies (100%); no token differs;" in files.drift_sentence(same)
    before = {"quant": "f16", "prompts": 2, "identical_replies": 2, "max_abs_logit_diff": 0.01}  # a report of 0.1
    assert files.drift_sentence(before).startswith("Drift check (f16) in transformers (GGUF loaded back): 2/2")


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


