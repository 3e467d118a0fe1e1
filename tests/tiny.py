"""A tiny random-weight Llama with a real byte-level BPE tokenizer and a ChatML chat template.

Built in seconds with no network; unit tests use it in place of a real base model.
"""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Hello, how are you? I am fine, thank you.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "You are a helpful assistant. Answer the question.",
    "What is your name? My name is Zorblax, made by Quintar Labs.",
    "def add(a, b):\n    return a + b\n",
] * 20


def build_tiny_model(out: Path, hidden: int = 64, layers: int = 2, seed: int = 0, context: int = 1024,
                     tokenizer_dir: Path | None = None, initializer_range: float = 0.02) -> Path:
    """``tokenizer_dir``: a real model's tokenizer instead of the tiny trained one (llama.cpp's converter takes
    only pre-tokenizers it knows); a larger ``initializer_range`` gives random weights peaked logits, so greedy
    argmax survives f16 rounding."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fast = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else _tiny_tokenizer()
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True, initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast
