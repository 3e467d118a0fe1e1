"""The Chat tab's side of chatting: side-by-side panes (base | A | B | C, each with its own history) streamed from a
running inference server over HTTP (studio.inference_client), Stop per browser session, and the system prompt an
adapter's run trained with (``trained_system_prompt``), which the server asks the adapter with.

The model itself lives in the inference server (workers/inference/chat_engine.py). No torch here.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from .adapter_exports import served_name
from .generation import GenerationSettings

KEEP = ("keep", "")


def trained_system_prompt(folder: str | Path) -> tuple[str, str]:
    """(system_prompt_mode, system_prompt) of the run an adapter folder belongs to (its final adapter or a
    checkpoint, under <home>/jobs/<job id>/); ("keep", "") for an imported adapter or a run that is gone."""
    from . import db
    from .settings import get_settings

    settings = get_settings()
    try:
        run_dir = Path(folder).resolve().relative_to(settings.jobs_dir.resolve()).parts[0]
    except (ValueError, IndexError):
        return KEEP
    job = db.get_job(run_dir)  # the folder is named after the job's id; else find the job that owns it
    if job is None or settings.resolve(job.output_dir).resolve() != settings.jobs_dir.resolve() / run_dir:
        owner = settings.jobs_dir.resolve() / run_dir
        job = next((j for j in db.list_jobs() if j.output_dir and settings.resolve(j.output_dir).resolve() == owner),
                   None)
    spec = job.spec if job is not None and job.kind == "train" else {}
    mode = spec.get("system_prompt_mode", "keep")
    return (mode, spec.get("system_prompt", "")) if mode in ("keep", "replace", "omit") else KEEP


# ---- side-by-side comparison ------------------------------------------------------------------------

PANES = ("A", "B", "C")
AUTO_BASE = "auto"


def as_messages(history: list[dict], system: str = "") -> list[dict]:
    """A pane's history (gradio message dicts) as plain chat messages, with the system prompt first."""
    msgs = [{"role": "system", "content": system}] if (system or "").strip() else []
    for m in history:
        content = m["content"] if isinstance(m["content"], str) else " ".join(
            p.get("text", "") for p in m["content"] if isinstance(p, dict))
        msgs.append({"role": m["role"], "content": content})
    return msgs


def _note(status: str, problems: list[str]) -> str:
    return "  \n".join([status] * bool(status) + [f"⚠️ {p}" for p in problems])


NO_SERVER = "No inference server is running: start `studio worker` (it starts one) or `studio infer`."
_stops: dict[str | None, float] = {}   # browser session -> when it last pressed Stop


def stop(owner: str | None = None) -> None:
    """Stop the reply ``owner``'s compare is streaming (the others go on)."""
    _stops[owner] = time.time()


def _stopped_since(owner: str | None, since: float) -> bool:
    return _stops.get(owner, 0.0) >= since


def _usable(chosen: list, base: str, problems: list[str]) -> list:
    """The chosen (pane, ref) pairs the server can run on ``base``: an adapter runs on its own base only."""
    from . import adapter_check, adapter_library

    usable = []
    for pane, ref in chosen:
        if not adapter_library.same_base(ref.base_model, base):
            why = "the inference server runs an adapter on its own base only"
            try:
                adapter_check.check_against_base(ref.folder, base)
            except adapter_library.AdapterError as exc:
                why = str(exc)
            problems.append(f"{PANES[pane - 1]}: {ref.name} was trained on {ref.base_model}, not {base}: {why}")
            continue
        usable.append((pane, ref))
    return usable


def compare(prompt: str, base_choice: str | None, refs: list[str | None], histories: list[list[dict] | None],
            system: str, settings: GenerationSettings,
            owner: str | None = None) -> Iterator[tuple[list[list[dict]], str]]:
    """Yield (histories, note) while the base and up to three adapters answer ``prompt`` in turn, each
    streamed from a running inference server (studio.inference_client).

    ``histories``: [base, A, B, C], each its own conversation. ``refs``: adapter refs of panes A-C
    (studio.adapter_library.resolve; empty = no adapter). ``base_choice`` "auto" (or empty) takes the first
    adapter's base. ``owner`` (a browser session) lets Stop end only that session's replies.
    """
    from . import adapter_library, inference_client
    from .models import shown_model

    histories = [list(h or []) for h in histories] + [[] for _ in range(1 + len(refs) - len(histories))]
    if not (prompt or "").strip():
        yield histories, "Type a prompt first."
        return
    problems: list[str] = []
    chosen = []
    for i, ref in enumerate(refs):
        if not ref:
            continue
        try:
            chosen.append((i + 1, adapter_library.resolve(ref)))
        except (adapter_library.AdapterError, ValueError) as exc:
            problems.append(f"{PANES[i]}: {exc}")
    base = base_choice if base_choice and base_choice != AUTO_BASE else (chosen[0][1].base_model if chosen else "")
    if not base:
        yield histories, _note("Choose a base model or an adapter (a finished run, a checkpoint or an import).",
                               problems)
        return
    usable = _usable(chosen, base, problems)
    base_name = shown_model(base)
    try:
        server = inference_client.pick_server(base_name)
    except inference_client.InferenceError:
        yield histories, _note(NO_SERVER, problems)
        return
    started = time.time()
    panes = [(0, base_name, "base")] + [(pane, served_name(ref), ref.name) for pane, ref in usable]
    for pane, _, _ in panes:
        histories[pane] += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
    if not any(b.get("model") == base_name for b in server.loaded_bases or []):
        yield histories, _note("Loading the base model on the inference server (first use takes a moment)…",
                               problems)
    for n, (pane, model, label) in enumerate(panes):
        if _stopped_since(owner, started):
            for later, _, _ in panes[n:]:
                histories[later][-1] = {"role": "assistant", "content": "(stopped)"}
            break
        messages = as_messages(histories[pane][:-1], system)
        stream = inference_client.chat_stream(messages, model, settings, url=server.url)
        try:
            for text in stream:
                histories[pane][-1] = {"role": "assistant", "content": text}
                yield histories, _note(f"Generating: {label}…", problems)
                if _stopped_since(owner, started):
                    break
        except inference_client.InferenceError as exc:
            yield histories, _note(f"**Generation failed ({label}):** {exc}", problems)
            return
        finally:
            stream.close()   # closing the request stops the server's generation
    yield histories, _note("Stopped." if _stopped_since(owner, started) else "", problems)
