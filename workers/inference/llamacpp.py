"""llama.cpp, the runtime GGUF users run: its converter, its quantizer, and greedy replies from a GGUF.

    CONVERTER_DIR                          <venv>/llama.cpp: convert_hf_to_gguf.py + conversion/ + gguf-py/,
                                           unpacked from the llama-cpp-python sdist at install (install_converter),
                                           with models/ggml-vocab-qwen2.gguf (VOCABS: the tests' Qwen2 vocabulary)
    convert(model_dir, out, "f16")         HF folder -> GGUF with convert_hf_to_gguf.py (f32, f16, q8_0)
    quantize(src, out, "q4_k_m")           GGUF -> q8_0 or k-quant GGUF with llama.cpp's llama_model_quantize
    answer(gguf, prompts, n)               load the GGUF in llama.cpp, answer each prompt greedily with the
                                           GGUF's own chat template: prompt ids, reply ids, last-position logits

Each runs in a child process with this venv's python: a file llama.cpp cannot read may abort its process, and
what llama.cpp or the converter said is the child's log, which a failure (LlamaCppError) quotes.
``python -m workers.inference.llamacpp install-converter`` is the install step (Makefile, Dockerfile).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

CONVERTER_DIR = Path(sys.prefix) / "llama.cpp"
CONVERTER = CONVERTER_DIR / "convert_hf_to_gguf.py"
PACKAGE = "llama-cpp-python"
CONVERTER_TYPES = ("f32", "f16", "q8_0")        # written by the converter itself
QUANTIZER_TYPES = {"q8_0": 7, "q4_k_m": 15}      # written by llama_model_quantize from an f16 GGUF (LLAMA_FTYPE_*)
# published vocabularies that ship in the sdist (llama.cpp's tokenizer tests read them): the suite builds its tiny
# Qwen2.5-shaped model on Qwen2's own vocabulary, the only one whose pre-tokenizer the converter recognises for qwen2
VOCABS = ("ggml-vocab-qwen2.gguf",)
CONTEXT = 4096                                   # llama.cpp's context for the drift check: prompt + reply
ANSWER_FAILED = 3                                # the child's exit status when the file loaded but answering failed


class LlamaCppError(RuntimeError):
    """The converter or llama.cpp failed; the message is what it said."""


def version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def converter_label() -> str:
    return f"llama.cpp's convert_hf_to_gguf.py ({PACKAGE} {version() or '?'})"


def runtime_label() -> str:
    return f"llama.cpp ({PACKAGE} {version() or '?'})"


# ---------------------------------------------------------------------------------------------
# the parent side: run a child, turn its log into one sentence


def convert(model_dir: str | Path, out_file: str | Path, outtype: str, model_name: str | None = None) -> None:
    """convert_hf_to_gguf.py MODEL --outfile OUT --outtype TYPE, with this venv's python and torch."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not {outtype!r}")
    if not CONVERTER.is_file():
        raise LlamaCppError(f"llama.cpp's converter is not installed at {CONVERTER_DIR}; run `make install`")
    unpacked = (CONVERTER_DIR / "VERSION").read_text().strip() if (CONVERTER_DIR / "VERSION").is_file() else "?"
    if unpacked != f"{PACKAGE}=={version()}":
        raise LlamaCppError(f"llama.cpp's converter in {CONVERTER_DIR} came with {unpacked}, but the runtime is "
                            f"{PACKAGE}=={version()}; run `make install`")
    command = [sys.executable, str(CONVERTER), str(model_dir), "--outfile", str(out_file), "--outtype", outtype]
    if model_name:
        command += ["--model-name", model_name]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode != 0 or not Path(out_file).is_file():
        raise LlamaCppError(f"llama.cpp's converter failed: {converter_message(done.stderr)}")


def quantize(src: str | Path, out_file: str | Path, qtype: str) -> None:
    """A GGUF (f16 or f32) -> ``qtype`` with llama.cpp's own quantizer, in a child process."""
    if qtype not in QUANTIZER_TYPES:
        raise ValueError(f"llama.cpp quantizes here to {', '.join(QUANTIZER_TYPES)}, not {qtype!r}")
    done = _child("quantize", str(src), str(out_file), qtype)
    if done.returncode != 0 or not Path(out_file).is_file():
        raise LlamaCppError(f"llama.cpp could not quantize to {qtype.upper()}: {llama_message(done.stderr)}")


def answer(gguf_file: str | Path, prompts: list[str], max_new_tokens: int = 32, threads: int | None = None,
           name: str | None = None) -> dict:
    """Load the GGUF in llama.cpp and answer each prompt greedily (argmax) with the GGUF's own chat template.

    Returns {"chat_template": bool, "load_seconds", "seconds", "answers": [{"prompt_ids", "reply_ids",
    "pieces", "reply", "logits"}]}: ``logits`` (a float32 numpy array) are the last prompt position's. With no
    prompts it only loads the file: the check that llama.cpp can run it. ``name``: the file as a failure names
    it (a file checked before it is renamed into place)."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="studio-llamacpp-") as scratch:
        request, response = Path(scratch) / "request.json", Path(scratch) / "response.json"
        request.write_text(json.dumps({"gguf": str(gguf_file), "prompts": prompts, "max_new_tokens": max_new_tokens,
                                       "n_ctx": CONTEXT, "threads": threads or _cores()}))
        done = _child("answer", str(request), str(response))
        shown = name or Path(gguf_file).name
        if done.returncode == ANSWER_FAILED:
            raise LlamaCppError(f"llama.cpp loaded {shown} but could not answer: {llama_message(done.stderr)}")
        if done.returncode != 0 or not response.is_file():
            raise LlamaCppError(f"llama.cpp could not load {shown}: {llama_message(done.stderr)}")
        result = json.loads(response.read_text())
        logits = np.load(Path(scratch) / "logits.npy") if prompts else []
    for item, row in zip(result["answers"], logits):
        item["logits"] = row
    return result


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", __name__, *args], capture_output=True, text=True, errors="replace")


_ERROR = re.compile(r"error|failed|invalid|cannot|unable|not supported|GGML_ASSERT|exception", re.I)
_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")


def converter_message(log: str) -> str:
    """The converter's reason in one line: the exception it raised, else its last ERROR line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line.split(":", 2)[-1].strip()
    return lines[-1] if lines else "it stopped without a message"


def llama_message(log: str) -> str:
    """llama.cpp's own words for a failure: its first two error lines (what went wrong, then where), joined."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    picked = list(dict.fromkeys(line for line in lines if _ERROR.search(line)))
    return "; ".join(picked[:2]) if picked else (lines[-1] if lines else "it stopped without a message")


# ---------------------------------------------------------------------------------------------
# the child side: llama.cpp in this process, its log kept and printed (stderr) when something fails


def _keep_log() -> list[str]:
    """Route llama.cpp's log into a list (warnings and errors, with their continuations)."""
    import ctypes

    import llama_cpp

    kept: list[str] = []
    last = [0]

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        level = last[0] if level == 5 else level  # ggml_log_level: 3 WARN, 4 ERROR, 5 CONT (the line goes on)
        last[0] = level
        if level in (3, 4):
            kept.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _keep_log.callback = callback  # the C side holds a pointer to it
    return kept


def _run_quantize(src: str, out: str, qtype: str) -> int:
    import llama_cpp

    kept = _keep_log()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZER_TYPES[qtype]
    params.nthread = _cores()
    code = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
    if code != 0:
        print("".join(kept) or f"llama_model_quantize returned {code}", file=sys.stderr)
    return int(code != 0)


def _run_answer(request_file: str, response_file: str) -> int:
    import numpy as np
    import llama_cpp

    request = json.loads(Path(request_file).read_text())
    kept = _keep_log()
    started = time.perf_counter()
    try:
        llm = llama_cpp.Llama(model_path=request["gguf"], n_ctx=request["n_ctx"], n_threads=request["threads"],
                              verbose=False)
    except Exception as exc:  # noqa: BLE001 - what llama.cpp logged is the message; the exception is the wrapper
        print("".join(kept) + f"\n{exc}", file=sys.stderr)
        return 1
    load_seconds = time.perf_counter() - started
    template = llm.metadata.get("tokenizer.chat_template")
    try:
        answers, logits = _answer_all(llm, template, request["prompts"], request["max_new_tokens"])
    except Exception as exc:  # noqa: BLE001 - a template or decode failure, said first, then llama.cpp's log
        print(f"error: {type(exc).__name__}: {exc}\n" + "".join(kept), file=sys.stderr)
        return ANSWER_FAILED
    out = Path(response_file)
    np.save(out.parent / "logits.npy", np.array(logits, dtype=np.float32))
    out.write_text(json.dumps({"chat_template": bool(template), "load_seconds": round(load_seconds, 3),
                               "seconds": round(time.perf_counter() - started, 3), "answers": answers}))
    llm.close()
    return 0


def _answer_all(llm, template: str | None, prompts: list[str], max_new_tokens: int):
    """Greedy replies: each prompt in the GGUF's chat template (formatted and tokenised as llama-cpp-python's
    own chat handler does), then argmax of llama.cpp's logits until an end-of-generation token."""
    import numpy as np
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    def text(token: int) -> str:  # the strings Llama hands its own template handler for bos/eos
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace") if token != -1 else ""

    formatter = None
    if template:
        formatter = Jinja2ChatFormatter(template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()),
                                        add_generation_prompt=True)
    answers, logits = [], []
    for prompt in prompts:
        if formatter is not None:
            formatted = formatter(messages=[{"role": "user", "content": prompt}])
            ids = llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
        else:
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        last = last_logits().copy()
        logits.append(last)
        reply: list[int] = []
        while len(reply) < max_new_tokens and len(ids) + len(reply) < llm.n_ctx():
            token = int(np.argmax(last))
            reply.append(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            llm.eval([token])
            last = last_logits()
        pieces = [llm.detokenize([t], special=True).decode("utf-8", "replace") for t in reply]
        shown = [t for t in reply if not llama_cpp.llama_vocab_is_eog(vocab, t)]
        answers.append({"prompt_ids": list(ids), "reply_ids": reply, "pieces": pieces,
                        "reply": llm.detokenize(shown).decode("utf-8", "replace")})
    return answers, logits


# ---------------------------------------------------------------------------------------------
# install: the converter is in llama-cpp-python's source distribution, not in its wheel


def install_converter(dest: Path = CONVERTER_DIR, pinned: str | None = None) -> Path:
    """Fetch the sdist of the installed llama-cpp-python with pip (its cache makes a second time cheap) and
    unpack convert_hf_to_gguf.py, conversion/, gguf-py/ and models/ (VOCABS only) into ``dest``: the converter of
    the same llama.cpp the runtime was built from."""
    import shutil
    import tarfile

    from studio.atomic import replace_dir, temp_beside

    pinned = pinned or version()
    if not pinned:
        raise SystemExit(f"{PACKAGE} is not installed")
    with tempfile.TemporaryDirectory(prefix="llama-cpp-sdist-") as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", scratch, f"{PACKAGE}=={pinned}"], check=True)
        archive = next(Path(scratch).glob("*.tar.gz"))
        wanted = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/",
                  "vendor/llama.cpp/gguf-py/", *(f"vendor/llama.cpp/models/{name}" for name in VOCABS))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if any(m.name.split("/", 1)[-1].startswith(w) for w in wanted)]
            tar.extractall(scratch, members=members, filter="data")
        unpacked = next(Path(scratch).glob("*/vendor/llama.cpp"))
        tmp = temp_beside(dest)
        shutil.copytree(unpacked, tmp)
        (tmp / "VERSION").write_text(f"{PACKAGE}=={pinned}\n")
        replace_dir(tmp, dest)
    return dest


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "answer":
        return _run_answer(*args)
    if command == "quantize":
        return _run_quantize(*args)
    if command == "install-converter":
        print(f"llama.cpp's converter: {install_converter()}")
        return 0
    print(f"unknown command {command!r}: answer | quantize | install-converter", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
