"""The gradio app: one module per tab; this module only assembles them."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

STATIC = Path(__file__).resolve().parent.parent.parent / "static"


def build_ui() -> gr.Blocks:
    from .. import db
    from . import adapters_tab, chat_tab, datasets_tab, downloads, live, runs_tab, train_tab

    db.get_engine()  # create tables before the first request
    downloads.remove_old()
    # gradio's own copies of downloaded files go after an hour too (checked hourly)
    with gr.Blocks(title="Fine-Tune Studio", delete_cache=(3600, 3600)) as demo:
        gr.HTML('<div class="studio-header"><img src="/gradio_api/file=static/logo.svg" alt="" class="studio-logo">'
                '<h1>Fine-Tune Studio</h1><span>LoRA and QLoRA fine-tuning, no code</span></div>')
        worker = gr.Markdown(value=live.worker_line, elem_id="worker-line")
        with gr.Tabs(elem_id="tabs"):
            data = datasets_tab.build()
            train = train_tab.build()
            runs = runs_tab.build()
            chat = chat_tab.build()
            library = adapters_tab.build()
        datasets_tab.wire(data, [train["components"]["dataset"]])
        datasets_tab.follow(data, *(train["components"][n] for n in ("base_model", "max_length", "system_prompt_mode",
                                                                     "system_prompt")))

        def after_start(job_id):
            """Show this session's new run in the Runs tab (never another session's)."""
            choices = runs_tab.run_choices()
            run = gr.update(choices=choices, value=job_id) if job_id else gr.update(choices=choices)
            return run, gr.update(choices=choices), runs_tab.runs_table()

        train["start_event"].then(after_start, [train["last_job"]], [runs["run"], runs["picks"], runs["table"]]).then(
            runs["select"], runs["select_inputs"], runs["outs"])

        def on_load():
            choices = runs_tab.run_choices()
            return (gr.update(choices=datasets_tab.dataset_names()), gr.update(choices=choices),
                    gr.update(choices=choices), runs_tab.runs_table(),
                    train["estimate_fn"](*[c.value for c in train["inputs"]]),
                    *chat["refresh_values"](), *library["refresh_values"]())

        demo.load(on_load, None, [train["components"]["dataset"], runs["run"], runs["picks"], runs["table"],
                                  train["estimate"], *chat["refresh_outputs"], *library["refresh_outputs"]])

        # every place that shows a run's status follows the database on its own, one light tick for all
        shown = gr.State([])
        clock = gr.Timer(live.SYNC_SECONDS)
        synced = [worker, runs["run"], runs["picks"], runs["table"], *chat["refresh_outputs"],
                  *library["refresh_outputs"]]

        def sync(sent, adapter_a, run_id, cache):
            choices = runs_tab.run_choices()
            fresh = [live.worker_line(), gr.update(choices=choices), gr.update(choices=choices), runs_tab.runs_table(),
                     *chat["refresh_values"](adapter_a), *library["refresh_values"]()]
            return fresh, *live.only_changed(sent, fresh), runs_tab.wake(run_id, cache)

        clock.tick(sync, [shown, chat["run"], runs["run"], runs["cache"]], [shown, *synced, runs["timer"]],
                   show_progress="hidden")
    return demo


def launch_kwargs() -> dict:
    """What every launch of the UI passes to ``demo.launch`` besides host, port and login: the look, the
    folders it may serve, the upload limit and the guard that refuses uploads from other sites' pages."""
    from starlette.middleware import Middleware

    from ..settings import get_settings
    from .downloads import downloads_dir
    from .uploads import SameOriginUploads, page_script

    return {"css_paths": [STATIC / "studio.css"], "favicon_path": STATIC / "favicon.svg",
            "theme": gr.themes.Soft(primary_hue="indigo"), "allowed_paths": [str(STATIC), str(downloads_dir())],
            "max_file_size": get_settings().upload_limit_bytes, "js": page_script(),
            "app_kwargs": {"middleware": [Middleware(SameOriginUploads)]}}
