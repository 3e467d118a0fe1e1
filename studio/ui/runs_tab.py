"""Runs tab: status, live chart (a gr.Timer polling the database for points since the last one),
progress with ETA, cancel / resume / delete, YAML and CSV downloads."""
from __future__ import annotations

import html
import time

import gradio as gr

from .. import charts, db, jobs, sweep
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
    return line


def log_tail(job: db.Job) -> str:
    if not job.output_dir:
        return ""
    path = get_settings().resolve(job.output_dir) / "train.log"
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    keep = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "job " in ln]
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
    active = job.status in db.ACTIVE
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
    return cache, fig, status, progress, logs, gr.Timer(active=bool(job and job.status in db.ACTIVE))


CHOOSE_FIRST = "Choose a run first."


def do_cancel(job_id):
    if not job_id:
        return CHOOSE_FIRST
    try:
        job = jobs.cancel(job_id)
    except KeyError:
        return "This run no longer exists."
    return ("Cancel requested: the run stops at the end of the current step and keeps its last checkpoint."
            if job.status == "running" else f"Run is {job.status}.")


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
        logs = gr.Textbox(label="Log (warnings and errors)", lines=4, max_lines=12, interactive=False,
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
    sweep_btn.click(sweep_queue, [sweep_text, sweep_file], [sweep_msg, sweep_group, sweep_table, sweep_plot])
    sweep_group.input(sweep_board, [sweep_group], [sweep_table, sweep_plot])
    sweep_refresh.click(lambda g: (gr.update(choices=sweep.groups()), *sweep_board(g)), [sweep_group],
                        [sweep_group, sweep_table, sweep_plot])
    sweep_stop.click(sweep_cancel, [sweep_group], [sweep_msg, sweep_table, sweep_plot])
    return {"run": run, "table": table, "timer": timer, "cache": cache, "picks": picks, "select": select_run,
            "select_inputs": [run, smoothing, log_scale], "outs": outs}
