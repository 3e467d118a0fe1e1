"""Merge, GGUF export and the drift check: the model work of export, run by a worker as a queued task.

    merge_adapter(base, adapter, out)        base + LoRA -> one HF folder (safetensors + tokenizer)
    write_gguf(merged, "m.gguf", "q8_0")     HF folder -> GGUF with llama.cpp's convert_hf_to_gguf.py
                                             (f32, f16, q8_0; q4_k_m through llama.cpp's quantizer)
    check_in_llama_cpp(gguf, prompts)        load the GGUF in llama.cpp, answer greedily with its own template
    drift_check(merged, that, prompts)       the merged model in transformers answers the same: how many
                                             replies are identical, the first token that differs
    merge(ref) / export_gguf(ref)            what a merge or GGUF task does for an adapter of the library:
                                             <home>/exports/<name>-merged|-gguf (or the CLI's paths),
                                             a Modelfile and drift-<quant>.json beside the GGUF

The converter and llama.cpp run in child processes (workers/inference/llamacpp.py). Every writer goes
through a temporary path and a rename, so a failure (or a cancel, raised by ``progress``) leaves nothing
half-written; a GGUF llama.cpp cannot load is removed and the export fails with llama.cpp's message, the
merged model staying. ``progress(message)`` is called as each step starts; the task runner
(workers/inference/task.py) counts the steps and raises there when the task is cancelled.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from studio.adapter_types import merge_problem
from studio.adapter_library import folder_bytes
from studio.atomic import atomic_path, replace_dir, temp_beside, write_text
from studio.serving import GGUF_QUANTS, MERGE_DTYPES, write_modelfile

from . import llamacpp

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
    tmp = temp_beside(out_dir)
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
        complete_tokenizer_files(tokenizer, [tokenizer_dir, base_dir], tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"seconds": round(time.perf_counter() - started, 3), "bytes": folder_bytes(out_dir)}


def complete_tokenizer_files(tokenizer, sources: list[str | Path], folder: Path) -> None:
    """Write into a saved ``folder`` what transformers 5's save_pretrained leaves out of a tokenizer and llama.cpp's
    converter reads for a SentencePiece vocabulary (Gemma, Mistral, Phi-3-mini): the ``tokenizer.model`` itself,
    copied from the first of ``sources`` that has it, and ``added_tokens_decoder`` in tokenizer_config.json (which
    added tokens are special: without it ``<start_of_turn>`` is a plain piece to llama.cpp). A ``vocab_file`` there,
    the path of the file loaded, is dropped: the folder carries its own."""
    folder = Path(folder)
    if not (folder / "tokenizer.model").exists():
        source = next((Path(s) / "tokenizer.model" for s in sources if (Path(s) / "tokenizer.model").is_file()), None)
        if source is not None:
            shutil.copyfile(source, folder / "tokenizer.model")
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    config.pop("vocab_file", None)
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {str(i): token.__getstate__()
                                          for i, token in sorted(tokenizer.added_tokens_decoder.items())}
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# GGUF: llama.cpp's converter writes it, llama.cpp's quantizer makes the k-quants

def gguf_problem(model_dir: str | Path) -> str | None:
    """Why GGUF export cannot take this model, in one sentence naming the families it supports (the family
    table's ``gguf`` column, studio/families.py); None when llama.cpp's converter takes it."""
    from studio.families import gguf_problem as family_problem

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return f"{Path(model_dir).name} has no readable config.json, so it is not a Hugging Face model folder"
    return family_problem(config)


def gguf_steps(quant: str, drift: bool, prompts: list[str]) -> int:
    """Progress steps of write_gguf + the llama.cpp check (+ the drift check's transformers side)."""
    return 1 + (quant not in llamacpp.CONVERTER_TYPES) + (drift_steps(prompts) if drift else 1)


_PHI3_NAMES = re.compile(r"phi-?3", re.I)


def gguf_name(model_dir: str | Path, model_name: str | None = None) -> str | None:
    """The name to give the GGUF (``general.name``; None: the converter's own choice), fitted to what llama.cpp
    reads from it. llama.cpp gives Phi-3's special tokens the right-strip Phi-3's own tokenizer has (the newline
    after ``<|user|>`` is no token) only in a GGUF whose name says phi3 or phi-3, and there it looks ``</s>``,
    ``<s>``, ``<unk>`` and ``<|endoftext|>`` up by text, which only Llama 2's SentencePiece vocabulary
    (Phi-3-mini's) has. So a phi3 model with that vocabulary gets " (Phi-3)" after a name without the word, and
    one with a GPT-2 vocabulary (Phi-4, Phi-4-mini: ``tokenizer_class: GPT2Tokenizer``) has the word taken out."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        tokenizer = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return model_name
    if str(config.get("model_type", "")).lower() != "phi3":
        return model_name
    name = model_name or Path(model_dir).name
    if tokenizer.get("tokenizer_class") == "GPT2Tokenizer":
        return _PHI3_NAMES.sub("phi", name)
    return name if _PHI3_NAMES.search(name) else f"{name} (Phi-3)"


def write_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "f16", model_name: str | None = None,
               progress: Progress = _quiet) -> dict:
    """Write an HF folder as a GGUF file with llama.cpp's convert_hf_to_gguf.py; q4_k_m goes through f16
    and llama.cpp's own quantizer. Written next to ``out_file`` and renamed into place at the end."""
    if quant not in GGUF_QUANTS:
        raise ValueError(f"quant must be one of {', '.join(GGUF_QUANTS)}, not {quant!r}")
    if problem := gguf_problem(model_dir):
        raise ValueError(problem)
    out_file = Path(out_file)
    started = time.perf_counter()
    name = gguf_name(model_dir, model_name)
    with atomic_path(out_file) as tmp:
        if quant in llamacpp.CONVERTER_TYPES:
            progress(f"converting to GGUF ({quant}) with llama.cpp's convert_hf_to_gguf.py")
            llamacpp.convert(model_dir, tmp, quant, name)
        else:
            f16 = tmp.with_name(tmp.name + ".f16")
            try:
                progress("converting to GGUF (f16) with llama.cpp's convert_hf_to_gguf.py")
                llamacpp.convert(model_dir, f16, "f16", name)
                progress(f"quantizing to {quant.upper()} with llama.cpp")
                llamacpp.quantize(f16, tmp, quant)
            finally:
                f16.unlink(missing_ok=True)
    return {"seconds": round(time.perf_counter() - started, 3), "bytes": out_file.stat().st_size,
            "converter": llamacpp.converter_label()}


# ---------------------------------------------------------------------------------------------
# drift: the GGUF in llama.cpp against the merged model in transformers, greedy, each with its own template

def drift_steps(prompts: list[str]) -> int:
    return 2 + len(prompts)


def check_in_llama_cpp(gguf_file: str | Path, prompts: list[str], max_new_tokens: int = 32, name: str | None = None,
                       progress: Progress = _quiet) -> dict:
    """Load the GGUF in llama.cpp and answer ``prompts`` greedily (none: only load it). LlamaCppError, with
    llama.cpp's own message, when it cannot."""
    progress(f"llama.cpp loads the GGUF and answers {len(prompts)} golden prompts" if prompts
             else "loading the GGUF in llama.cpp")
    return llamacpp.answer(gguf_file, prompts, max_new_tokens, name=name)


def drift_check(reference_dir: str | Path, gguf: dict, prompts: list[str], max_new_tokens: int = 32,
                progress: Progress = _quiet) -> dict:
    """Compare llama.cpp's greedy replies (``gguf``: what check_in_llama_cpp returned) with the merged
    model's in transformers, answering the same prompts greedily with the chat template of its tokenizer.

    Replies are compared token by token (both sides speak the same vocabulary): the share of identical
    replies and the first token where one differs. Logits are compared at the last prompt position on the
    same input, the GGUF's prompt ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    progress("drift check: loading the merged model in transformers")
    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    stops = _stop_ids(model, tokenizer)
    replies, max_diffs, mean_diffs, same_prompt, same_reply, first = [], [], [], 0, 0, None
    with torch.inference_mode():
        for i, (prompt, theirs) in enumerate(zip(prompts, gguf["answers"]), 1):
            progress(f"drift check: the merged model answers prompt {i} of {len(prompts)}")
            ids = _chat_ids(tokenizer, prompt)
            same_prompt += int(ids == theirs["prompt_ids"])
            logits, theirs_logits = model(torch.tensor([theirs["prompt_ids"]])).logits[0, -1], theirs["logits"]
            n = min(len(logits), len(theirs_logits))  # a padded lm_head may be longer than the GGUF's vocabulary
            diff = (logits[:n] - torch.from_numpy(theirs_logits[:n])).abs()
            max_diffs.append(diff.max().item())
            mean_diffs.append(diff.mean().item())
            ours = _greedy(model, ids, max_new_tokens, stops)
            replies.append((tokenizer.decode([t for t in ours if t not in stops], skip_special_tokens=True),
                            theirs["reply"]))
            if ours == theirs["reply_ids"]:
                same_reply += 1
            elif first is None:
                first = _first_difference(i, ours, theirs, tokenizer)
    return {
        "runtime": llamacpp.runtime_label(),
        "chat_template": "the GGUF's own" if gguf["chat_template"] else "none (plain prompt)",
        "prompts": len(prompts),
        "identical_replies": same_reply,
        "identical_share": round(same_reply / len(prompts), 4) if prompts else None,
        "first_difference": first,
        "identical_prompt_tokens": same_prompt,
        "max_abs_logit_diff": max(max_diffs, default=0.0),
        "mean_abs_logit_diff": sum(mean_diffs) / len(mean_diffs) if mean_diffs else 0.0,
        "max_new_tokens": max_new_tokens,
        "replies": replies,
        "seconds": round(time.perf_counter() - started + gguf.get("seconds", 0.0), 3),
    }


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def _stop_ids(model, tokenizer) -> set[int]:
    """Where a greedy reply ends: the generation config's end-of-sequence ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    return stops


def _greedy(model, ids: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
    """Argmax decoding with the key/value cache, raw logits (no repetition penalty or other processors):
    the same rule the llama.cpp side follows. The stop token, when reached, is the last id."""
    import torch

    reply, cache, step = [], None, torch.tensor([ids])
    for _ in range(max_new_tokens):
        out = model(input_ids=step, cache=cache, use_cache=True)
        cache, token = out.cache, int(out.logits[0, -1].argmax())
        reply.append(token)
        if token in stops:
            break
        step = torch.tensor([[token]])
    return reply


def _first_difference(prompt: int, ours: list[int], theirs: dict, tokenizer) -> dict:
    """Where the two replies to one prompt part: the prompt (1-based), the new-token position (0-based),
    each side's token there (None: that side had stopped) and the common reply before it."""
    at = next((k for k, (a, b) in enumerate(zip(ours, theirs["reply_ids"])) if a != b),
              min(len(ours), len(theirs["reply_ids"])))

    def token(ids, pieces):
        if at >= len(ids):
            return None
        return {"id": ids[at], "text": pieces[at] if pieces else tokenizer.decode([ids[at]])}

    return {"prompt": prompt, "position": at, "before": tokenizer.decode(ours[:at]),
            "merged": token(ours, None), "gguf": token(theirs["reply_ids"], theirs["pieces"])}


# ---------------------------------------------------------------------------------------------
# tasks: an adapter of the library -> merged folder, GGUF, Modelfile, drift report


def merge(ref_value: str, dtype: str = "float32", out: str | Path | None = None, progress: Progress = _quiet) -> dict:
    """base + adapter -> <home>/exports/<name>-merged/, replacing an earlier merge there; or into ``out``
    (the CLI's choice), which must not exist yet. Returns {"path", "bytes", "seconds"}."""
    from studio.adapter_exports import export_paths, mergeable
    from studio.adapter_library import resolve
    from workers.bundled import model_folder

    ref = mergeable(resolve(ref_value))
    merged, _ = export_paths(ref)
    target = Path(out) if out is not None else merged
    result = merge_adapter(model_folder(ref.base_model), ref.folder, target, dtype=dtype,
                           overwrite=out is None or target == merged, progress=progress)
    return {**result, "path": str(target)}


def export_gguf(ref_value: str, quant: str = "q8_0", drift: bool = True, prompts: list[str] | None = None,
                gguf_out: str | Path | None = None, merged_out: str | Path | None = None, dtype: str = "float32",
                progress: Progress = _quiet) -> dict:
    """Merge (reusing a current merge under <home>/exports, or into ``merged_out``), write the GGUF, load it in
    llama.cpp (answering the golden prompts there when ``drift``), put it and a Modelfile in place, and
    compare llama.cpp's replies with the merged model's. ``gguf_out``: a .gguf file or a folder (default
    <home>/exports/<name>-gguf).

    A model of a family the converter does not take fails before the merge, in one sentence. A GGUF llama.cpp
    cannot load is removed and the export fails with llama.cpp's message; the merged folder stays. The drift
    report is written atomically beside the GGUF as drift-<quant>.json, every field of it."""
    from studio.adapter_exports import chat_template, drift_prompts, export_paths, merge_is_current, mergeable
    from studio.adapter_library import resolve
    from workers.bundled import model_folder

    if quant not in GGUF_QUANTS:
        raise ValueError(f"quant must be one of {', '.join(GGUF_QUANTS)}, not {quant!r}")
    ref = mergeable(resolve(ref_value))
    merged_dir, gguf_dir = export_paths(ref)
    reuse = merged_out is None and merge_is_current(merged_dir, ref.folder)
    if problem := gguf_problem(merged_dir if reuse else model_folder(ref.base_model)):
        raise ValueError(problem)
    result: dict = {"name": ref.name}
    if merged_out is not None:
        result["merge"] = merge(ref.ref, dtype=dtype, out=merged_out, progress=progress)
        merged_dir = Path(merged_out)
    elif not reuse:
        result["merge"] = merge(ref.ref, out=merged_dir, progress=progress)
    out = Path(gguf_out) if gguf_out is not None else gguf_dir
    gguf_file = out if out.suffix == ".gguf" else out / f"{ref.name}-{quant}.gguf"
    prompts = (prompts or drift_prompts(ref)) if drift else []
    try:
        with atomic_path(gguf_file) as staged:
            written = write_gguf(merged_dir, staged, quant, model_name=ref.name, progress=progress)
            in_llama_cpp = check_in_llama_cpp(staged, prompts, name=gguf_file.name, progress=progress)
    except llamacpp.LlamaCppError as exc:
        raise llamacpp.LlamaCppError(f"{exc} (the merged model stays in {merged_dir.name})") from exc
    result["gguf"] = {**written, "path": str(gguf_file), "quant": quant}
    modelfile = write_modelfile(gguf_file, gguf_file.parent / "Modelfile", chat_template(merged_dir))
    result["modelfile"] = str(modelfile)
    if drift:
        report = drift_check(merged_dir, in_llama_cpp, prompts, progress=progress)
        text = json.dumps({"quant": quant, "gguf": gguf_file.name, "checked_at": time.time(), **report}, indent=2)
        write_text(gguf_file.parent / f"drift-{quant}.json", text)
        result["drift"] = json.loads(text)  # what read_drift returns later: reply pairs as lists
    return result
