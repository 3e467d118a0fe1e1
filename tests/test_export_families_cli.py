"""`studio export RUN --gguf OUT`, the command itself, for a Qwen2.5-shaped and a Gemma-2-shaped run: tiny random
models of tests/families_fixtures.py (Qwen2's own vocabulary; a SentencePiece model like Gemma's), trained three
SFT steps through the worker's path. The command merges the adapter, writes the GGUF with llama.cpp's converter
(q8_0 unless told otherwise), checks it in llama.cpp and prints the drift; the file then answers in llama.cpp,
loaded with llama-cpp-python as a user would load it, as the merged model answers in transformers."""
from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import pytest

from families_fixtures import QUESTION, build_family_model, train_family_run


def studio(*argv: str) -> int:
    """The `studio` console script, as pyproject.toml declares it, run in this process."""
    target = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]["studio"]
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(list(argv))


def _transformers_reply(model_dir, messages, max_new_tokens: int) -> list[int]:
    """The merged model's greedy reply in transformers (token ids), with its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return [t for t in out[0, ids.shape[1]:].tolist() if t not in (model.generation_config.eos_token_id,
                                                                   tokenizer.eos_token_id)]


def _llama_cpp_reply(gguf_file, messages, max_new_tokens: int) -> tuple[list[int], str]:
    """The GGUF's greedy reply in llama.cpp (token ids, text): llama-cpp-python with the chat template stored in
    the file, rendered by its own formatter, and its sampler held to the most likely token."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=512, n_threads=2, verbose=False)
    try:
        def text(token: int) -> str:
            return llm.detokenize([token], special=True).decode() if token >= 0 else ""

        prompt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=text(llm.token_eos()),
                                     bos_token=text(llm.token_bos()), add_generation_prompt=True)(messages=messages)
        ids = llm.tokenize(prompt.prompt.encode(), add_bos=False, special=True)
        reply = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token):
                break
            reply.append(token)
            if len(reply) == max_new_tokens:
                break
        return reply, llm.detokenize(reply).decode("utf-8", "replace")
    finally:
        llm.close()


@pytest.mark.parametrize("key", ["qwen2", "gemma2"])
def test_studio_export_gguf_answers_in_llama_cpp(key, studio_home, tmp_path, capsys):
    from browser import ensure_bundled_model

    from studio.settings import get_settings

    base = build_family_model(key, tmp_path / "base", ensure_bundled_model())
    run = train_family_run(tmp_path, base, f"{key}-bot")
    capsys.readouterr()

    out = tmp_path / "exported"
    assert studio("export", run.name, "--gguf", str(out)) == 0
    printed = capsys.readouterr().out
    gguf_file = out / f"{run.name}-q8_0.gguf"
    assert f"wrote {gguf_file}" in printed and (out / "Modelfile").is_file()
    drift = json.loads((out / "drift-q8_0.json").read_text())
    assert drift["runtime"].startswith("llama.cpp") and drift["chat_template"] == "the GGUF's own"
    # the GGUF's template and tokenizer give llama.cpp the prompt transformers gets, and it answers each one
    assert drift["prompts"] >= 1 and drift["identical_prompt_tokens"] == drift["prompts"], drift
    assert all(theirs.strip() for _, theirs in drift["replies"]), drift["replies"]
    print(f"\n{key} q8_0 by `studio export`: {drift['identical_replies']}/{drift['prompts']} identical replies, "
          f"max |logit diff| {drift['max_abs_logit_diff']:.3f}")

    # f16 from the same merge: llama.cpp's greedy reply is the merged model's, token for token
    f16 = out / "f16" / f"{run.name}.gguf"
    assert studio("export", run.name, "--gguf", str(f16), "--quant", "f16", "--no-drift-check") == 0
    merged = get_settings().exports_dir / f"{run.name}-merged"
    if key == "gemma2":  # the converter reads Gemma's SentencePiece model: the merge carries it over
        assert (merged / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
    expected = _transformers_reply(merged, QUESTION, 8)
    answered, text = _llama_cpp_reply(f16, QUESTION, 8)
    print(f"{key} f16 in llama.cpp: {text!r} {answered}; transformers: {expected}")
    assert text.strip() and answered == expected
