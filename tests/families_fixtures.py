"""Tiny random-weight models of every family the studio lists, built here from each family's transformers config
class at small dimensions (2 layers, hidden size 64), with the bundled SmolLM2 tokenizer and a chat template
written for that family's own turn markers (added as special tokens), so each family trains, chats, merges and
exports like a real one without a download.

Weights are drawn with a wide initialiser (0.3): random models then have peaked next-token distributions, so
greedy decoding is not decided by rounding between runtimes.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN3 = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
         "{% if m['role'] == 'assistant' %}{% if m.get('reasoning_content') %}<think>\n{{ m['reasoning_content'] }}\n"
         "</think>\n\n{% elif loop.last or enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
         "{% endif %}{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n"
         "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
           "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }}[/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
         "{{ raise_exception('System role not supported') }}{% endif %}"
         "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
OLMO2 = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
         "{% if m['role'] == 'assistant' %}{{ eos_token }}\n{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
GRANITE = ("{% for m in messages %}<|start_of_role|>{{ m['role'] }}<|end_of_role|>{{ m['content'] }}<|end_of_text|>\n"
           "{% endfor %}{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}")


@dataclass(frozen=True)
class TinyFamily:
    key: str                       # a test id
    config_class: str              # the transformers config class
    template: str
    special: tuple[str, ...]       # the template's own markers, added as special tokens
    eos: str                       # the end-of-turn token
    bos: str | None = None
    config: dict = field(default_factory=dict)   # the family's own shape arguments
    tokenizer_class: str | None = None           # written into tokenizer_config.json (llama.cpp's converter reads it)


FAMILIES: dict[str, TinyFamily] = {f.key: f for f in (
    TinyFamily("llama3", "LlamaConfig", LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                "<|eot_id|>"), "<|eot_id|>", "<|begin_of_text|>",
               {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 1024}}),
    TinyFamily("qwen2", "Qwen2Config", CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
               tokenizer_class="GPT2Tokenizer"),
    TinyFamily("qwen3", "Qwen3Config", QWEN3, ("<|im_start|>", "<|im_end|>", "<think>", "</think>"), "<|im_end|>",
               config={"head_dim": 16}),
    TinyFamily("mistral", "MistralConfig", MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]"), "</s>", "<s>",
               {"sliding_window": None}),
    TinyFamily("gemma2", "Gemma2Config", GEMMA, ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
               "<bos>", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 512}),
    TinyFamily("gemma3", "Gemma3TextConfig", GEMMA, ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
               "<bos>", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 512}),
    TinyFamily("phi3", "Phi3Config", PHI3, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>",
               tokenizer_class="GPT2Tokenizer"),
    TinyFamily("olmo2", "Olmo2Config", OLMO2, ("<|system|>", "<|user|>", "<|assistant|>"), "<|endoftext|>",
               "<|endoftext|>", {"tie_word_embeddings": False}),
    TinyFamily("granite", "GraniteConfig", GRANITE, ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
               "<|end_of_text|>"),
    TinyFamily("smollm3", "SmolLM3Config", CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
)}


def build_family_model(key: str, out: Path, tokenizer_dir: Path, hidden: int = 64, layers: int = 2,
                       seed: int = 0) -> Path:
    """A tiny random model of the family ``key`` in ``out`` (safetensors, tokenizer, chat template)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    family = FAMILIES[key]
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": [t for t in family.special if t not in tok.get_vocab()]})
    tok.eos_token = family.eos
    tok.pad_token = "<|endoftext|>"
    if family.bos:
        tok.bos_token = family.bos
    tok.chat_template = family.template
    tok.save_pretrained(out)
    if family.tokenizer_class:
        path = out / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "tokenizer_class": family.tokenizer_class}))

    torch.manual_seed(seed)
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **{"tie_word_embeddings": True, **family.config})
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out
