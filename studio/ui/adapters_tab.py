"""Adapters tab: the library of finished runs and imported adapters, zip download, import, merge and
GGUF export (with drift check and serving snippets), golden-prompt answers and batch evaluation.

Layout and glue only: the work is in studio.adapter_library, adapter_import, adapter_exports, model_card,
golden_prompts and batch_evaluation. Model work (merge, GGUF, batch evaluation) is a queued task on a worker
(studio.jobs.submit_task, workers/inference/task.py): a button queues it and returns at once, a timer
follows its progress and shows its result, Cancel stops it. Each page follows the tasks it started (a
gr.State). The Tasks table lists every recent task, wherever it was started (another browser, `studio
export`), kept in step with the database by the shared tick (studio/ui/__init__.py); picking one follows it
in its area: progress and Cancel, then its result.
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from .. import adapter_exports, adapter_import, adapter_library, db, jobs, model_card
from ..adapter_library import AdapterError, chat_choices, human_bytes, list_adapters, resolve
from ..chat import AUTO_BASE
from ..models import shown_model, shown_path
from ..serving import drift_sentence
from . import downloads
from .runs_tab import file_box

TABLE_HEADERS = ["name", "kind", "base", "config", "final loss", "best eval loss", "general skills", "steps", "size",
                 "created"]
SNIPPETS = (("endpoint_curl", "curl (the studio's inference server)", "shell"),
            ("endpoint_openai", "Python, `openai` client (the studio's inference server)", "python"),
            ("vllm", "vLLM (serve base + adapter)", "shell"),
            ("openai", "OpenAI-compatible request (to vLLM)", "shell"),
            ("peft", "Python (transformers + peft)", "python"), ("ollama", "Ollama (after GGUF export)", "shell"),
            ("llama_cpp", "llama.cpp (after GGUF export)", "shell"))


TASK_POLL_SECONDS = 1.0  # a followed task's progress line; the timers run only while a task is followed
TASK_HEADERS = ["task", "kind", "adapter", "status", "progress", "result", "device", "started", "finished", "id"]
TASK_WIDTHS = ["11%", "7%", "10%", "8%", "13%", "20%", "6%", "7%", "8%", "10%"]  # the result wraps; ids stay short
RECENT_TASKS = 20  # rows of the Tasks table, newest first
EXPORT_KINDS = ("merge", "gguf")


def _num(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def table() -> list[list]:
    rows = []
    for a in list_adapters():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(a["created_at"])) if a["created_at"] else ""
        rows.append([a["name"], a["kind"], shown_model(a["base_model"]), a["config"], _num(a["final_loss"]),
                     _num(a["best_eval_loss"]), a.get("forgetting", ""), a["steps"], human_bytes(a["bytes"]),
                     created])
    return rows


def library_choices() -> list[tuple[str, str]]:
    return [(f"{a['name']} ({a['kind']}, {shown_model(a['base_model'])})", a["ref"]) for a in list_adapters()]


def eval_sources() -> list[tuple[str, str]]:
    """Where batch-evaluation rows come from: a run's held-out split, or a whole dataset."""
    out = [(f"held-out rows of {j.name}", f"run:{j.id}") for j in db.list_jobs(("completed",))]
    return out + [(f"dataset {d.name} ({d.rows} rows)", f"dataset:{d.name}") for d in db.list_datasets()]


def refresh_values() -> tuple:
    """Values for ``refresh_outputs``: the library, the lists that name adapters or rows, and the Tasks table
    with its picker (the shared tick sends only what changed)."""
    from .chat_tab import base_choices

    recent = recent_tasks()
    return (table(), gr.update(choices=library_choices()), gr.update(choices=chat_choices()),
            gr.update(choices=eval_sources()), gr.update(choices=base_choices()),
            gr.update(choices=adapter_library.base_choices()), tasks_table(recent),
            gr.update(choices=task_choices(recent)))


# ---- the Tasks table ----------------------------------------------------------------------------

def recent_tasks() -> list[db.Job]:
    """Merges, GGUF exports and batch evaluations, newest first, from every page and the CLI."""
    return db.list_jobs(kind=db.TASK_KINDS)[:RECENT_TASKS]


def _clock(at: float | None) -> str:
    """'14:03:12' today, '11-30 14:03' on another day."""
    if not at:
        return ""
    today = time.localtime().tm_yday == time.localtime(at).tm_yday and time.time() - at < 86400
    return time.strftime("%H:%M:%S" if today else "%m-%d %H:%M", time.localtime(at))


def _adapter_name(ref: str | None) -> str:
    if not ref:
        return ""
    try:
        return resolve(ref).name
    except (AdapterError, ValueError):
        return ref  # the run or import is gone; its ref still says which it was


def task_adapter(job: db.Job) -> str:
    """The adapter a task works on; for a batch evaluation, the models it compares."""
    spec = job.spec
    if job.kind == "evaluate":
        return " + ".join(["base", *spec.get("adapters", {})])
    return _adapter_name(spec.get("ref"))


def task_progress(job: db.Job) -> str:
    """'queued (position 2)' or 'step a/b: message'."""
    if job.status == "queued":
        return f"queued (position {db.queue_position(job)})"
    total = job.total_steps or "?"
    step = min(job.current_step + (job.status == "running"), job.total_steps or job.current_step + 1)
    return f"step {step}/{total}: {job.progress_message or job.status}"


def task_result(job: db.Job) -> str:
    """One line: a merge's size, a GGUF's size and drift, an evaluation's losses; or why it ended."""
    if job.status == "failed":
        return job.error or "failed"
    if job.status != "completed":
        return ""
    result = job.summary
    if job.kind == "merge":
        return f"{human_bytes(result['bytes'])} merged ({job.spec.get('dtype', 'float32')})"
    if job.kind == "gguf":
        g = result["gguf"]
        line = f"{human_bytes(g['bytes'])} GGUF ({job.spec.get('quant', '?')})"
        if d := result.get("drift"):
            line += f"; {drift_sentence(d)}"
        return line
    metrics = result.get("metrics", {})
    losses = ", ".join(f"{m} loss {metrics[m]['eval_loss']:.3f}" if metrics[m].get("eval_loss") is not None
                       else f"{m} loss -" for m in result.get("models", metrics))
    return f"{result.get('rows', '?')} rows: {losses}"


def tasks_table(recent: list[db.Job] | None = None) -> list[list]:
    rows = []
    for job in recent_tasks() if recent is None else recent:
        rows.append([job.name, job.kind, task_adapter(job), job.status, task_progress(job), task_result(job),
                     job.device or "", _clock(job.started_at), _clock(job.finished_at), job.id])
    return rows


def task_choices(recent: list[db.Job] | None = None) -> list[tuple[str, str]]:
    return [(f"{job.name} ({job.status}, {_clock(job.created_at)})", job.id)
            for job in (recent_tasks() if recent is None else recent)]


# ---- handlers -----------------------------------------------------------------------------------

def _download_copy(path: Path) -> str:
    """A copy of ``path`` in the downloads folder gradio may serve (removed after an hour)."""
    import shutil

    out = downloads.new_file(path.name)
    shutil.copyfile(path, out)
    return str(out)


def on_zip(ref):
    if not ref:
        return file_box(), "Choose an adapter first."
    try:
        path = model_card.zip_adapter(ref)
    except (AdapterError, ValueError) as exc:
        return file_box(), f"**Error:** {exc}"
    return (file_box(_download_copy(path)),
            f"Zip ready: {path.name} ({human_bytes(path.stat().st_size)}).")


def _snippet_values(ref, gguf_file=None) -> list:
    """One update per serving box: the chosen adapter's command, shown only where there is one (the
    Ollama and llama.cpp boxes appear once a GGUF exists)."""
    snippets = {}
    if ref:
        try:
            snippets = adapter_exports.snippets(ref, gguf_file)
        except (AdapterError, ValueError):
            pass  # an adapter that cannot be resolved any more: no commands to show
    return [gr.update(value=snippets.get(key, ""), visible=bool(snippets.get(key))) for key, _, _ in SNIPPETS]


def drift_markdown(report: dict) -> str:
    head, _, rest = drift_sentence(report).partition(": ")
    lines = [f"**{head}**: {rest[:-1]}; {report['identical_prompt_tokens']}/{report['prompts']} identical prompt "
             f"tokenisations, mean |logit diff| {report['mean_abs_logit_diff']:.5f} ({report['seconds']:.1f} s)."]
    for hf, gguf in report.get("replies", [])[:3]:
        mark = "same" if hf == gguf else "differs"
        lines.append(f"- {mark}: merged `{hf[:80]!s}` · GGUF `{gguf[:80]!s}`")
    return "\n".join(lines)


def on_select(ref):
    """Golden answers, stored drift reports and serving snippets of the chosen adapter."""
    from .. import golden_prompts

    headers, rows = ["prompt"], []
    note = ""
    if ref:
        try:
            a = resolve(ref)
            if a.job_id:
                headers, rows = golden_prompts.golden_table(golden_prompts.read_golden(a.job_id))
            note = "\n\n".join(drift_markdown(r) for r in adapter_exports.read_drift(ref))
        except (AdapterError, KeyError, ValueError) as exc:
            note = f"**Error:** {exc}"
    return (gr.update(value=rows, headers=headers), note, *_snippet_values(ref))


def _queued(job: db.Job, what: str) -> str:
    return f"Queued: {what} (task `{job.id}`); a worker picks it up next. The progress shows here."


def _watching(on: bool) -> tuple:
    """(Cancel button, the area's timer): both on while a task is followed, off otherwise."""
    return gr.update(visible=on), gr.update(active=on)


def on_merge(ref, dtype):
    """Queue a merge of the chosen adapter; returns (note, watched task id, Cancel button, timer)."""
    if not ref:
        return "Choose an adapter first.", None, *_watching(False)
    try:
        a = adapter_exports.mergeable(resolve(ref))
    except (AdapterError, ValueError) as exc:
        return f"**Error:** {exc}", None, *_watching(False)
    job = jobs.submit_task("merge", f"merge {a.name}", {"ref": a.ref, "dtype": dtype or "float32"})
    return _queued(job, f"merge {a.name} into its base ({dtype})"), job.id, *_watching(True)


def on_gguf(ref, quant, drift):
    """Queue a GGUF export (merging first unless a current merge exists); returns (note, task id, Cancel, timer)."""
    if not ref:
        return "Choose an adapter first.", None, *_watching(False)
    try:
        a = adapter_exports.mergeable(resolve(ref))
    except (AdapterError, ValueError) as exc:
        return f"**Error:** {exc}", None, *_watching(False)
    job = jobs.submit_task("gguf", f"gguf {a.name} {quant}", {"ref": a.ref, "quant": quant, "drift": bool(drift)})
    return _queued(job, f"GGUF export of {a.name} ({quant})"), job.id, *_watching(True)


def on_cancel(task_id):
    if not task_id:
        return "No task to cancel."
    try:
        job = jobs.cancel(task_id)
    except KeyError:
        return "That task no longer exists."
    return ("Cancelled." if job.status == "cancelled" else
            f"Cancelling: the {job.kind} stops before its next step." if job.status == "running" else
            f"The task is already {job.status}.")


def progress_line(job: db.Job) -> str:
    """Where a task is: waiting in the queue, or step a/b with what it is doing and for how long."""
    if job.status == "queued":
        position = db.queue_position(job)
        return f"**{job.name}**: queued (position {position}); waiting for a worker."
    steps = f"step {min(job.current_step + 1, job.total_steps or 1)}/{job.total_steps or '?'}"
    took = f", {time.time() - job.started_at:.0f} s" if job.started_at else ""
    stop = " (cancel requested)" if job.cancel_requested else ""
    return f"**{job.name}**: running, {steps}: {job.progress_message or 'starting'}{took}{stop}."


def export_result(job: db.Job) -> str:
    """The finished merge or GGUF export as the note shows it: sizes, paths, drift figures."""
    if job.status != "completed":
        return f"**{job.name}**: {job.status}." + (f" {job.error}" if job.error else "")
    result = job.summary
    lines = []
    merged = result if job.kind == "merge" else result.get("merge")
    if merged:
        lines.append(f"Merged into `{shown_path(merged['path'])}` ({human_bytes(merged['bytes'])}, "
                     f"{merged['seconds']:.1f} s).")
    if job.kind == "gguf":
        g = result["gguf"]
        lines.append(f"Wrote `{shown_path(g['path'])}` ({human_bytes(g['bytes'])}, {g['seconds']:.1f} s) "
                     f"and `{shown_path(result['modelfile'])}`.")
        if "drift" in result:
            lines.append(drift_markdown(result["drift"]))
    return "\n\n".join(lines)


def poll_export(task_id):
    """The timer's view of the watched merge/GGUF task: (note, task id, Cancel, timer, *snippet boxes); once
    the task has ended, its result, and the watching stops."""
    job = db.get_job(task_id) if task_id else None
    if job is None:  # nothing followed (a late tick), or the task was deleted
        return gr.skip(), None, *_watching(False), *[gr.skip() for _ in SNIPPETS]
    if job.status in db.ACTIVE:
        return progress_line(job), gr.skip(), gr.skip(), gr.skip(), *[gr.skip() for _ in SNIPPETS]
    gguf = job.summary.get("gguf", {}).get("path") if job.kind == "gguf" and job.status == "completed" else None
    return export_result(job), None, *_watching(False), *_snippet_values(job.spec.get("ref"), gguf)


def on_import(files, name, base):
    if not files:
        return "Upload a .zip of the adapter folder, or adapter_config.json and adapter_model.safetensors.", \
            *refresh_values()
    paths = [getattr(f, "name", f) for f in (files if isinstance(files, list) else [files])]
    try:
        folder = adapter_import.import_adapter(paths, name, base)
    except (AdapterError, ValueError) as exc:
        return f"**Error:** {exc}", *refresh_values()
    return (f"Imported **{folder.name}** for {shown_model(base)}; it is now in the Chat tab's adapter lists.",
            *refresh_values())


def on_evaluate(base, refs, source, limit, max_new_tokens):
    """Check the choice and queue a batch evaluation; returns (note, task id, Cancel button, timer)."""
    from .. import batch_evaluation

    off = _watching(False)
    refs = [r for r in (refs or []) if r][:3]
    try:
        chosen = [resolve(r) for r in refs]
        base_model = base if base and base != AUTO_BASE else (chosen[0].base_model if chosen else "")
        if not base_model:
            return "Choose a base model or at least one adapter.", None, *off
        rows = batch_evaluation.eval_conversations(batch_evaluation.eval_rows(source))
        if not rows:
            return ("**Error:** no row to evaluate: batch evaluation needs conversations that end with an "
                    "assistant reply."), None, *off
    except (AdapterError, ValueError, KeyError) as exc:
        return f"**Error:** {exc}", None, *off
    names: dict[str, str] = {}
    for a in chosen:
        label = a.name if a.name not in names and a.name != "base" else f"{a.name}-{len(names) + 1}"
        names[label] = a.ref
    params = {"base_model": base_model, "adapters": names, "source": source, "limit": int(limit),
              "max_new_tokens": int(max_new_tokens)}
    job = jobs.submit_task("evaluate", f"evaluate {', '.join(names) or shown_model(base_model)}", params,
                           own_folder=True)
    n = min(len(rows), int(limit))
    return _queued(job, f"batch evaluation of {n} rows on {len(names) + 1} models"), job.id, *_watching(True)


def eval_result(job: db.Job) -> tuple:
    """(note, metrics table, per-row table, CSV file) of a finished batch evaluation."""
    import json

    from .. import batch_evaluation

    if job.status != "completed":
        return (f"**{job.name}**: {job.status}." + (f" {job.error}" if job.error else ""), gr.update(), gr.update(),
                file_box())
    summary = job.summary
    result = json.loads(Path(summary["result"]).read_text(encoding="utf-8"))
    headers, metric_rows = batch_evaluation.metrics_table(result)
    row_headers = ["prompt", "reference", *result["models"]]
    detail = [[r["prompt"], r["reference"], *[r["replies"][m] for m in result["models"]]] for r in result["rows"]]
    note = f"Evaluated {len(result['rows'])} rows on {len(result['models'])} models in {result['seconds']:.1f} s."
    return (note, gr.update(value=metric_rows, headers=headers), gr.update(value=detail, headers=row_headers),
            file_box(_download_copy(Path(summary["csv"]))))


def poll_eval(task_id):
    """The timer's view of the watched batch evaluation: (note, task id, Cancel, timer, metrics, rows, CSV)."""
    job = db.get_job(task_id) if task_id else None
    if job is None:  # nothing followed (a late tick), or the task was deleted
        return gr.skip(), None, *_watching(False), gr.skip(), gr.skip(), gr.skip()
    if job.status in db.ACTIVE:
        return progress_line(job), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    note, metrics, rows, csv = eval_result(job)
    return note, None, *_watching(False), metrics, rows, csv


def on_pick_task(task_id):
    """Follow a task picked in the Tasks table (any page's, or the CLI's) in its own area: the export area for a
    merge or GGUF export, the batch-evaluation area for an evaluation, opening it. A running task shows its
    progress and Cancel there (the area's timer follows it); a finished one, its result.

    Returns (export note, export task, export Cancel, export timer, *snippet boxes, export accordion,
    eval note, eval task, eval Cancel, eval timer, metrics, rows, CSV, eval accordion)."""
    export_skip = [gr.skip()] * (4 + len(SNIPPETS) + 1)
    eval_skip = [gr.skip()] * 8
    job = db.get_job(task_id) if task_id else None
    if job is None or job.kind not in db.TASK_KINDS:
        return *export_skip, *eval_skip
    if job.kind in EXPORT_KINDS:
        if job.status in db.ACTIVE:
            shown = (progress_line(job), job.id, *_watching(True), *[gr.skip() for _ in SNIPPETS])
        else:
            shown = poll_export(job.id)
        return *shown, gr.update(open=True), *eval_skip
    if job.status in db.ACTIVE:
        shown = (progress_line(job), job.id, *_watching(True), gr.skip(), gr.skip(), gr.skip())
    else:
        shown = poll_eval(job.id)
    return *export_skip, *shown, gr.update(open=True)


def on_task_row(evt: gr.SelectData):
    """A click on a row of the Tasks table picks that task (its id is the row's last cell)."""
    row = evt.row_value or []
    return row[-1] if row else gr.skip()


# ---- layout -------------------------------------------------------------------------------------

def build() -> dict:
    from .chat_tab import base_choices

    with gr.Tab("Adapters", id="adapters"):
        gr.Markdown("Finished runs and imported adapters. Download one as a zip with a model card, merge it into "
                    "its base, export a GGUF for llama.cpp / Ollama, or compare adapters on held-out rows.")
        lib = gr.Dataframe(value=table, headers=TABLE_HEADERS, interactive=False, label="Adapters",
                           elem_id="adapters-table")
        with gr.Row():
            pick = gr.Dropdown(choices=library_choices(), label="Adapter", elem_id="adapters-pick", scale=4)
            refresh = gr.Button("Refresh", size="sm", scale=1)
        with gr.Row():
            zip_btn = gr.Button("Download adapter (.zip with model card)", elem_id="adapters-zip")
            zip_file = gr.File(label="Adapter zip", interactive=False, visible=False, elem_id="adapters-zip-file")
        note = gr.Markdown(elem_id="adapters-note")
        with gr.Accordion("Golden prompts (answers at each checkpoint)", open=False):
            golden = gr.Dataframe(headers=["prompt"], interactive=False, wrap=True, elem_id="adapters-golden")
        with gr.Accordion("Tasks: merges, GGUF exports, batch evaluations", open=True):
            tasks = gr.Dataframe(value=tasks_table, headers=TASK_HEADERS, interactive=False, wrap=True,
                                 label="Recent tasks (from every browser and `studio export`)",
                                 column_widths=TASK_WIDTHS, elem_id="adapters-tasks")
            task_pick = gr.Dropdown(choices=task_choices(), value=None, elem_id="adapters-task-pick",
                                    label="Task: pick one (or click its row) to see its result, or its progress "
                                          "and Cancel")
        with gr.Accordion("Export: merge, GGUF, serving", open=True) as export_acc:
            with gr.Row():
                dtype = gr.Radio(["float32", "bfloat16", "float16"], value="float32", label="Merged weights dtype")
                quant = gr.Radio(["q8_0", "q4_k_m", "f16"], value="q8_0", label="GGUF type")
                drift = gr.Checkbox(True, label="Check drift after the GGUF export (answer in llama.cpp and compare)")
            with gr.Row():
                merge_btn = gr.Button("Merge into the base", elem_id="adapters-merge")
                gguf_btn = gr.Button("Export GGUF + Ollama Modelfile", elem_id="adapters-gguf")
                export_cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="adapters-export-cancel")
            export_note = gr.Markdown(elem_id="adapters-export-result")
            codes = [gr.Code(label=label, language=lang, interactive=False, visible=False,
                             elem_id=f"adapters-snippet-{key}")
                     for key, label, lang in SNIPPETS]
        with gr.Accordion("Import an adapter", open=False):
            gr.Markdown("A peft LoRA adapter as a .zip of its folder, or its `adapter_config.json` and "
                        "`adapter_model.safetensors`. Pickle weights (`adapter_model.bin`) are refused. The shapes "
                        "are checked against the base you choose; the adapter's own base name is ignored.")
            with gr.Row():
                upload = gr.File(label="Adapter files", file_count="multiple",
                                 file_types=[".zip", ".safetensors", ".json"], elem_id="adapters-upload")
                with gr.Column():
                    imp_name = gr.Textbox(label="Name", elem_id="adapters-import-name")
                    imp_base = gr.Dropdown(choices=adapter_library.base_choices(), allow_custom_value=True,
                                           label="Base model it was trained on", elem_id="adapters-import-base")
                    imp_btn = gr.Button("Import", elem_id="adapters-import")
            imp_note = gr.Markdown(elem_id="adapters-import-note")
        with gr.Accordion("Batch evaluation", open=False) as eval_acc:
            with gr.Row():
                ev_base = gr.Dropdown(choices=base_choices(), value=AUTO_BASE, label="Base model",
                                      allow_custom_value=True)
                ev_refs = gr.Dropdown(choices=chat_choices(), multiselect=True, max_choices=3,
                                      label="Adapters (up to 3)", elem_id="adapters-eval-adapters")
                ev_source = gr.Dropdown(choices=eval_sources(), label="Rows", elem_id="adapters-eval-source")
            with gr.Row():
                ev_limit = gr.Slider(1, 200, value=20, step=1, label="Rows to evaluate (at most)")
                ev_tokens = gr.Slider(8, 512, value=96, step=8, label="Max new tokens per reply")
                ev_btn = gr.Button("Evaluate", variant="primary", elem_id="adapters-eval-run")
                ev_cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="adapters-eval-cancel")
            ev_note = gr.Markdown(elem_id="adapters-eval-note")
            ev_metrics = gr.Dataframe(label="Per model", interactive=False, elem_id="adapters-eval-metrics")
            ev_rows = gr.Dataframe(label="Per row", interactive=False, wrap=True, elem_id="adapters-eval-rows")
            ev_csv = gr.File(label="CSV", interactive=False, visible=False, elem_id="adapters-eval-csv")

    refresh_outputs = [lib, pick, ev_refs, ev_source, ev_base, imp_base, tasks, task_pick]
    refresh.click(refresh_values, None, refresh_outputs)
    zip_btn.click(on_zip, [pick], [zip_file, note])
    pick.change(on_select, [pick], [golden, export_note, *codes])
    export_task, eval_task = gr.State(None), gr.State(None)  # the task this page follows, per area
    export_timer = gr.Timer(TASK_POLL_SECONDS, active=False)
    eval_timer = gr.Timer(TASK_POLL_SECONDS, active=False)
    merge_btn.click(on_merge, [pick, dtype], [export_note, export_task, export_cancel, export_timer])
    gguf_btn.click(on_gguf, [pick, quant, drift], [export_note, export_task, export_cancel, export_timer])
    export_cancel.click(on_cancel, [export_task], [export_note])
    imp_btn.click(on_import, [upload, imp_name, imp_base], [imp_note, *refresh_outputs])
    ev_btn.click(on_evaluate, [ev_base, ev_refs, ev_source, ev_limit, ev_tokens],
                 [ev_note, eval_task, ev_cancel, eval_timer])
    ev_cancel.click(on_cancel, [eval_task], [ev_note])
    export_timer.tick(poll_export, [export_task], [export_note, export_task, export_cancel, export_timer, *codes],
                      show_progress="hidden")
    task_pick.change(on_pick_task, [task_pick], [export_note, export_task, export_cancel, export_timer, *codes,
                                                 export_acc, ev_note, eval_task, ev_cancel, eval_timer, ev_metrics,
                                                 ev_rows, ev_csv, eval_acc])
    tasks.select(on_task_row, None, [task_pick])
    eval_timer.tick(poll_eval, [eval_task], [ev_note, eval_task, ev_cancel, eval_timer, ev_metrics, ev_rows, ev_csv],
                    show_progress="hidden")
    return {"table": lib, "pick": pick, "refresh_outputs": refresh_outputs, "refresh_values": refresh_values}
