"""Serving an adapter or its exports, torch-free: the export choices, the Ollama Modelfile, the drift report
in a sentence, and copy-paste serving commands.

    MERGE_DTYPES / GGUF_QUANTS               what a merge and a GGUF export may be asked for
    write_modelfile(gguf, "Modelfile", ...)  Ollama Modelfile: FROM, TEMPLATE, PARAMETERs, stops (written atomically)
    drift_sentence(report)                   a drift report (drift-<quant>.json) in one sentence
    serving_snippets(base, adapter, name)    vLLM, peft, Ollama and llama.cpp commands

The model work (merge, GGUF through llama.cpp's converter, the drift check in llama.cpp) runs on a worker
as a queued task: workers/inference/export.py. Where an adapter's exports live: studio.adapter_exports.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from .atomic import write_text


MERGE_DTYPES = ("float32", "bfloat16", "float16")
GGUF_QUANTS = ("f16", "q8_0", "q4_k_m", "f32")  # q4_k_m: llama.cpp's quantizer, from an f16 conversion

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
# Ollama


def write_modelfile(gguf_file: str | Path, out_path: str | Path, chat_template: str | None,
                    generation: dict | None = None) -> Path:
    """An Ollama Modelfile next to (or pointing at) the GGUF: FROM, TEMPLATE, SYSTEM, PARAMETERs, stops.

    ChatML templates (<|im_start|> ... <|im_end|>) are translated to Ollama's Go template; for any
    other family's template TEMPLATE is left out, and the Modelfile says so: Ollama then derives it from the
    chat template the converter stored in the GGUF (tokenizer.chat_template), the one the drift check ran.
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
        lines += ["# No TEMPLATE here: Ollama derives it from the chat template stored in the GGUF",
                  "# (tokenizer.chat_template), the model's own, which the export's drift check answered with.", ""]
    for key, value in (generation or {}).items():
        if key in OLLAMA_PARAMETERS and value is not None:
            lines.append(f"PARAMETER {OLLAMA_PARAMETERS[key]} {_number(value)}")
    extra = (generation or {}).get("stop") or []
    for stop in dict.fromkeys(stops + ([extra] if isinstance(extra, str) else list(extra))):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return write_text(Path(out_path), "\n".join(lines).rstrip() + "\n")


def drift_sentence(report: dict) -> str:
    """``Drift check (q8_0) in llama.cpp: 2/3 identical greedy replies (67%); first difference: prompt 3, token
    12, merged ' the' vs GGUF ' a'.`` Reports written before the check ran in llama.cpp say what they compared."""
    quant, prompts, same = report.get("quant", "?"), report.get("prompts", 0), report.get("identical_replies", 0)
    where = "llama.cpp" if report.get("runtime") else "transformers (GGUF loaded back)"
    text = f"Drift check ({quant}) in {where}: {same}/{prompts} identical greedy replies"
    if prompts:
        text += f" ({same / prompts:.0%})"
    first = report.get("first_difference")
    if first:
        shown = lambda side: json.dumps(side["text"], ensure_ascii=False) if side else "(stopped)"  # noqa: E731
        text += (f"; first difference: prompt {first['prompt']}, token {first['position'] + 1}, "
                 f"merged {shown(first.get('merged'))} vs GGUF {shown(first.get('gguf'))}")
    elif "first_difference" in report and prompts:
        text += "; no token differs"
    if report.get("max_abs_logit_diff") is not None:
        text += f"; max |logit diff| {report['max_abs_logit_diff']:.4f}"
    return text + "."


def _default_system_prompt(chat_template: str) -> str | None:
    """The system message a ChatML template inserts when the conversation has none, if it states one."""
    match = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", chat_template, re.S)
    if not match or "{{" in match.group(1) or "'" in match.group(1):
        return None
    return match.group(1).replace("\\n", "\n").strip() or None


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{float(value):g}"


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
