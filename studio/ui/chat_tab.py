"""Chat tab: one prompt, side-by-side streaming replies of the base model and up to three adapters.

Panes: base | A | B | C, each with its own history. An adapter is a finished run, a checkpoint of any
run, or an imported adapter (studio.adapter_library). Every pane streams from a running inference server over HTTP
(studio.inference_client), so this process never loads a model. Generation waits its turn (one reply at a
time across sessions); Stop ends only this session's reply.
"""
from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from .. import adapter_library, db
from ..chat import AUTO_BASE, PANES

MAX_ADAPTERS = len(PANES)
NONE_CHOICE = ("— none —", "")
PANE_IDS = ("chat-adapter", "chat-adapter-2", "chat-adapter-3")
RUN_IDS = ("chat-run", "chat-run-2", "chat-run-3")


def adapter_choices() -> list[tuple[str, str]]:
    """Finished runs (value: the job id), then checkpoints and imported adapters."""
    return adapter_library.chat_choices()


def base_choices() -> list[tuple[str, str]]:
    return [("Base of adapter A", AUTO_BASE)] + [(b, b) for b in adapter_library.base_choices()]


def newest_finished() -> str | None:
    """The completed run (with an adapter) that finished last."""
    done = [j for j in db.list_jobs(("completed",)) if j.adapter_path]
    return max(done, key=lambda j: j.finished_at or 0).id if done else None


def refresh_values(adapter_a: str | None = None) -> tuple:
    """Fresh choices for the base dropdown and the three adapter dropdowns (page load, Refresh, each tick);
    adapter A, while nothing is chosen there, gets the run that finished last."""
    choices = adapter_choices()
    newest = None if adapter_a else newest_finished()
    first = gr.update(choices=choices, value=newest) if newest else gr.update(choices=choices)
    return (gr.update(choices=base_choices()), first,
            *[gr.update(choices=[NONE_CHOICE] + choices) for _ in range(MAX_ADAPTERS - 1)])


# Messages are shown as plain text: gradio puts a message's text into the page as HTML (its sanitiser keeps
# images, forms and styles), so a prompt or a reply could draw over the page. The panes hold the text
# HTML-escaped with Markdown off; the handler unescapes it again before the model reads the conversation.
PANE_TEXT = {"render_markdown": False, "sanitize_html": True}


def _map_text(history: list[dict] | None, fn: Callable[[str], str]) -> list[dict]:
    """``fn`` applied to the text of every message (a string, or gradio's list of text parts)."""
    out = []
    for m in history or []:
        content = m.get("content")
        if isinstance(content, str):
            content = fn(content)
        elif isinstance(content, list):
            content = [{**p, "text": fn(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str)
                       else p for p in content]
        out.append({**m, "content": content})
    return out


def shown(history: list[dict] | None) -> list[dict]:
    """A conversation as a pane shows it: every message's text HTML-escaped."""
    return _map_text(history, lambda text: html.escape(text, quote=False))


def typed(history: list[dict] | None) -> list[dict]:
    """A pane's value back as the words that were typed and generated (the inverse of ``shown``)."""
    return _map_text(history, html.unescape)


def respond(prompt, base, run_a, run_b, run_c, system, hist_base, hist_a, hist_b, hist_c, max_new_tokens,
            temperature, top_p, top_k, repetition_penalty, seed, request: gr.Request = None):
    """Stream the base reply, then each chosen adapter's, into its own pane."""
    from ..chat import GenerationSettings, compare

    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_p=float(top_p), top_k=int(top_k),
                                  repetition_penalty=float(repetition_penalty), seed=int(seed or 0))
    owner = getattr(request, "session_hash", None)
    typed_histories = [typed(h) for h in (hist_base, hist_a, hist_b, hist_c)]
    for histories, note in compare(prompt, base, [run_a, run_b, run_c], typed_histories, system or "", settings,
                                   owner=owner):
        yield (*[shown(h) for h in histories], note)


def stop_generation(request: gr.Request = None):
    from ..chat import stop

    stop(getattr(request, "session_hash", None))
    return "Stopped."


def build() -> dict:
    choices = adapter_choices()
    with gr.Tab("Chat", id="chat"):
        gr.Markdown("Ask the base model and up to three adapters the same question. Each pane keeps its own "
                    "conversation; generation settings are shared. Adapters: finished runs, checkpoints of any run, "
                    "imported adapters.")
        system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="chat-system")
        runs, boxes = [], []
        with gr.Row(equal_height=False):
            with gr.Column(min_width=220):
                base = gr.Dropdown(choices=base_choices(), value=AUTO_BASE, label="Base model",
                                   allow_custom_value=True, elem_id="chat-base-model")
                base_box = gr.Chatbot(label="Base model", elem_id="chat-base", height=380, **PANE_TEXT)
            for i, pane in enumerate(PANES):
                with gr.Column(min_width=220):
                    runs.append(gr.Dropdown(
                        choices=choices if i == 0 else [NONE_CHOICE] + choices, value=None if i == 0 else "",
                        label=f"Adapter {pane}",
                        elem_id=RUN_IDS[i]))
                    boxes.append(gr.Chatbot(label=f"Base + adapter {pane}", elem_id=PANE_IDS[i], height=380,
                                            **PANE_TEXT))
        prompt = gr.Textbox(label="Prompt", placeholder="Ask every pane the same question", elem_id="chat-prompt")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="chat-send")
            stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
            clear = gr.Button("Clear conversations", elem_id="chat-clear")
            refresh = gr.Button("Refresh lists", size="sm", elem_id="chat-refresh")
        note = gr.Markdown(elem_id="chat-note")
        with gr.Accordion("Generation settings (shared by all panes)", open=False):
            with gr.Row():
                max_new = gr.Slider(1, 1024, value=96, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            with gr.Row():
                top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k")
                rep = gr.Slider(1, 2, value=1.1, step=0.01, label="Repetition penalty")
                seed = gr.Number(0, precision=0, label="Seed")
    panes = [base_box, *boxes]
    inputs = [prompt, base, *runs, system, *panes, max_new, temperature, top_p, top_k, rep, seed]
    outputs = [*panes, note]
    # one reply at a time across every session: the others wait in gradio's queue, shown in their panes
    ev = send.click(respond, inputs, outputs, concurrency_limit=1, concurrency_id="chat")
    prompt.submit(respond, inputs, outputs, concurrency_limit=1, concurrency_id="chat")
    ev.then(lambda: "", None, [prompt])
    stop.click(stop_generation, None, [note], queue=False)
    clear.click(lambda: ([], [], [], [], ""), None, outputs)
    base.change(lambda: ([], [], [], [], ""), None, outputs)  # another base: every conversation starts again
    for run, box in zip(runs, boxes):
        run.change(lambda: [], None, [box])
    refresh_outputs = [base, *runs]
    refresh.click(refresh_values, [runs[0]], refresh_outputs)
    return {"run": runs[0], "runs": runs, "base": base, "refresh_outputs": refresh_outputs,
            "refresh_values": refresh_values}
