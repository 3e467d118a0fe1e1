"""Train tab: the JobSpec form, target modules from the model's real layers, a memory estimate, Start."""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from .. import charts, db, families, field_docs, jobs, sweep
from ..models import ModelError, is_bundled, linear_layer_names
from ..method_info import METHOD_FIELDS, method_errors
from ..spec import BUNDLED_MODEL, JobSpec, SpecError, field_help
from . import downloads, form
from .datasets_tab import dataset_names


def base_model_choices() -> list[tuple[str, str]]:
    """(label, value) of each model the Base model list offers: the bundled model, then every published model of
    the family table (studio.families), family by family, e.g. "Qwen2.5-0.5B-Instruct · Qwen2.5 · 0.5B ·
    Apache-2.0". Any other hub id or local folder can still be typed in."""
    choices = []
    for family, model in families.published_models():
        if is_bundled(model.hub_id):
            choices.insert(0, (f"{families.model_label(family, model)} · bundled", BUNDLED_MODEL))
        else:
            choices.append((families.model_label(family, model), model.hub_id))
    return choices


def module_choices(base_model: str) -> list[str]:
    try:
        names = linear_layer_names(base_model) or []
    except ModelError:
        names = []
    return [n for n in names if n != "lm_head"]


def refresh_modules(base_model: str):
    names = module_choices(base_model)
    return gr.update(choices=names, value=names)


def preset(base_model: str, which: str):
    """A target-module preset (all-linear, attention, mlp) expanded against the model's layers by the spec."""
    return gr.update(value=JobSpec(target_modules=[which]).resolved_target_modules(module_choices(base_model)))


def estimate_markdown(spec: JobSpec) -> str:
    try:
        from .. import catalog
        from ..models import cached_dir

        d = cached_dir(spec.base_model)
        config = catalog.config_for(spec.base_model, str(d) if d else None)
        if config is None:
            return "Memory estimate: the model's configuration is not known here."
        from ..jobs import estimate_for_workers

        est, where, warnings = estimate_for_workers(spec, config)
        listed = families.published(spec.base_model) if d is None else None
        if listed is not None and listed[1].note:  # what the table's shape leaves out, e.g. a vision tower
            where += f" · {listed[1].note}"
    except Exception as exc:  # an estimate must never block the form
        return f"Memory estimate unavailable: {exc}"
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in est.breakdown.items())
    fits = " · ".join(f"{gb} GB {'yes' if ok else 'no'}" for gb, ok in est.fits().items())
    warn = "".join(f"\n\n**Warning: too big for a worker.** {w}" for w in warnings)
    return (f"**Estimated peak memory: {est.total_gb:.2f} GB** · trainable {est.trainable_text()} · {where}{warn}\n\n"
            f"| term | GB |\n|---|---|\n{rows}\n\nFits on: {fits}")


def start_warnings(spec: JobSpec) -> str:
    """What Start says beside "queued" about the run's dataset: blanks left unfilled, tokens max length cuts."""
    from .. import library

    try:
        data = library.load(spec.dataset)
    except Exception:  # the warnings are a help, never a blocker
        return ""
    return blanks_warning(spec, data) + overlong_warning(spec, data)


def blanks_warning(spec: JobSpec, data) -> str:
    """A warning when the dataset's rows still hold template blanks ("I am {{name}}"): the run would teach them."""
    from ..datasets.stats import placeholder_note

    note = placeholder_note(data.rows)
    return (f"\n\n**Warning:** in '{spec.dataset}', {note}. Cancel the run if you did not mean it." if note
            else "")


def overlong_warning(spec: JobSpec, data) -> str:
    """A warning when max length would cut more than 5% of the dataset's trained tokens (first rows counted)."""
    from ..datasets import token_stats
    from ..datasets.stats import tokenizer_for
    from .datasets_tab import LOSS_WARNING, STATS_ROWS

    try:
        tok = tokenizer_for(spec.base_model)
        if tok is None or spec.method != "sft":
            return ""
        tokens = token_stats(tok, data.rows[:STATS_ROWS], data.kind, spec.max_length)
    except Exception:  # the warning is a help, never a blocker
        return ""
    if tokens["truncated_share"] <= LOSS_WARNING:
        return ""
    fate = ("these rows are dropped" if spec.overlong == "drop" else "truncation cuts them")
    return (f"\n\n**Warning:** {tokens['truncated_share']:.0%} of the trained tokens of '{spec.dataset}' lie past "
            f"max length {spec.max_length} in {tokens['overlong_rows']} rows, and {fate}; cancel the run and raise "
            "max length if they matter.")


def dataset_note(method: str, dataset: str | None) -> str:
    """One sentence when the chosen dataset is of a kind the chosen method cannot train, else nothing."""
    from .. import db

    rec = db.get_dataset(dataset) if dataset else None
    problem = method_errors(JobSpec(dataset=dataset or "", method=method), rec.kind).get("method") if rec else None
    return f"**Method:** {problem}." if problem else ""


def method_changed(method: str, dataset: str | None) -> list:
    """The chosen method's fields shown and the others hidden (in METHOD_FIELDS order), then the dataset
    checked against the method."""
    updates = form.method_updates(method)
    return [updates[name] for name in METHOD_FIELDS] + [dataset_note(method, dataset)]


def on_start(names: list[str], *values):
    """Start: (message, id of the job this browser session just queued, or None)."""
    try:
        spec = form.spec_from_values(names, list(values))
        job = jobs.submit(spec)
    except SpecError as exc:
        return form.errors_markdown(exc.errors), None
    except Exception as exc:  # the queue or database refused: say so, no traceback
        return f"**The run was not queued:** {exc}", None
    from .. import db

    pos = db.queue_position(job)
    return (f"Run **{job.name}** queued (position {pos}). Follow it in the Runs tab." if pos else
            f"Run **{job.name}** submitted ({job.status}).") + start_warnings(spec), job.id


def on_estimate(names: list[str], *values) -> str:
    try:
        return estimate_markdown(form.spec_from_values(names, list(values)))
    except SpecError as exc:
        return form.errors_markdown(exc.errors).replace("The run was not queued. ", "")


def on_yaml_download(names: list[str], *values):
    """(the YAML file box, shown once it holds the file; a status line)."""
    try:
        spec = form.spec_from_values(names, list(values))
    except SpecError as exc:
        return gr.update(), form.errors_markdown(exc.errors)
    out = downloads.new_file(f"{spec.name or 'job'}.yaml")
    out.write_text(spec.to_yaml())
    return gr.update(value=str(out), visible=True), "YAML ready."


def on_yaml_import(names: list[str], file):
    """Fill the form from a job YAML; a refused file changes nothing and says why."""
    if file is None:
        return [gr.update()] * len(names) + [""]
    try:
        spec = JobSpec.from_yaml(Path(file).read_text(encoding="utf-8"))
    except (SpecError, UnicodeDecodeError) as exc:
        errors = exc.errors if isinstance(exc, SpecError) else {"config": "the file is not UTF-8 text"}
        return [gr.update()] * len(names) + [form.errors_markdown(errors).replace("The run was not queued. ", "")]
    updates = []
    for n, v in zip(names, form.values_from_spec(names, spec)):
        if n == "target_modules":
            names_now = module_choices(spec.base_model)
            v = spec.resolved_target_modules(names_now) if names_now else v
            updates.append(gr.update(choices=names_now or v, value=v))
        elif n == "dataset":
            updates.append(gr.update(choices=dataset_names(), value=v))
        else:
            updates.append(gr.update(value=v))
    return updates + ["Form filled from the YAML file."]


def _bound(fn, names: list[str]):
    """A module-level handler with the form's field names bound, keeping its name for gradio and tests."""
    bound = functools.partial(fn, names)
    bound.__name__, bound.__doc__ = fn.__name__, fn.__doc__  # no __wrapped__: gradio reads the bound signature
    return bound


# the fields the memory estimate reads (their spec metadata says so): a change to any recomputes the estimate shown
ESTIMATE_INPUTS = tuple(name for name, meta in field_help().items() if meta["estimate"])


def basic_rows(names: list[str]) -> list[list[str]]:
    """The basic fields in two rows: the run's (epochs, learning rate, batch, length, system prompt), then the
    adapter's (its type first, 4-bit, and the fields adapter types read)."""
    from ..adapter_types import ADAPTER_TYPES

    adapter = {"peft_type", "load_in_4bit", "load_in_8bit", *(f for t in ADAPTER_TYPES.values() for f in t.fields)}
    return [[n for n in names if n not in adapter],
            sorted((n for n in names if n in adapter), key=lambda n: n != "peft_type")]


def _rows(comps: dict, names: list[str], defaults: JobSpec, min_width: int = 160, checks_apart: bool = False) -> None:
    """Fields in one row that wraps at ``min_width`` per field (hidden fields leave no gap). gradio lays a
    checkbox out with no minimum width, so in a row that wraps it is squeezed to its box: ``checks_apart`` puts
    the checkboxes after the other fields, CHECKS_PER_ROW to a row."""
    meta = field_help()
    checks = [n for n in names if checks_apart and isinstance(meta[n]["default"], bool)]
    rows = [[n for n in names if n not in checks]] + [checks[i:i + CHECKS_PER_ROW]
                                                       for i in range(0, len(checks), CHECKS_PER_ROW)]
    for row in filter(None, rows):
        with gr.Row():
            for name in row:
                comps[name] = form.make_component(name, meta[name], visible=form.visible_for(defaults, name),
                                                  min_width=min_width)


CHECKS_PER_ROW = 5


# ---- sweeps: a base job plus a grid or a random sample, queued as one group ---------------------------

def sweep_board(group: str | None):
    """The sweep's leaderboard (a table) and its parallel-coordinates plot."""
    empty = {"headers": ["rank", "run"], "data": []}
    if not group:
        return empty, charts.empty_figure("choose a sweep", uirevision="sweep")
    try:
        swept, rows = sweep.leaderboard(group)
    except KeyError:
        return empty, charts.empty_figure("this sweep no longer exists", uirevision="sweep")
    headers = ["rank", "run", "status", *swept, *SWEEP_HEADERS]
    data = [[_sweep_cell(row.get(h)) for h in headers] for row in rows]
    return {"headers": headers, "data": data}, charts.sweep_figure(rows, swept)


SWEEP_HEADERS = ["best_eval_loss", "final_loss", "probe_kept", "judge_win_rate", "seconds", "tokens_per_second"]


def _sweep_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 4)
    return "+".join(map(str, value)) if isinstance(value, list) else value


def sweep_queue(text: str, upload):
    """Queue the pasted (or uploaded) sweep; one sentence when it is refused, and nothing queued."""
    from ..spec import SpecError

    if upload:
        try:
            text = open(upload, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError):
            return "Not queued: the uploaded file is not UTF-8 text.", gr.update(), *sweep_board(None)
    if not (text or "").strip():
        return "Paste a sweep YAML or upload one first.", gr.update(), *sweep_board(None)
    try:
        plan = sweep.parse(text, f"sweep-{db.new_id()[:6]}")
        queued = sweep.queue(plan)
    except (sweep.SweepError, SpecError, ValueError) as exc:
        return f"Not queued: {exc}", gr.update(), *sweep_board(None)
    return (f"Queued {len(queued)} runs in sweep **{plan.name}**.", gr.update(choices=sweep.groups(), value=plan.name),
            *sweep_board(plan.name))


def sweep_cancel(group: str | None):
    if not group:
        return "Choose a sweep first.", *sweep_board(None)
    try:
        members = jobs.cancel_group(group)
    except KeyError:
        return "This sweep no longer exists.", *sweep_board(None)
    running = sum(j.status == "running" for j in members)
    return (f"Sweep {group} cancelled: queued runs will not start"
            + (f"; {running} running runs stop at the end of their current step." if running else "."),
            *sweep_board(group))


def sweep_panel() -> dict:
    """The Sweep accordion (under the form): queue a sweep YAML, its leaderboard and plot, cancel it."""
    with gr.Accordion("Sweep", open=False, elem_id="sweep"):
        gr.Markdown("A base job plus a grid (every combination) or a random sample over chosen fields, queued "
                    "as one group of ordinary runs, e.g. `name: lr-rank`, `base: {dataset: mydata, max_steps: "
                    "200}`, `grid: {learning_rate: [1e-4, 3e-4], r: [8, 16]}`.")
        with gr.Row():
            sweep_text = gr.Code(language="yaml", label="Sweep YAML", elem_id="sweep-yaml", scale=3)
            sweep_file = gr.File(label="or upload one", file_types=[".yaml", ".yml"], type="filepath", scale=1)
        sweep_btn = gr.Button("Queue sweep", variant="primary", elem_id="sweep-queue")
        sweep_msg = gr.Markdown(elem_id="sweep-status")
        with gr.Row():
            sweep_group = gr.Dropdown(choices=sweep.groups(), label="Sweep", elem_id="sweep-group", scale=4)
            sweep_refresh = gr.Button("Refresh", size="sm", scale=1)
            sweep_stop = gr.Button("Cancel sweep", variant="stop", elem_id="sweep-cancel", scale=1)
        sweep_table = gr.Dataframe(label="Leaderboard (best eval loss first)", interactive=False,
                                   elem_id="sweep-leaderboard")
        sweep_plot = gr.Plot(label="Settings and results", elem_id="sweep-plot")
    sweep_btn.click(sweep_queue, [sweep_text, sweep_file], [sweep_msg, sweep_group, sweep_table, sweep_plot])
    sweep_group.input(sweep_board, [sweep_group], [sweep_table, sweep_plot])
    sweep_refresh.click(lambda g: (gr.update(choices=sweep.groups()), *sweep_board(g)), [sweep_group],
                        [sweep_group, sweep_table, sweep_plot])
    sweep_stop.click(sweep_cancel, [sweep_group], [sweep_msg, sweep_table, sweep_plot])
    return {"text": sweep_text, "group": sweep_group, "table": sweep_table, "plot": sweep_plot}


def build() -> dict:
    """The form is a view of JobSpec: every field appears, placed by its own metadata (form.layout())."""
    meta, defaults, places = field_help(), JobSpec(), form.layout()
    comps: dict[str, gr.components.Component] = {}
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Row():
                    comps["base_model"] = gr.Dropdown(base_model_choices(), value=BUNDLED_MODEL,
                                                      allow_custom_value=True, label="Base model",
                                                      info=meta["base_model"]["help"], elem_id="spec-base_model",
                                                      scale=2)
                    comps["dataset"] = gr.Dropdown(dataset_names(), label="Dataset",
                                                   info=meta["dataset"]["help"], elem_id="spec-dataset")
                    comps["method"] = form.make_component("method", meta["method"])
                run, adapter = basic_rows(places["basic"])
                # the chosen method's own fields first (hidden ones take no room in a wrapping row), then the
                # run's, then the adapter's: five to a row
                _rows(comps, places["method"] + run, defaults, min_width=140)
                _rows(comps, adapter, defaults, min_width=140)
                modules = module_choices(BUNDLED_MODEL)
                with gr.Row(equal_height=True):
                    comps["target_modules"] = gr.CheckboxGroup(modules, value=modules, label="Target modules",
                                                               info=meta["target_modules"]["help"],
                                                               elem_id="spec-target_modules", scale=5)
                    with gr.Column(scale=1, min_width=120):
                        attn_btn = gr.Button("Attention only", size="sm")
                        mlp_btn = gr.Button("MLP only", size="sm")
                        all_btn = gr.Button("All linear", size="sm")
                with gr.Accordion("Advanced", open=False, elem_id="train-advanced"):
                    _rows(comps, places["advanced"], defaults, min_width=180, checks_apart=True)  # four to a row
                with gr.Accordion("What each field means", open=False, elem_id="field-docs"):
                    gr.Markdown(field_docs.markdown(level=3, compact=True), elem_id="field-docs-text")
            with gr.Column(scale=1, min_width=320):
                start = gr.Button("Start training", variant="primary", elem_id="start-training")
                status = gr.Markdown(elem_id="train-status")
                method_note = gr.Markdown(elem_id="method-note")  # a dataset the chosen method cannot train
                estimate = gr.Markdown(elem_id="memory-estimate")
                with gr.Accordion("YAML", open=False):
                    yaml_file = gr.File(label="Import a job YAML", file_types=[".yaml", ".yml"])
                    yaml_btn = gr.Button("Download this form as YAML", size="sm")
                    yaml_out = gr.File(label="YAML", interactive=False, visible=False, elem_id="yaml-download")
        sweep_panel()
        last_job = gr.State(None)  # inside the Tab: a component created directly under gr.Tabs breaks the tab bar
    names = list(comps)
    inputs = [comps[n] for n in names]
    estimate_fn = _bound(on_estimate, names)

    start_event = start.click(_bound(on_start, names), inputs, [status, last_job], concurrency_limit=4)
    comps["base_model"].change(refresh_modules, [comps["base_model"]], [comps["target_modules"]])
    attn_btn.click(lambda b: preset(b, "attention"), [comps["base_model"]], [comps["target_modules"]])
    mlp_btn.click(lambda b: preset(b, "mlp"), [comps["base_model"]], [comps["target_modules"]])
    all_btn.click(lambda b: preset(b, "all-linear"), [comps["base_model"]], [comps["target_modules"]])
    comps["method"].change(method_changed, [comps["method"], comps["dataset"]],
                           [*(comps[n] for n in METHOD_FIELDS), method_note])
    comps["peft_type"].change(form.adapter_updates, [comps["peft_type"]],
                              [comps[n] for n in form.adapter_fields()])
    comps["dataset"].change(dataset_note, [comps["method"], comps["dataset"]], [method_note])
    for name, (leader, value) in form.SHOWN_WHEN.items():
        comps[leader].change(lambda v, value=value: gr.update(visible=v == value), [comps[leader]], [comps[name]])
    for name in ESTIMATE_INPUTS:
        comps[name].change(estimate_fn, inputs, [estimate], show_progress="hidden")
    yaml_btn.click(_bound(on_yaml_download, names), inputs, [yaml_out, status])
    yaml_file.upload(_bound(on_yaml_import, names), [yaml_file], [*inputs, status])
    return {"components": comps, "start": start, "start_event": start_event, "last_job": last_job,
            "status": status, "estimate": estimate, "estimate_fn": estimate_fn, "inputs": inputs}
