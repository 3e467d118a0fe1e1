"""Adapters tab: the library of finished runs and imported adapters, zip download, import, merge and
GGUF export (with drift check and serving snippets), golden-prompt answers and batch evaluation.

Layout and glue only: the work is in studio.adapters and studio.evaluation. Model work (merge, GGUF,
evaluation) waits its turn in gradio's queue; evaluation shares the Chat tab's engine and its turn.
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from .. import adapters, db
from ..chat import AUTO_BASE
from ..models import shown_model, shown_path
from . import downloads
from .runs_tab import file_box

TABLE_HEADERS = ["name", "kind", "base", "config", "final loss", "best eval loss", "steps", "size", "created"]
SNIPPETS = (("endpoint_curl", "curl (the studio's inference server)", "shell"),
            ("endpoint_openai", "Python, `openai` client (the studio's inference server)", "python"),
            ("vllm", "vLLM (serve base + adapter)", "shell"),
            ("openai", "OpenAI-compatible request (to vLLM)", "shell"),
            ("peft", "Python (transformers + peft)", "python"), ("ollama", "Ollama (after GGUF export)", "shell"),
            ("llama_cpp", "llama.cpp (after GGUF export)", "shell"))


def _num(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def table() -> list[list]:
    rows = []
    for a in adapters.list_adapters():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(a["created_at"])) if a["created_at"] else ""
        rows.append([a["name"], a["kind"], shown_model(a["base_model"]), a["config"], _num(a["final_loss"]),
                     _num(a["best_eval_loss"]), a["steps"], adapters.human_bytes(a["bytes"]), created])
    return rows


def library_choices() -> list[tuple[str, str]]:
    return [(f"{a['name']} ({a['kind']}, {shown_model(a['base_model'])})", a["ref"]) for a in adapters.list_adapters()]


def eval_sources() -> list[tuple[str, str]]:
    """Where batch-evaluation rows come from: a run's held-out split, or a whole dataset."""
    out = [(f"held-out rows of {j.name}", f"run:{j.id}") for j in db.list_jobs(("completed",))]
    return out + [(f"dataset {d.name} ({d.rows} rows)", f"dataset:{d.name}") for d in db.list_datasets()]


def refresh_values() -> tuple:
    from .chat_tab import base_choices

    return (table(), gr.update(choices=library_choices()), gr.update(choices=adapters.chat_choices()),
            gr.update(choices=eval_sources()), gr.update(choices=base_choices()),
            gr.update(choices=adapters.base_choices()))


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
        path = adapters.zip_adapter(ref)
    except (adapters.AdapterError, ValueError) as exc:
        return file_box(), f"**Error:** {exc}"
    return (file_box(_download_copy(path)),
            f"Zip ready: {path.name} ({adapters.human_bytes(path.stat().st_size)}).")


def _snippet_values(ref, gguf_file=None) -> list:
    """One update per serving box: the chosen adapter's command, shown only where there is one (the
    Ollama and llama.cpp boxes appear once a GGUF exists)."""
    snippets = {}
    if ref:
        try:
            snippets = adapters.snippets(ref, gguf_file)
        except (adapters.AdapterError, ValueError):
            pass  # an adapter that cannot be resolved any more: no commands to show
    return [gr.update(value=snippets.get(key, ""), visible=bool(snippets.get(key))) for key, _, _ in SNIPPETS]


def drift_markdown(report: dict) -> str:
    lines = [f"**Drift check ({report.get('quant', '?')})**: {report['identical_replies']}/{report['prompts']} "
             f"identical greedy replies, {report['identical_prompt_tokens']}/{report['prompts']} identical prompt "
             f"tokenisations, max |logit diff| {report['max_abs_logit_diff']:.4f}, mean "
             f"{report['mean_abs_logit_diff']:.5f} ({report['seconds']:.1f} s)."]
    for hf, gguf in report.get("replies", [])[:3]:
        mark = "same" if hf == gguf else "differs"
        lines.append(f"- {mark}: HF `{hf[:80]!s}` · GGUF `{gguf[:80]!s}`")
    return "\n".join(lines)


def on_select(ref):
    """Golden answers, stored drift reports and serving snippets of the chosen adapter."""
    from .. import evaluation

    headers, rows = ["prompt"], []
    note = ""
    if ref:
        try:
            a = adapters.resolve(ref)
            if a.job_id:
                headers, rows = evaluation.golden_table(evaluation.read_golden(a.job_id))
            note = "\n\n".join(drift_markdown(r) for r in adapters.read_drift(ref))
        except (adapters.AdapterError, KeyError, ValueError) as exc:
            note = f"**Error:** {exc}"
    return (gr.update(value=rows, headers=headers), note, *_snippet_values(ref))


def on_merge(ref, dtype):
    if not ref:
        return "Choose an adapter first.", *_snippet_values(ref)
    try:
        result = adapters.merge(ref, dtype=dtype)
    except Exception as exc:  # any failure leaves no half-written folder (studio.export); say why
        return f"**Merge failed:** {exc}", *_snippet_values(ref)
    return (f"Merged into `{shown_path(result['path'])}` ({adapters.human_bytes(result['bytes'])}, "
            f"{result['seconds']:.1f} s).",
            *_snippet_values(ref))


def on_gguf(ref, quant, drift):
    if not ref:
        return "Choose an adapter first.", *_snippet_values(ref)
    try:
        result = adapters.export_gguf(ref, quant=quant, drift=bool(drift))
    except Exception as exc:
        return f"**GGUF export failed:** {exc}", *_snippet_values(ref)
    lines = []
    if "merge" in result:
        m = result["merge"]
        lines.append(f"Merged into `{shown_path(m['path'])}` ({adapters.human_bytes(m['bytes'])}, "
                     f"{m['seconds']:.1f} s).")
    g = result["gguf"]
    lines.append(f"Wrote `{shown_path(g['path'])}` ({adapters.human_bytes(g['bytes'])}, {g['seconds']:.1f} s) and "
                 f"`{result['modelfile']}`.")
    if "drift" in result:
        lines.append(drift_markdown(result["drift"]))
    return "\n\n".join(lines), *_snippet_values(ref, g["path"])


def on_import(files, name, base):
    if not files:
        return "Upload a .zip of the adapter folder, or adapter_config.json and adapter_model.safetensors.", \
            *refresh_values()
    paths = [getattr(f, "name", f) for f in (files if isinstance(files, list) else [files])]
    try:
        folder = adapters.import_adapter(paths, name, base)
    except (adapters.AdapterError, ValueError) as exc:
        return f"**Error:** {exc}", *refresh_values()
    return (f"Imported **{folder.name}** for {shown_model(base)}; it is now in the Chat tab's adapter lists.",
            *refresh_values())


def _eval_rows(source: str) -> list[dict]:
    from .. import library
    from ..spec import JobSpec

    kind, _, value = (source or "").partition(":")
    if kind == "dataset":
        return library.load(value).rows
    if kind == "run":
        job = db.get_job(value)
        if job is None:
            raise ValueError("that run no longer exists")
        spec = JobSpec.from_dict(job.spec)
        if spec.eval_dataset:
            return library.load(spec.eval_dataset).rows
        _, held_out = library.split_rows(  # the same seeded split training held out
            library.load(spec.dataset).rows, spec.eval_split, spec.seed)
        if not held_out:
            raise ValueError(f"{job.name} held out no rows (eval split 0); choose a dataset instead")
        return held_out
    raise ValueError("choose where the evaluation rows come from")


def on_evaluate(base, refs, source, limit, max_new_tokens, progress=gr.Progress()):
    from .. import evaluation

    empty = (gr.update(), gr.update(), file_box())
    refs = [r for r in (refs or []) if r][:3]
    try:
        chosen = [adapters.resolve(r) for r in refs]
        base_model = base if base and base != AUTO_BASE else (chosen[0].base_model if chosen else "")
        if not base_model:
            return "Choose a base model or at least one adapter.", *empty
        rows = _eval_rows(source)
        names: dict[str, str] = {}
        for a in chosen:
            label = a.name if a.name not in names and a.name != "base" else f"{a.name}-{len(names) + 1}"
            names[label] = str(a.folder)
        result = evaluation.evaluate_batch(base_model, names, rows, max_new_tokens=int(max_new_tokens),
                                           limit=int(limit), progress=lambda d, t: progress(d / t, f"{d}/{t}"))
    except Exception as exc:
        return f"**Error:** {exc}", *empty
    headers, metric_rows = evaluation.metrics_table(result)
    row_headers = ["prompt", "reference"] + [f"{m}" for m in result["models"]]
    detail = [[r["prompt"], r["reference"], *[r["replies"][m] for m in result["models"]]] for r in result["rows"]]
    csv_path = downloads.new_file("batch-evaluation.csv")
    csv_path.write_text(evaluation.to_csv(result))
    note = f"Evaluated {len(result['rows'])} rows on {len(result['models'])} models in {result['seconds']:.1f} s."
    return (note, gr.update(value=metric_rows, headers=headers), gr.update(value=detail, headers=row_headers),
            file_box(csv_path))


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
        with gr.Accordion("Export: merge, GGUF, serving", open=True):
            with gr.Row():
                dtype = gr.Radio(["float32", "bfloat16", "float16"], value="float32", label="Merged weights dtype")
                quant = gr.Radio(["q8_0", "f16"], value="q8_0", label="GGUF type")
                drift = gr.Checkbox(True, label="Check drift after the GGUF export (load it back and compare)")
            with gr.Row():
                merge_btn = gr.Button("Merge into the base", elem_id="adapters-merge")
                gguf_btn = gr.Button("Export GGUF + Ollama Modelfile", elem_id="adapters-gguf")
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
                    imp_base = gr.Dropdown(choices=adapters.base_choices(), allow_custom_value=True,
                                           label="Base model it was trained on", elem_id="adapters-import-base")
                    imp_btn = gr.Button("Import", elem_id="adapters-import")
            imp_note = gr.Markdown(elem_id="adapters-import-note")
        with gr.Accordion("Batch evaluation", open=False):
            with gr.Row():
                ev_base = gr.Dropdown(choices=base_choices(), value=AUTO_BASE, label="Base model",
                                      allow_custom_value=True)
                ev_refs = gr.Dropdown(choices=adapters.chat_choices(), multiselect=True, max_choices=3,
                                      label="Adapters (up to 3)", elem_id="adapters-eval-adapters")
                ev_source = gr.Dropdown(choices=eval_sources(), label="Rows", elem_id="adapters-eval-source")
            with gr.Row():
                ev_limit = gr.Slider(1, 200, value=20, step=1, label="Rows to evaluate (at most)")
                ev_tokens = gr.Slider(8, 512, value=96, step=8, label="Max new tokens per reply")
                ev_btn = gr.Button("Evaluate", variant="primary", elem_id="adapters-eval-run")
            ev_note = gr.Markdown(elem_id="adapters-eval-note")
            ev_metrics = gr.Dataframe(label="Per model", interactive=False, elem_id="adapters-eval-metrics")
            ev_rows = gr.Dataframe(label="Per row", interactive=False, wrap=True, elem_id="adapters-eval-rows")
            ev_csv = gr.File(label="CSV", interactive=False, visible=False, elem_id="adapters-eval-csv")

    refresh_outputs = [lib, pick, ev_refs, ev_source, ev_base, imp_base]
    refresh.click(refresh_values, None, refresh_outputs)
    zip_btn.click(on_zip, [pick], [zip_file, note])
    pick.change(on_select, [pick], [golden, export_note, *codes])
    merge_btn.click(on_merge, [pick, dtype], [export_note, *codes], concurrency_limit=1, concurrency_id="export")
    gguf_btn.click(on_gguf, [pick, quant, drift], [export_note, *codes], concurrency_limit=1,
                   concurrency_id="export")
    imp_btn.click(on_import, [upload, imp_name, imp_base], [imp_note, *refresh_outputs])
    # shares the chat engine, so it takes the chat's turn
    ev_btn.click(on_evaluate, [ev_base, ev_refs, ev_source, ev_limit, ev_tokens],
                 [ev_note, ev_metrics, ev_rows, ev_csv], concurrency_limit=1, concurrency_id="chat")
    return {"table": lib, "pick": pick, "refresh_outputs": refresh_outputs, "refresh_values": refresh_values}
