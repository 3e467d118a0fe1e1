"""Merge, GGUF export and the drift check: the model work of export, run by a worker as a queued task.

    merge_adapter(base, adapter, out)        base + LoRA -> one HF folder (safetensors + tokenizer)
    write_gguf(merged, "model.gguf", "q8_0") HF Llama folder -> GGUF, with the `gguf` package alone
    drift_check(merged, gguf, prompts)       load the GGUF back with transformers and compare
    merge(ref) / export_gguf(ref)            what a merge or GGUF task does for an adapter of the library:
                                             <home>/exports/<name>-merged|-gguf (or the CLI's paths),
                                             a Modelfile and drift-<quant>.json beside the GGUF

Every writer goes through a temporary path and a rename, so a failure (or a cancel, raised by
``progress``) leaves nothing half-written. ``progress(message)`` is called as each step starts; the
task runner (workers/inference/task.py) counts the steps and raises there when the task is cancelled.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from studio.adapter_types import merge_problem
from studio.export import GGUF_QUANTS, MERGE_DTYPES, _replace_dir, _sibling_tmp, _size, write_modelfile

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The progress of a call outside a task: nothing to report, nothing to cancel."""


# ---------------------------------------------------------------------------------------------
# merge

MERGE_STEPS = 5


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "float32", overwrite: bool = False, progress: Progress = _quiet) -> dict:
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
        progress("loading the tokenizer")
        tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        progress(f"loading the base model in {dtype}")
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))  # tokens added during training
        progress("attaching the adapter")
        model = PeftModel.from_pretrained(model, adapter_dir)
        progress("folding the adapter into the weights")
        model = model.merge_and_unload()
        progress("saving the merged model")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)  # carries the chat template (chat_template.jinja)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"seconds": round(time.perf_counter() - started, 3), "bytes": _size(out_dir)}




GGUF_STEPS = 2


def write_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "f16", progress: Progress = _quiet) -> dict:
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
        progress(f"converting the tensors to {quant}")
        _add_llama_metadata(writer, config, shape, quant, name=model_dir.name)
        _add_tokenizer(writer, model_dir, shape["vocab_size"])
        for name, array, qtype in _gguf_tensors(model_dir, config, shape, quant):
            writer.add_tensor(name, array, raw_dtype=qtype)
        progress("writing the GGUF file")
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




def drift_steps(prompts: list[str]) -> int:
    return 2 + len(prompts)


def drift_check(reference_dir: str | Path, gguf_file: str | Path, prompts: list[str],
                max_new_tokens: int = 32, progress: Progress = _quiet) -> dict:
    """Load the GGUF back with transformers and compare it with the HF model it came from.

    Each prompt is wrapped in the chat template. Logits are compared on the same input ids (the
    reference tokenizer's); replies are generated greedily, each model with its own tokenizer, so the
    tokenizer round trip is checked too.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    started = time.perf_counter()
    progress("drift check: loading the merged model")
    ref_tok = AutoTokenizer.from_pretrained(reference_dir)
    ref = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    progress("drift check: loading the GGUF back")
    gguf_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                      dtype=torch.float32).eval()
    replies, max_diffs, mean_diffs, same_ids = [], [], [], 0
    with torch.inference_mode():
        for i, prompt in enumerate(prompts, 1):
            progress(f"drift check: prompt {i} of {len(prompts)}")
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
# tasks: an adapter of the library -> merged folder, GGUF, Modelfile, drift report


def merge(ref_value: str, dtype: str = "float32", out: str | Path | None = None, progress: Progress = _quiet) -> dict:
    """base + adapter -> <home>/exports/<name>-merged/, replacing an earlier merge there; or into ``out``
    (the CLI's choice), which must not exist yet. Returns {"path", "bytes", "seconds"}."""
    from studio.adapters import _export_paths, _mergeable, resolve
    from studio.models import resolve_model

    ref = _mergeable(resolve(ref_value))
    merged, _ = _export_paths(ref)
    target = Path(out) if out is not None else merged
    result = merge_adapter(resolve_model(ref.base_model), ref.folder, target, dtype=dtype,
                           overwrite=out is None or target == merged, progress=progress)
    return {**result, "path": str(target)}


def export_gguf(ref_value: str, quant: str = "q8_0", drift: bool = True, prompts: list[str] | None = None,
                gguf_out: str | Path | None = None, merged_out: str | Path | None = None, dtype: str = "float32",
                progress: Progress = _quiet) -> dict:
    """Merge (reusing a current merge under <home>/exports, or into ``merged_out``), write the GGUF and a
    Modelfile beside it, check drift. ``gguf_out``: a .gguf file or a folder (default <home>/exports/<name>-gguf).

    The drift report is written atomically beside the GGUF as drift-<quant>.json, every field of it."""
    from studio.adapters import _chat_template, _drift_prompts, _export_paths, _merge_is_current, _mergeable, resolve

    if quant not in GGUF_QUANTS:
        raise ValueError(f"quant must be one of {', '.join(GGUF_QUANTS)}, not {quant!r}")
    ref = _mergeable(resolve(ref_value))
    merged_dir, gguf_dir = _export_paths(ref)
    result: dict = {"name": ref.name}
    if merged_out is not None:
        result["merge"] = merge(ref.ref, dtype=dtype, out=merged_out, progress=progress)
        merged_dir = Path(merged_out)
    elif not _merge_is_current(merged_dir, ref.folder):
        result["merge"] = merge(ref.ref, out=merged_dir, progress=progress)
    out = Path(gguf_out) if gguf_out is not None else gguf_dir
    gguf_file = out if out.suffix == ".gguf" else out / f"{ref.name}-{quant}.gguf"
    result["gguf"] = {**write_gguf(merged_dir, gguf_file, quant, progress=progress), "path": str(gguf_file)}
    modelfile = write_modelfile(gguf_file, gguf_file.parent / "Modelfile", _chat_template(merged_dir))
    result["modelfile"] = str(modelfile)
    if drift:
        report = drift_check(merged_dir, gguf_file, prompts or _drift_prompts(ref), progress=progress)
        text = json.dumps({"quant": quant, "gguf": gguf_file.name, "checked_at": time.time(), **report}, indent=2)
        tmp = gguf_file.parent / f".drift-{quant}.json.{uuid.uuid4().hex[:8]}.partial"
        tmp.write_text(text)
        os.replace(tmp, gguf_file.parent / f"drift-{quant}.json")
        result["drift"] = json.loads(text)  # what read_drift returns later: reply pairs as lists
    return result
