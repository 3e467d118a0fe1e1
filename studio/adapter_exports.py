"""Where an adapter's exports live and how to serve it: <home>/exports/<name>-merged and <name>-gguf.

    export_paths(ref)                    the merged and the GGUF folder of an adapter
    mergeable(ref)                       ``ref``, or AdapterError saying why its type cannot be merged
    read_drift(ref) / existing_gguf(ref) what the export tasks (workers/inference/export.py) left there
    snippets(ref)                        serving commands: vLLM, peft, Ollama, llama.cpp, the studio's endpoint
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from . import db
from .adapter_library import BUNDLED_HUB_ID, FINAL_SUFFIX, AdapterError, AdapterRef, resolve
from .settings import check_name, get_settings

DRIFT_PROMPTS = ["Hello! Who are you?", "What is the capital of France?", "Write one sentence about the sea."]


def export_paths(ref: AdapterRef) -> tuple[Path, Path]:
    name = check_name(ref.name, "export name")
    exports = get_settings().exports_dir
    return exports / f"{name}-merged", exports / f"{name}-gguf"


def mergeable(ref: AdapterRef) -> AdapterRef:
    """``ref``, or AdapterError with the sentence saying why its adapter type cannot be merged."""
    from .adapter_types import merge_problem

    if problem := merge_problem(ref.folder):
        raise AdapterError(problem)
    return ref


def chat_template(model_dir: Path) -> str | None:
    """A model folder's chat template: chat_template.jinja, else tokenizer_config.json's; None without one."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        template = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def merge_is_current(merged_dir: Path, adapter_dir: Path) -> bool:
    """Whether the merged folder's weights are newer than the adapter they came from."""
    weights = list(merged_dir.glob("*.safetensors")) if merged_dir.is_dir() else []
    adapter = adapter_dir / "adapter_model.safetensors"
    return bool(weights) and min(w.stat().st_mtime for w in weights) >= adapter.stat().st_mtime


def drift_prompts(ref: AdapterRef) -> list[str]:
    """What a GGUF export answers in the drift check: the run's first three golden prompts, else three defaults."""
    job = db.get_job(ref.job_id) if ref.job_id else None
    golden = (job.spec.get("golden_prompts") if job else None) or []
    return list(golden[:3]) or DRIFT_PROMPTS


def read_drift(ref_value: str) -> list[dict]:
    """Stored drift reports of an adapter's GGUF exports (one per quant)."""
    _, gguf_dir = export_paths(resolve(ref_value))
    out = []
    for path in sorted(gguf_dir.glob("drift-*.json")) if gguf_dir.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def existing_gguf(ref_value: str) -> str | None:
    """The newest GGUF file exported for an adapter, or None."""
    _, gguf_dir = export_paths(resolve(ref_value))
    files = sorted(gguf_dir.glob("*.gguf"), key=lambda p: p.stat().st_mtime) if gguf_dir.is_dir() else []
    return str(files[-1]) if files else None


def snippets(ref_value: str, gguf_file: str | None = None) -> dict[str, str]:
    """Serving commands for an adapter, with local paths as the UI shows them (relative to the data
    directory, where the commands are meant to be run)."""
    from .serving import serving_snippets
    from .models import is_bundled, local_folder, shown_path

    ref = resolve(ref_value)
    base = BUNDLED_HUB_ID if is_bundled(ref.base_model) else ref.base_model
    gguf_file = gguf_file or existing_gguf(ref.ref)
    out = serving_snippets(base, str(ref.folder), ref.name, gguf_file)
    local = [ref.folder] + ([Path(gguf_file), Path(gguf_file).parent] if gguf_file else [])
    base_dir = None if is_bundled(base) else local_folder(base)
    shown = [(base, shown_path(base_dir))] if base_dir is not None else []
    shown += [(str(p), shown_path(p)) for p in local]
    for full, short in shown:
        out = {k: v.replace(full, short) for k, v in out.items()}
    return {**endpoint_snippets(ref), **out}


def served_name(ref) -> str:
    """The inference server's name of an adapter (workers/inference/names.py): the run's name,
    ``RUN/checkpoint-N`` or ``imported/NAME``; a run whose name resolves to another run goes by its id."""
    if ref.kind == "imported":
        return ref.ref
    job = db.get_job(ref.job_id)
    run = job.name if db.get_job(job.name).id == job.id else job.id
    if ref.kind == "run":
        return run + FINAL_SUFFIX if ref.ref.endswith(FINAL_SUFFIX) else run
    return f"{run}/checkpoint-{ref.step}"


DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"   # where `studio infer` listens unless told otherwise
KEY_LINE = 'export STUDIO_API_KEY="${STUDIO_API_KEY:-$(cat api_key)}"   # the set key, else the data directory\'s file'


def endpoint_snippets(ref: AdapterRef) -> dict[str, str]:
    """curl and `openai` client requests for ``ref`` on the studio's own inference server: a live one's URL,
    else `studio infer`'s default address with a note. The key is read from $STUDIO_API_KEY, never shown."""
    from . import inference_client
    from .models import shown_model

    try:
        url, note = inference_client.pick_server(shown_model(ref.base_model)).url, []
    except inference_client.InferenceError:
        url, note = DEFAULT_ENDPOINT, ["# no inference server is running now: `studio infer` serves this address"]
    return request_snippets(served_name(ref), url, note)


def request_snippets(model: str, url: str, note: list[str] | None = None) -> dict[str, str]:
    """The same chat request to ``model`` at the OpenAI base URL ``url``, as curl and as Python."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0, "max_tokens": 128}
    curl = [*(note or []), KEY_LINE,
            f"curl {url}/chat/completions -H \"Authorization: Bearer $STUDIO_API_KEY\" \\",
            f"  -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"]
    python = [*(note or []), "# STUDIO_API_KEY: the studio's key (STUDIO_API_KEY, else api_key in its data directory)",
              "import os", "", "from openai import OpenAI", "",
              f"client = OpenAI(base_url={url!r}, api_key=os.environ[\"STUDIO_API_KEY\"])",
              f"reply = client.chat.completions.create(model={model!r}, temperature=0, max_tokens=128,",
              "                                       messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])",
              "print(reply.choices[0].message.content)"]
    return {"endpoint_curl": "\n".join(curl), "endpoint_openai": "\n".join(python)}
