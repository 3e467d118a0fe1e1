"""Export a trained adapter: merge it into the base, write a GGUF, an Ollama Modelfile, serving snippets.

Four steps, each a plain function a worker task can call:

    merge_adapter(base, adapter, out)        base + LoRA -> one HF folder (safetensors + tokenizer)
    write_gguf(merged, "model.gguf", "q8_0") HF Llama folder -> GGUF, with the `gguf` package alone
    write_modelfile(gguf, "Modelfile", ...)  Ollama Modelfile: FROM, TEMPLATE, PARAMETERs, stops
    drift_check(merged, gguf, prompts)       load the GGUF back with transformers and compare

Every writer goes through a temporary path and a rename, so a failure leaves nothing half-written.
torch, transformers, peft and gguf are imported inside the functions: importing this module is cheap.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import time
import uuid
from pathlib import Path

from .adapter_types import merge_problem

MERGE_DTYPES = ("float32", "bfloat16", "float16")
GGUF_QUANTS = ("f16", "q8_0", "f32")

# generation settings as the studio names them (transformers' names) -> Ollama's PARAMETER names
OLLAMA_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
    "repeat_penalty": "repeat_penalty",
    "max_new_tokens": "num_predict",
    "num_predict": "num_predict",
    "seed": "seed",
}

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


# ---------------------------------------------------------------------------------------------
# merge


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "float32", overwrite: bool = False) -> dict:
    """Fold a LoRA or IA3 adapter into its base model and save the result as a standalone HF folder.

    The base is loaded in `dtype` (16 or 32 bit), never 4-bit: an adapter trained with QLoRA merges
    into the full-precision weights, which is what it will be served on. The folder is built next to
    `out_dir` and renamed into place at the end, so a failure leaves no `out_dir` behind.
    """
    if dtype not in MERGE_DTYPES:
        raise ValueError(f"dtype must be one of {MERGE_DTYPES}, not {dtype!r}")
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter_config.json in {adapter_dir}")
    if problem := merge_problem(adapter_dir):
        raise ValueError(problem)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tmp = _sibling_tmp(out_dir)
    try:
        tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))  # tokens added during training
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)  # carries the chat template (chat_template.jinja)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"seconds": round(time.perf_counter() - started, 3), "bytes": _size(out_dir)}


# ---------------------------------------------------------------------------------------------
# GGUF


def write_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "f16") -> dict:
    """Write a Llama-architecture HF folder as a GGUF file that llama.cpp and Ollama can run.

    f32 keeps every tensor in float32; f16 stores 2-D weights in float16; q8_0 stores 2-D weights
    whose rows are a multiple of 32 in Q8_0 (others in float16). Norms (1-D) always stay float32.
    """
    if quant not in GGUF_QUANTS:
        raise ValueError(f"quant must be one of {GGUF_QUANTS}, not {quant!r}")
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    started = time.perf_counter()
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"GGUF export supports Llama-architecture models; this one is {config.get('model_type')!r}")
    shape = _llama_shape(config)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{uuid.uuid4().hex[:8]}.partial")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_llama_metadata(writer, config, shape, quant, name=model_dir.name)
        _add_tokenizer(writer, model_dir, shape["vocab_size"])
        for name, array, qtype in _gguf_tensors(model_dir, config, shape, quant):
            writer.add_tensor(name, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"seconds": round(time.perf_counter() - started, 3), "bytes": out_file.stat().st_size}


def _llama_shape(config: dict) -> dict:
    """The numbers a Llama GGUF header states, named as llama.cpp names them."""
    n_head = config["num_attention_heads"]
    hidden = config["hidden_size"]
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return {
        "vocab_size": config["vocab_size"],
        "context_length": config.get("max_position_embeddings", 2048),
        "embedding_length": hidden,
        "block_count": config["num_hidden_layers"],
        "feed_forward_length": config["intermediate_size"],
        "head_count": n_head,
        "head_count_kv": config.get("num_key_value_heads") or n_head,
        "head_dim": config.get("head_dim") or hidden // n_head,
        "rope_freq_base": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        "rope": rope,
        "rms_eps": float(config.get("rms_norm_eps", 1e-6)),
        "tied": bool(config.get("tie_word_embeddings", False)),
    }


def _add_llama_metadata(writer, config: dict, shape: dict, quant: str, name: str) -> None:
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_name(name)
    writer.add_vocab_size(shape["vocab_size"])
    writer.add_context_length(shape["context_length"])
    writer.add_embedding_length(shape["embedding_length"])
    writer.add_block_count(shape["block_count"])
    writer.add_feed_forward_length(shape["feed_forward_length"])
    writer.add_head_count(shape["head_count"])
    writer.add_head_count_kv(shape["head_count_kv"])
    writer.add_rope_freq_base(shape["rope_freq_base"])
    writer.add_layer_norm_rms_eps(shape["rms_eps"])
    writer.add_rope_dimension_count(shape["head_dim"])
    if shape["head_dim"] != shape["embedding_length"] // shape["head_count"]:
        writer.add_key_length(shape["head_dim"])
        writer.add_value_length(shape["head_dim"])
    rope_type = shape["rope"].get("rope_type", shape["rope"].get("type", "default"))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(shape["rope"]["factor"]))
    elif rope_type not in ("default", "llama3"):  # llama3 travels as the rope_freqs tensor
        raise ValueError(f"GGUF export does not handle rope scaling {rope_type!r}")
    writer.add_file_type(file_type)
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _permute_qk(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py's LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf_tensors(model_dir: Path, config: dict, shape: dict, quant: str):
    """Yield (gguf name, numpy array, raw GGML type or None) for every tensor of the model."""
    import gguf
    import torch
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {model_dir}")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape["block_count"])
    rope_freqs = _llama3_rope_factors(shape)
    if rope_freqs is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs, None
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith(".rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and shape["tied"]:
                    continue  # transformers and llama.cpp tie output to token_embd when it is absent
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ValueError(f"no GGUF name for tensor {hf_name!r}")
                data = handle.get_tensor(hf_name).to(torch.float32).numpy()
                if name.endswith("attn_q.weight"):
                    data = _permute_qk(data, shape["head_count"], shape["head_count"])
                elif name.endswith("attn_k.weight"):
                    data = _permute_qk(data, shape["head_count"], shape["head_count_kv"])
                yield (name, *_encode(data, quant))


def _encode(data, quant: str):
    """The array to store and its raw GGML type (None: let the writer infer F16/F32 from numpy)."""
    import gguf
    import numpy as np

    if data.ndim < 2 or quant == "f32":
        return np.ascontiguousarray(data, dtype=np.float32), None
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, qtype), qtype
    return np.ascontiguousarray(data, dtype=np.float16), None


def _llama3_rope_factors(shape: dict):
    """Llama 3.x stretches long wavelengths; llama.cpp reads the per-frequency factors from a tensor."""
    import numpy as np

    rope = shape["rope"]
    if rope.get("rope_type", rope.get("type")) != "llama3":
        return None
    dim, base = shape["head_dim"], shape["rope_freq_base"]
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's "gpt2" model: tokens, types, merges, special ids."""
    import gguf
    from transformers import AutoTokenizer

    spec_file = model_dir / "tokenizer.json"
    if not spec_file.is_file():
        raise ValueError(f"GGUF export needs a fast tokenizer (tokenizer.json) in {model_dir}")
    spec = json.loads(spec_file.read_text())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ValueError("GGUF export supports byte-level BPE tokenizers (GPT-2 style) only")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attribute, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                           ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, attribute, None)
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for how text is split before BPE (tokenizer.ggml.pre)."""
    if not pre:
        return "default"
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds and kinds[0] == "Split":
        try:  # transformers keeps the known split patterns by llama.cpp name
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            return "default"
        pattern = steps[0].get("pattern", {}).get("Regex")
        for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
            if regex == pattern:
                return name
    return "default"


# ---------------------------------------------------------------------------------------------
# Ollama


def write_modelfile(gguf_file: str | Path, out_path: str | Path, chat_template: str | None,
                    generation: dict | None = None) -> Path:
    """An Ollama Modelfile next to (or pointing at) the GGUF: FROM, TEMPLATE, SYSTEM, PARAMETERs, stops.

    ChatML templates (<|im_start|> ... <|im_end|>) are translated to Ollama's Go template; for any
    other template TEMPLATE is left out and Ollama falls back to the GGUF's own chat template.
    """
    gguf_file, out_path = Path(gguf_file), Path(out_path)
    source = os.path.relpath(gguf_file.resolve(), out_path.resolve().parent)
    lines = [f"FROM ./{source}" if not source.startswith("..") else f"FROM {gguf_file.resolve()}", ""]
    stops: list[str] = []
    if chat_template and CHATML_START in chat_template:
        lines += ['TEMPLATE """{{ if .System }}<|im_start|>system',
                  "{{ .System }}<|im_end|>",
                  "{{ end }}{{ if .Prompt }}<|im_start|>user",
                  "{{ .Prompt }}<|im_end|>",
                  "{{ end }}<|im_start|>assistant",
                  '{{ .Response }}<|im_end|>', '"""']
        system = _default_system_prompt(chat_template)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        lines.append("")
        stops += [CHATML_START, CHATML_END]
    elif chat_template:
        lines += ["# chat template not ChatML: Ollama uses the template stored in the GGUF", ""]
    for key, value in (generation or {}).items():
        if key in OLLAMA_PARAMETERS and value is not None:
            lines.append(f"PARAMETER {OLLAMA_PARAMETERS[key]} {_number(value)}")
    extra = (generation or {}).get("stop") or []
    for stop in dict.fromkeys(stops + ([extra] if isinstance(extra, str) else list(extra))):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, out_path)
    return out_path


def _default_system_prompt(chat_template: str) -> str | None:
    """The system message a ChatML template inserts when the conversation has none, if it states one."""
    match = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", chat_template, re.S)
    if not match or "{{" in match.group(1) or "'" in match.group(1):
        return None
    return match.group(1).replace("\\n", "\n").strip() or None


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{float(value):g}"


# ---------------------------------------------------------------------------------------------
# drift


def drift_check(reference_dir: str | Path, gguf_file: str | Path, prompts: list[str],
                max_new_tokens: int = 32) -> dict:
    """Load the GGUF back with transformers and compare it with the HF model it came from.

    Each prompt is wrapped in the chat template. Logits are compared on the same input ids (the
    reference tokenizer's); replies are generated greedily, each model with its own tokenizer, so the
    tokenizer round trip is checked too.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    started = time.perf_counter()
    ref_tok = AutoTokenizer.from_pretrained(reference_dir)
    ref = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    gguf_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                      dtype=torch.float32).eval()
    replies, max_diffs, mean_diffs, same_ids = [], [], [], 0
    with torch.inference_mode():
        for prompt in prompts:
            ref_ids = _chat_ids(ref_tok, prompt)
            gguf_ids = _chat_ids(gguf_tok, prompt)
            same_ids += int(torch.equal(ref_ids, gguf_ids))
            diff = (ref(ref_ids).logits[0, -1] - gguf_model(ref_ids).logits[0, -1]).abs()
            max_diffs.append(diff.max().item())
            mean_diffs.append(diff.mean().item())
            replies.append((_greedy(ref, ref_tok, ref_ids, max_new_tokens),
                            _greedy(gguf_model, gguf_tok, gguf_ids, max_new_tokens)))
    return {
        "identical_replies": sum(a == b for a, b in replies),
        "prompts": len(prompts),
        "identical_prompt_tokens": same_ids,
        "max_abs_logit_diff": max(max_diffs, default=0.0),
        "mean_abs_logit_diff": sum(mean_diffs) / len(mean_diffs) if mean_diffs else 0.0,
        "replies": replies,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _chat_ids(tokenizer, prompt: str):
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def _greedy(model, tokenizer, ids, max_new_tokens: int) -> str:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# serving


def serving_snippets(base_model: str, adapter_dir: str, name: str, gguf_file: str | None = None) -> dict[str, str]:
    """Copy-paste commands to serve the result: vLLM with the adapter, peft in Python, Ollama and llama.cpp."""
    q = shlex.quote
    rank = _adapter_rank(adapter_dir)
    vllm = f"vllm serve {q(base_model)} --enable-lora --lora-modules {q(f'{name}={adapter_dir}')}"
    if rank and rank > 16:  # vLLM's default --max-lora-rank is 16
        vllm += f" --max-lora-rank {rank}"
    snippets = {
        "vllm": vllm,
        "openai": (
            "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d "
            + q(json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]}))
        ),
        "peft": "\n".join([
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"tokenizer = AutoTokenizer.from_pretrained({base_model!r})",
            f"model = AutoModelForCausalLM.from_pretrained({base_model!r}, dtype=\"auto\", device_map=\"auto\")",
            f"model = PeftModel.from_pretrained(model, {adapter_dir!r})",
            "messages = [{\"role\": \"user\", \"content\": \"Hello!\"}]",
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,",
            "                                       return_tensors=\"pt\").to(model.device)",
            "output = model.generate(**inputs, max_new_tokens=128)",
            "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        ]),
    }
    if gguf_file:
        folder = os.path.dirname(gguf_file) or "."
        snippets["ollama"] = f"cd {q(folder)} && ollama create {q(name)} -f Modelfile && ollama run {q(name)}"
        snippets["llama_cpp"] = f"llama-server -m {q(gguf_file)} --jinja --port 8080"
    return snippets


def _adapter_rank(adapter_dir: str) -> int | None:
    try:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(ranks) or None


# ---------------------------------------------------------------------------------------------
# files


def _sibling_tmp(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an existing one is swapped out, then removed."""
    old = None
    if target.exists():
        old = _sibling_tmp(target)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
