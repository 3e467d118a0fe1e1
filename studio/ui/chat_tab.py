"""Chat tab: one prompt, side-by-side streaming replies of the base model and base + adapter."""
from __future__ import annotations

import gradio as gr

from .. import db
from ..settings import get_settings

MAX_ADAPTERS = 1


def adapter_choices() -> list[tuple[str, str]]:
    return [(f"{j.name} ({j.spec.get('base_model')})", j.id) for j in db.list_jobs(("completed",)) if j.adapter_path]


def _history_messages(history: list[dict], system: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system.strip() else []
    for m in history:
        content = m["content"] if isinstance(m["content"], str) else " ".join(
            p.get("text", "") for p in m["content"] if isinstance(p, dict))
        msgs.append({"role": m["role"], "content": content})
    return msgs


def respond(prompt, job_id, system, base_hist, adapter_hist, max_new_tokens, temperature, top_p, top_k,
            repetition_penalty, seed):
    """Stream the base reply, then the adapter reply; each pane keeps its own history."""
    from ..chat import GenerationSettings, get_engine

    base_hist, adapter_hist = list(base_hist or []), list(adapter_hist or [])
    if not prompt or not prompt.strip():
        yield base_hist, adapter_hist, "Type a prompt first."
        return
    job = db.get_job(job_id) if job_id else None
    if job is None or not job.adapter_path:
        yield base_hist, adapter_hist, "Choose a finished run to compare with the base model."
        return
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_p=float(top_p), top_k=int(top_k),
                                  repetition_penalty=float(repetition_penalty), seed=int(seed))
    engine = get_engine()
    try:
        yield base_hist, adapter_hist, "Loading the base model (first use takes a moment)…"
        engine.ensure_base(job.spec["base_model"])
        engine.ensure_adapter(job.id, get_settings().resolve(job.adapter_path))
    except Exception as exc:
        yield base_hist, adapter_hist, f"**Cannot load the model:** {exc}"
        return
    user = {"role": "user", "content": prompt}
    base_hist += [user, {"role": "assistant", "content": ""}]
    adapter_hist += [user, {"role": "assistant", "content": ""}]
    try:
        for pane, adapter in ((base_hist, None), (adapter_hist, job.id)):
            messages = _history_messages(pane[:-1], system)
            for text in engine.stream(messages, adapter, settings):
                pane[-1] = {"role": "assistant", "content": text}
                yield base_hist, adapter_hist, "Generating…"
    except Exception as exc:
        yield base_hist, adapter_hist, f"**Generation failed:** {exc}"
        return
    yield base_hist, adapter_hist, ""


def stop_generation():
    from ..chat import get_engine

    get_engine().stop()
    return "Stopped."


def build() -> dict:
    with gr.Tab("Chat", id="chat"):
        with gr.Row():
            run = gr.Dropdown(choices=adapter_choices(), label="Finished run (adapter)", elem_id="chat-run", scale=4)
            refresh = gr.Button("Refresh", size="sm", scale=1)
        system = gr.Textbox(label="System prompt (optional)", lines=1)
        with gr.Row():
            base_box = gr.Chatbot(label="Base model", elem_id="chat-base", height=360)
            adapter_box = gr.Chatbot(label="Base + adapter", elem_id="chat-adapter", height=360)
        prompt = gr.Textbox(label="Prompt", placeholder="Ask both models the same question", elem_id="chat-prompt")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="chat-send")
            stop = gr.Button("Stop", variant="stop")
            clear = gr.Button("Clear conversation")
        note = gr.Markdown(elem_id="chat-note")
        with gr.Accordion("Generation settings (shared by both panes)", open=False):
            with gr.Row():
                max_new = gr.Slider(1, 1024, value=96, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            with gr.Row():
                top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k")
                rep = gr.Slider(1, 2, value=1.1, step=0.01, label="Repetition penalty")
                seed = gr.Number(0, precision=0, label="Seed")
    inputs = [prompt, run, system, base_box, adapter_box, max_new, temperature, top_p, top_k, rep, seed]
    ev = send.click(respond, inputs, [base_box, adapter_box, note], concurrency_limit=1, concurrency_id="chat")
    prompt.submit(respond, inputs, [base_box, adapter_box, note], concurrency_limit=1, concurrency_id="chat")
    ev.then(lambda: "", None, [prompt])
    stop.click(stop_generation, None, [note], queue=False)
    clear.click(lambda: ([], [], ""), None, [base_box, adapter_box, note])
    refresh.click(lambda: gr.update(choices=adapter_choices()), None, [run])
    return {"run": run}
