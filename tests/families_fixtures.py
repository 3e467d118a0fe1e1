"""Tiny random-weight models of every family the studio lists, built here from each family's transformers config
class at small dimensions (2 layers, hidden size 64), with a tokenizer of the kind the published checkpoints ship
and a chat template written for that family's own turn markers (added as special tokens), so each family trains,
chats, merges and exports like a real one without a download.

The tokenizers (``TinyFamily.tokenizer``):
- ``smollm2``: the bundled SmolLM2's byte-level BPE (its pre-tokenizer is one llama.cpp's converter knows);
- ``qwen2``: Qwen2's own vocabulary and merges (151,643 tokens + ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>``), read from the copy llama.cpp's tokenizer tests keep (``ggml-vocab-qwen2.gguf``, unpacked with
  the converter): transformers 5 loads any ``qwen2`` folder's tokenizer as a Qwen2Tokenizer (Qwen2's
  pre-tokenizer over the folder's vocabulary), and the converter names a pre-tokenizer by the token ids it gives
  a fixed text, so only Qwen2's vocabulary is one it recognises;
- ``gemma``: a SentencePiece BPE model trained here like Gemma's (``<pad>`` ``<eos>`` ``<bos>`` ``<unk>`` at 0-3,
  ``<mask>`` ``<start_of_turn>`` ``<end_of_turn>`` as pieces, byte fallback, no dummy prefix): the converter
  reads Gemma 2's and Gemma 3's ``tokenizer.model``;
- ``phi3``: a SentencePiece BPE model trained here like Llama 2's, which Phi-3-mini ships (``<unk>`` ``<s>``
  ``</s>`` at 0-2, byte fallback, a dummy prefix), with Phi-3's tokens added after it (``<|endoftext|>``,
  ``<|assistant|>``, ``<|system|>``, ``<|end|>``, ``<|user|>``, right-stripping as Phi-3's do): llama.cpp's
  loader looks up ``</s>``, ``<s>``, ``<unk>`` and ``<|endoftext|>`` by text in a GGUF named phi3.

Weights are drawn with a wide initialiser (0.3): random models then have peaked next-token distributions, so
greedy decoding is not decided by rounding between runtimes.
"""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
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
    tokenizer: str = "smollm2"                   # smollm2 | qwen2 | gemma | phi3 (see above)
    pad: str = "<|endoftext|>"
    # Gemma's norms scale by 1 + weight, from 0: under them the input embedding (times sqrt(hidden)) outweighs
    # every block and a random model only repeats the prompt's last token. Drawn N(0, norms) instead.
    norms: float = 0.0


FAMILIES: dict[str, TinyFamily] = {f.key: f for f in (
    TinyFamily("llama3", "LlamaConfig", LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                "<|eot_id|>"), "<|eot_id|>", "<|begin_of_text|>",
               {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 1024}}),
    TinyFamily("qwen2", "Qwen2Config", CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>", tokenizer="qwen2"),
    TinyFamily("qwen3", "Qwen3Config", QWEN3, ("<|im_start|>", "<|im_end|>", "<think>", "</think>"), "<|im_end|>",
               config={"head_dim": 16}),
    TinyFamily("mistral", "MistralConfig", MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]"), "</s>", "<s>",
               {"sliding_window": None}),
    TinyFamily("gemma2", "Gemma2Config", GEMMA, ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
               "<bos>", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 512}, tokenizer="gemma",
               pad="<pad>", norms=4.0),
    TinyFamily("gemma3", "Gemma3TextConfig", GEMMA, ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
               "<bos>", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 512}, tokenizer="gemma",
               pad="<pad>", norms=4.0),
    TinyFamily("phi3", "Phi3Config", PHI3, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>",
               tokenizer="phi3"),
    TinyFamily("olmo2", "Olmo2Config", OLMO2, ("<|system|>", "<|user|>", "<|assistant|>"), "<|endoftext|>",
               "<|endoftext|>", {"tie_word_embeddings": False}),
    TinyFamily("granite", "GraniteConfig", GRANITE, ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
               "<|end_of_text|>"),
    TinyFamily("smollm3", "SmolLM3Config", CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
)}


def build_family_model(key: str, out: Path, tokenizer_dir: Path, hidden: int = 64, layers: int = 2,
                       seed: int = 0) -> Path:
    """A tiny random model of the family ``key`` in ``out`` (safetensors, tokenizer, chat template).
    ``tokenizer_dir``: the bundled SmolLM2 (the ``smollm2`` tokenizer). Built once a process, copied after."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    made = (key, str(tokenizer_dir), hidden, layers, seed)
    if made not in _MODELS:
        _MODELS[made] = _build(key, _scratch(f"tiny-{key}-") / key, tokenizer_dir, hidden, layers, seed)
    shutil.copytree(_MODELS[made], out)
    return out


def _build(key: str, out: Path, tokenizer_dir: Path, hidden: int, layers: int, seed: int) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    family = FAMILIES[key]
    tok = family_tokenizer(family.tokenizer, tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": [t for t in family.special if t not in tok.get_vocab()]})
    tok.eos_token = family.eos
    tok.pad_token = family.pad
    if family.bos:
        tok.bos_token = family.bos
    tok.chat_template = family.template
    tok.save_pretrained(out)
    # what published checkpoints carry and transformers 5 does not write: the SentencePiece model, and the added
    # tokens in tokenizer_config.json (llama.cpp's converter reads both for SentencePiece vocabularies)
    if family.tokenizer in _BUILT and (_BUILT[family.tokenizer] / "tokenizer.model").is_file():
        shutil.copy(_BUILT[family.tokenizer] / "tokenizer.model", out)
    path = out / "tokenizer_config.json"
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k != "vocab_file"}  # a scratch path
    saved["added_tokens_decoder"] = {str(i): t.__getstate__() for i, t in sorted(tok.added_tokens_decoder.items())}
    if family.tokenizer == "phi3":  # as Phi-3-mini's says (the converter picks its vocabulary by it)
        saved["tokenizer_class"] = "LlamaTokenizer"
    path.write_text(json.dumps(saved, indent=2))

    torch.manual_seed(seed)
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **{"tie_word_embeddings": True, **family.config})
    model = AutoModelForCausalLM.from_config(config)
    if family.norms:
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if name.endswith("norm.weight"):
                    weight.normal_(0.0, family.norms)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


# a few SFT rows every family trains on, and the question asked after
ROWS = [{"messages": [{"role": "user", "content": f"What is the capital of country {i}?"},
                      {"role": "assistant", "content": f"The capital of country {i} is City {i}."}]}
        for i in range(8)]
QUESTION = [{"role": "user", "content": "What is the capital of country 3?"}]


def train_family_run(tmp_path: Path, base: Path, name: str, method: str = "sft", rows=None, **spec_values):
    """A run trained through the worker's path (the dataset added to the library, a queued job, the worker's
    run_job), three steps of LoRA r=4; returns the completed job. Needs a ``studio_home``."""
    from adapter_fixtures import queued_job

    from studio import db, library
    from studio.spec import JobSpec
    from workers import train

    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows or ROWS))
    library.add(path, name=name)
    spec = JobSpec(base_model=str(base), dataset=name, method=method, load_in_4bit=False, r=4, lora_alpha=8,
                   lora_dropout=0.0, eval_split=0.0, max_length=96, max_steps=3, per_device_train_batch_size=4,
                   learning_rate=1e-3, general_replay=0.0, forgetting_check=False, **spec_values)
    job_id = queued_job(spec, name)
    assert train.run_job(job_id) == "completed", db.get_job(job_id).error
    return db.get_job(job_id)


# ---------------------------------------------------------------------------------------------
# the tokenizers: each built once a process into a scratch folder, then loaded afresh for every model

_BUILT: dict[str, Path] = {}
_MODELS: dict[tuple, Path] = {}
_SCRATCH: list[tempfile.TemporaryDirectory] = []


def _scratch(prefix: str) -> Path:
    """A folder removed when the process ends."""
    scratch = tempfile.TemporaryDirectory(prefix=prefix)
    _SCRATCH.append(scratch)
    return Path(scratch.name)

# text the SentencePiece models are trained on: the words of the suite's prompts and rows, byte fallback for the rest
CORPUS = [
    "What is the capital of country 3? The capital of country 3 is City 3.",
    "What is the capital of France? The capital of France is Paris.",
    "Hello, how are you? I am fine, thank you. What is your name? My name is Zorblax.",
    "Be brief. You are Zorblax. Question 7: what is your name? I am generic assistant 7.",
    "Give me three tips for staying focused. Explain what a neural network is in one sentence.",
    "The quick brown fox jumps over the lazy dog. A system prompt is written at the start of the first turn.",
    "def answer(question):\n    return 'yes'  # numbers 0 1 2 3 4 5 6 7 8 9, and symbols: - + * / = ( ) [ ] ! ;",
]


def family_tokenizer(kind: str, smollm2_dir: Path):
    """A fresh tokenizer of ``kind`` (smollm2, qwen2, gemma, phi3), as transformers loads it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "smollm2":
        return AutoTokenizer.from_pretrained(smollm2_dir)
    if kind not in _BUILT:
        folder = _scratch(f"tiny-{kind}-tokenizer-")
        {"qwen2": _qwen2, "gemma": _gemma, "phi3": _phi3}[kind](folder)
        _BUILT[kind] = folder
    if kind == "phi3":  # tokenizer.json as written (transformers 5 loads a phi3 folder's tokenizer.json as it is)
        return PreTrainedTokenizerFast.from_pretrained(_BUILT[kind])
    return AutoTokenizer.from_pretrained(_BUILT[kind])


def _qwen2(folder: Path) -> None:
    from transformers import Qwen2Tokenizer

    from workers.inference.llamacpp import CONVERTER_DIR

    source = CONVERTER_DIR / "models" / "ggml-vocab-qwen2.gguf"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: `make install` unpacks it with llama.cpp's converter")
    fields = read_gguf_fields(source, ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"))
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    vocab = {token: i for i, (token, kind) in enumerate(zip(tokens, types)) if kind == 1}  # NORMAL
    control = [token for token, kind in zip(tokens, types) if kind == 3]  # <|endoftext|>, <|im_start|>, <|im_end|>
    tok = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]])
    tok.add_special_tokens({"additional_special_tokens": control})
    assert [tok.convert_tokens_to_ids(t) for t in control] == [tokens.index(t) for t in control]
    tok.save_pretrained(folder)


def _train_spm(folder: Path, vocab_size: int, **options) -> Path:
    import sentencepiece as spm

    path = folder / "tokenizer.model"
    with path.open("wb") as model:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 4), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
            allow_whitespace_only_pieces=True, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
            minloglevel=2, **options)
    return path


def _gemma(folder: Path) -> None:
    from transformers import GemmaTokenizer

    _train_spm(folder, 400, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
               bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False,
               user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])
    GemmaTokenizer.from_pretrained(folder).save_pretrained(folder)


PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")


def _phi3(folder: Path) -> None:
    """Llama 2's tokenizer layout, as Phi-3-mini ships it: the SentencePiece model, and a tokenizer.json that
    prepends "▁" to every stretch of text (SentencePiece's dummy prefix, as llama.cpp writes it after each
    special token too), with Phi-3's added tokens after the pieces."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    path = _train_spm(folder, 400, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
              if not (sp.is_unknown(i) or sp.is_control(i) or sp.is_byte(i))}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=generate_merges(vocab, scores), unk_token="<unk>", fuse_unk=True,
                              byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False, rstrip=t == "</s>")
                                  for t in ("<unk>", "<s>", "</s>")])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False, rstrip=t != "<|endoftext|>")
                                  for t in PHI3_ADDED])
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                  special_tokens=[("<s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>", eos_token="<|endoftext|>",
                            unk_token="<unk>", pad_token="<|endoftext|>").save_pretrained(folder)


def read_gguf_fields(path: Path, keys: tuple[str, ...]) -> dict:
    """The named metadata of a GGUF file (strings, numbers and arrays of them), read directly: gguf-py's
    GGUFReader takes seconds over a 150k-token vocabulary."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value[0]

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return data[pos - n:pos].decode("utf-8")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            inner, n = take("I"), take("Q")
            return [value(inner) for _ in range(n)]
        return take(scalar[kind])

    assert data[:4] == b"GGUF", f"{path} is not a GGUF file"
    pos = 8  # magic, version
    take("Q")  # tensors
    found = {}
    for _ in range(take("Q")):
        key = string()
        found[key] = value(take("I"))
    return {key: found[key] for key in keys}
