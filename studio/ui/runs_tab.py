"""Runs tab: status, live chart (a gr.Timer polling the database for points since the last one),
progress with ETA, cancel / resume / delete, YAML and CSV downloads."""
from __future__ import annotations

import html
import time

import gradio as gr

from .. import charts, db, jobs
from ..settings import get_settings
from ..spec import JobSpec
from . import downloads

POLL_SECONDS = 1.5
LOG_TAIL_LINES = 12


def run_choices() -> list[tuple[str, str]]:
    return [(f"{j.name} · {j.status}", j.id) for j in db.list_jobs()]


def runs_table() -> list[list]:
    out = []
    for j in db.list_jobs():
        spec = j.spec
        quant = "4-bit" if spec.get("load_in_4bit") else "8-bit" if spec.get("load_in_8bit") else "16-bit"
        out.append([j.name, j.status, f"{j.current_step}/{j.total_steps or '?'}", spec.get("base_model"),
                    spec.get("dataset"), f"r={spec.get('r')}, {quant}", j.device or "",
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at))])
    return out


def empty_state() -> str:
    """What the Runs tab says before a run is chosen (evaluated at each page load)."""
    if not db.list_jobs():
        return "No runs yet: add a dataset in the **Datasets** tab, then start one in the **Train** tab."
    return "Choose a run above to follow its curves, progress and log."


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_html(job: db.Job) -> str:
    total = job.total_steps or 0
    done = job.current_step or 0
    frac = min(1.0, done / total) if total else 0.0
    elapsed = eta = None
    if job.started_at:
        end = (job.finished_at if job.status not in db.ACTIVE else None) or time.time()
        elapsed = end - job.started_at
        if job.status == "running" and done and total:
            eta = elapsed / done * (total - done)
    pct = f"{frac * 100:.0f}%"
    text = f"step {done} / {total or '?'} · elapsed {_fmt_seconds(elapsed)}"
    if job.status == "running":
        text += f" · ETA {_fmt_seconds(eta)}"
    if job.epoch is not None:
        text += f" · epoch {job.epoch:.2f}"
    return (f'<div class="studio-progress" data-step="{done}" data-total="{total}">'
            f'<div class="studio-progress-bar" style="width:{pct}"></div></div>'
            f'<div class="studio-progress-text">{html.escape(text)}</div>')


def status_markdown(job: db.Job) -> str:
    line = f"### {job.name} — **{job.status}**"
    pos = db.queue_position(job)
    if pos:
        line += f" (position {pos} in the queue)"
    if job.error:
        line += f"\n\n**Error:** {job.error}"
    if job.worker_host:
        line += f"\n\nworker {job.worker_host} · device {job.device or '?'}"
    s = job.summary
    if job.status == "completed" and s:
        bits = []
        if s.get("final_loss") is not None:
            bits.append(f"final loss {s['final_loss']:.3f}")
        if s.get("best_eval_loss") is not None:
            bits.append(f"best eval loss {s['best_eval_loss']:.3f} (step {s.get('best_eval_step')})")
        if s.get("runtime_seconds"):
            bits.append(f"runtime {_fmt_seconds(s['runtime_seconds'])}")
        if s.get("tokens_per_second"):
            bits.append(f"{s['tokens_per_second']:.0f} tokens/s")
        if s.get("trainable_params"):
            bits.append(f"trainable {s['trainable_params'] / 1e6:.2f}M of {s['total_params'] / 1e6:.0f}M")
        if s.get("adapter_bytes"):
            bits.append(f"adapter {s['adapter_bytes'] / 1e6:.1f} MB")
        line += "\n\n" + " · ".join(bits)
        if (s.get("best_checkpoint") or {}).get("label"):
            line += f"\n\nchat, export and the adapter zip use {s['best_checkpoint']['label']}"
        line += forgetting_markdown(job)
    return line


CHANGED_SHOWN = 12   # questions that changed, shown on the card; all of them are in <run>/probe/general.json
CHECK_GIVEN_UP_S = 3600  # a check still "checking" this long after the run finished lost its worker: stop polling


def checking(job: db.Job) -> bool:
    """Whether the worker is still answering the run's forgetting check (the run itself is complete)."""
    return (job.status == "completed" and (job.summary.get("forgetting") or {}).get("state") == "checking"
            and time.time() - (job.finished_at or 0) < CHECK_GIVEN_UP_S)


def _probe_report(job: db.Job) -> dict:
    import json

    from ..probe import PROBE_FOLDER

    try:
        return json.loads((get_settings().resolve(job.output_dir) / PROBE_FOLDER / "general.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}


def changed_questions(job: db.Job) -> list[list[str]]:
    """The probe questions the base and the adapter answered differently (right for one, wrong for the other):
    question, base answer, right/wrong, adapter answer, right/wrong."""
    word = {True: "right", False: "wrong"}
    return [[q["prompt"], q["base_reply"], word[bool(q["base_correct"])], q["adapter_reply"],
             word[bool(q["adapter_correct"])]]
            for q in _probe_report(job).get("questions") or [] if q.get("changed")]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return html.escape(text).replace("|", "\\|") or "(empty)"


def forgetting_markdown(job: db.Job) -> str:
    """The forgetting check on the run's card: in progress, its one-line result with the flag, and the questions
    that changed side by side."""
    check = job.summary.get("forgetting") or {}
    state = check.get("state")
    if state == "checking":
        return "\n\nchecking general skills… (the 200-question probe, base and adapter, on the worker)"
    if state in ("failed", "skipped"):
        return f"\n\nforgetting check not done: {check.get('error', state)}"
    if state != "done":
        return ""
    out = f"\n\n**{check['summary']}**"
    if check.get("flagged"):
        out += f"\n\n**Flagged**: {check.get('flag') or 'forgetting'}"
    changed = changed_questions(job)
    if changed:
        more = len(changed) - CHANGED_SHOWN
        out += ("\n\nQuestions that changed" + (f" (first {CHANGED_SHOWN} of {len(changed)})" if more > 0 else "")
                + ":\n\n| question | base | | adapter | |\n|---|---|---|---|---|\n"
                + "\n".join("| " + " | ".join(_cell(c) for c in row) + " |" for row in changed[:CHANGED_SHOWN]))
    return out


def log_tail(job: db.Job) -> str:
    if not job.output_dir:
        return ""
    path = get_settings().resolve(job.output_dir) / "train.log"
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    keep = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln
            or (" INFO studio." in ln and ": timing " not in ln)]  # the studio's own sentences, not its timings
    return "\n".join(keep[-LOG_TAIL_LINES:])


def poll(job_id: str | None, cache: dict | None, smoothing: float, log_scale: bool, force: bool = False):
    """One timer tick: new points since the last seen id, the figure, status, progress."""
    if not job_id:
        return (cache, gr.update(), "Choose a run.", "", "", gr.Timer(active=False))
    job = db.get_job(job_id)
    if job is None:
        return ({}, None, "This run no longer exists.", "", "", gr.Timer(active=False))
    if job.status == "running" and jobs.mark_lost_jobs():  # a dead worker never leaves a run "running"
        job = db.get_job(job_id)
    cache = cache if cache and cache.get("job_id") == job_id else {"job_id": job_id, "last_id": 0, "rows": []}
    new = db.metrics_since(job_id, cache["last_id"])
    fresh = not cache["rows"] or force
    if new:
        cache = {"job_id": job_id, "last_id": new[-1].id, "rows": cache["rows"] + [m.as_row() for m in new],
                 "status": job.status}
    active = job.status in db.ACTIVE or checking(job)
    if not new and not fresh and cache.get("status") == job.status:
        # nothing new: leave the figure alone (no redraw in the browser, no work on the server)
        return (cache, gr.skip(), status_markdown(job), progress_html(job), log_tail(job), gr.Timer(active=active))
    cache["status"] = job.status
    best = job.summary.get("best_eval_step")
    fig = charts.run_figure(cache["rows"], smoothing=smoothing, log_scale=log_scale, best_step=best,
                            total_steps=job.total_steps, uirevision=job_id) if cache["rows"] or active else \
        charts.empty_figure(f"no steps recorded: the run {job.status} before its first", uirevision=job_id)
    return (cache, fig, status_markdown(job), progress_html(job), log_tail(job), gr.Timer(active=active))


def select_run(job_id, smoothing, log_scale):
    cache, fig, status, progress, logs, _ = poll(job_id, None, smoothing, log_scale, force=True)
    job = db.get_job(job_id) if job_id else None
    return cache, fig, status, progress, logs, gr.Timer(active=bool(job and (job.status in db.ACTIVE or checking(job))))


CHOOSE_FIRST = "Choose a run first."


def do_cancel(job_id):
    if not job_id:
        return CHOOSE_FIRST
    try:
        job = jobs.cancel(job_id)
    except KeyError:
        return "This run no longer exists."
    if job.status == "running":
        return "Cancel requested: the run stops at the end of the current step and keeps its last checkpoint."
    if job.cancel_requested and jobs.checking(job):
        return "Cancel requested: the forgetting check stops and is recorded as skipped; the run stays completed."
    return f"Run is {job.status}."


def do_resume(job_id):
    if not job_id:
        return CHOOSE_FIRST, gr.update()
    try:
        job = jobs.resume(job_id)
    except (ValueError, KeyError) as exc:
        return f"Not resumed: {exc}", gr.update()
    return f"Run {job.name} queued to resume from its last checkpoint.", gr.Timer(active=True)


def do_delete(job_id):
    if not job_id:
        return CHOOSE_FIRST, gr.update()
    try:
        jobs.delete(job_id)
    except ValueError as exc:
        return f"Not deleted: {exc}", gr.update()
    return "Run deleted.", gr.update(choices=run_choices(), value=None)


def file_box(path=None) -> dict:
    """A download box's update: shown holding ``path``, hidden while there is no file."""
    return gr.update(value=str(path) if path else None, visible=bool(path))


def download_yaml(job_id):
    job = db.get_job(job_id) if job_id else None
    if job is None:
        return file_box()
    out = downloads.new_file(f"{job.name}.yaml")
    out.write_text(JobSpec.from_dict(job.spec).to_yaml())
    return file_box(out)


def download_csv(job_id):
    job = db.get_job(job_id) if job_id else None
    if job is None:
        return file_box()
    out = downloads.new_file(f"{job.name}-metrics.csv")
    out.write_text(charts.rows_to_csv(db.metric_rows(job.id)))
    return file_box(out)


def wake(job_id: str | None, cache: dict | None):
    """Restart the Runs tab's poll when the chosen run became active again since its last tick (resumed,
    perhaps in another session); otherwise leave the timer as it is."""
    job = db.get_job(job_id) if job_id else None
    if job is None or job.status not in db.ACTIVE or (cache or {}).get("status") == job.status:
        return gr.skip()
    return gr.Timer(active=True)


def compare(job_ids: list[str] | None, smoothing: float, log_scale: bool):
    """Overlay any runs (finished or live), each labelled by what differs in its config."""
    picked = [j for j in (db.get_job(i) for i in (job_ids or [])) if j is not None]
    if not picked:
        return charts.empty_figure("choose runs to compare", uirevision="compare"), {"headers": ["setting"], "data": []}
    configs = {j.name: {k: v for k, v in j.spec.items() if k != "name"} for j in picked}
    labels = charts.config_labels(configs)
    runs = [(f"{j.name}: {labels[j.name]}" if len(picked) > 1 else j.name, db.metric_rows(j.id)) for j in picked]
    fig = charts.compare_figure(runs, smoothing=smoothing, log_scale=log_scale)
    return fig, {"headers": ["setting", *configs], "data": charts.config_diff(configs)}


def build() -> dict:
    with gr.Tab("Runs", id="runs"):
        with gr.Row():
            run = gr.Dropdown(choices=run_choices(), label="Run", elem_id="run-select", scale=4)
            refresh = gr.Button("Refresh list", size="sm", scale=1)
        status = gr.Markdown(value=empty_state, elem_id="run-status")
        progress = gr.HTML(elem_id="run-progress")
        with gr.Row():
            smoothing = gr.Slider(0, 0.99, value=0.6, step=0.01, label="Smoothing", scale=3)
            log_scale = gr.Checkbox(False, label="Log scale", scale=1)
        chart = gr.Plot(label="Training curves", elem_id="run-chart")
        logs = gr.Textbox(label="Log (the studio's messages, warnings and errors)", lines=4, max_lines=12, interactive=False,
                          elem_id="run-log")
        with gr.Row():
            cancel = gr.Button("Cancel", variant="stop", elem_id="run-cancel")
            resume = gr.Button("Resume", elem_id="run-resume")
            delete = gr.Button("Delete run", elem_id="run-delete")
            yaml_btn = gr.Button("Download YAML")
            csv_btn = gr.Button("Download metrics CSV")
        action = gr.Markdown()
        files = gr.File(label="Download", interactive=False, visible=False, elem_id="run-download")
        table = gr.Dataframe(value=runs_table, elem_id="runs-table", headers=["name", "status", "step", "base", "dataset", "config",
                                                        "device", "created"], interactive=False, label="All runs")
        with gr.Accordion("Compare runs", open=False, elem_id="compare"):
            picks = gr.Dropdown(choices=run_choices(), multiselect=True, max_choices=20, label="Runs to overlay",
                                elem_id="compare-runs")
            compare_btn = gr.Button("Compare", elem_id="compare-button")
            compare_chart = gr.Plot(label="Runs compared", elem_id="compare-chart")
            diff = gr.Dataframe(label="Settings that differ", interactive=False, elem_id="compare-diff")
        cache = gr.State({})
        timer = gr.Timer(POLL_SECONDS, active=False)
    outs = [cache, chart, status, progress, logs, timer]
    # .input (user choice) rather than .change: the Runs tab re-selects programmatically after Start (below)
    run.input(select_run, [run, smoothing, log_scale], outs)
    timer.tick(poll, [run, cache, smoothing, log_scale], outs, show_progress="hidden")
    for ctl in (smoothing, log_scale):
        ctl.change(lambda r, c, s, l: poll(r, c, s, l, force=True), [run, cache, smoothing, log_scale], outs,
                   show_progress="hidden")
    refresh.click(lambda: (gr.update(choices=run_choices()), gr.update(choices=run_choices()), runs_table()), None,
                  [run, picks, table])
    compare_btn.click(compare, [picks, smoothing, log_scale], [compare_chart, diff])
    cancel.click(do_cancel, [run], [action])
    resume.click(do_resume, [run], [action, timer])
    delete.click(do_delete, [run], [action, run])
    yaml_btn.click(download_yaml, [run], [files])
    csv_btn.click(download_csv, [run], [files])
    return {"run": run, "table": table, "timer": timer, "cache": cache, "picks": picks, "select": select_run,
            "select_inputs": [run, smoothing, log_scale], "outs": outs}
