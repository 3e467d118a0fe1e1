"""The tabs' handlers, called directly (no browser): form values in, messages and figures out."""
import json

from studio import db


def _job(name="r1", **spec):
    from studio.spec import JobSpec

    job = db.Job(name=name, spec_json=JobSpec(dataset="d", **spec).to_json(), status="running", total_steps=10,
                 current_step=2, started_at=1.0)
    with db.session() as s:
        s.add(job)
        s.commit()
    return job


def test_bad_upload_gets_one_sentence_and_nothing_is_stored(studio_home, tmp_path):
    from studio.ui import datasets_tab

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    message, *_ = datasets_tab.check_upload(str(bad), "auto", False, "SmolLM2-135M-Instruct", 512)
    assert message.startswith("**This file cannot be used:**") and "line 2" in message
    message, table, _ = datasets_tab.add_upload(str(bad), "auto", False, "")
    assert message.startswith("**Not added:**") and table == []
    assert db.list_datasets() == [] and not any((studio_home / "datasets").iterdir())


def test_good_upload_previews_then_stores_once(studio_home, tmp_path):
    from identity_data import write
    from studio.ui import datasets_tab

    path = write(tmp_path / "id.jsonl")
    message, preview, stats, *_ = datasets_tab.check_upload(str(path), "auto", False, "SmolLM2-135M-Instruct", 512)
    assert "40 rows" in message and "messages" in message
    assert "Zorblax" in json.dumps(preview["value"])
    first, table, _ = datasets_tab.add_upload(str(path), "auto", False, "id")
    again, table2, _ = datasets_tab.add_upload(str(path), "auto", False, "other-name")
    assert first.startswith("Added") and again.startswith("Already in the library")
    assert len(table2) == 1


def test_poll_reads_only_new_points_and_stops_the_timer_when_done(studio_home):
    from studio.ui import runs_tab

    job = _job()
    db.add_metrics(job.id, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    cache, fig, status, progress, _, timer = runs_tab.poll(job.id, None, 0.0, False)
    assert len(cache["rows"]) == 2 and "running" in status and 'data-step="2"' in progress
    assert timer.active
    db.add_metrics(job.id, [{"step": 3, "loss": 1.2}])
    cache, fig, *_ = runs_tab.poll(job.id, cache, 0.0, False)
    assert [r["step"] for r in cache["rows"]] == [1, 2, 3]
    train = next(t for t in fig.data if t.name == "train loss")
    assert list(train.x) == [1, 2, 3]
    db.set_status(job.id, "completed", "done")
    *_, timer = runs_tab.poll(job.id, cache, 0.0, False)
    assert timer.active is False


def test_compare_labels_runs_by_what_differs(studio_home):
    from studio.ui import runs_tab

    a, b = _job("a", r=8, load_in_4bit=True), _job("b", r=32, load_in_4bit=False)
    for j in (a, b):
        db.add_metrics(j.id, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    fig, diff = runs_tab.compare([a.id, b.id], 0.0, False)
    names = " ".join(t.name for t in fig.data)
    assert "r=8" in names and "r=32" in names and "4-bit" in names and "16-bit" in names
    assert diff["headers"] == ["setting", "a", "b"]
    assert ["r", "8", "32"] in [list(map(str, row)) for row in diff["data"]]


def test_spec_form_round_trip():
    from studio.spec import JobSpec
    from studio.ui import form

    names = ["base_model", "dataset", "r", "learning_rate", "target_modules", "golden_prompts", "load_in_4bit"]
    spec = JobSpec(dataset="d", r=8, target_modules=["q_proj"], golden_prompts=["a", "b"])
    values = form.values_from_spec(names, spec)
    values[2] = 8.0  # gradio Numbers come back as floats
    again = form.spec_from_values(names, values)
    assert again.r == 8 and isinstance(again.r, int) and again.golden_prompts == ["a", "b"]


def test_column_mapping_is_proposed_and_can_be_changed(studio_home, tmp_path):
    from studio.ui import datasets_tab

    path = tmp_path / "qa.csv"
    path.write_text("question,answer,notes\nWhat is 2+2?,4,x\nCapital of France?,Paris,y\n")
    message, _, _, _, _, mapping, fill = datasets_tab.check_upload(str(path), "auto", False, "SmolLM2-135M-Instruct",
                                                                    512)
    assert fill["visible"] is False, "a file without template blanks shows an empty fill box"
    assert "question = instruction" in mapping and "answer = output" in mapping, message
    # the user maps the answer to another column instead: the preview follows
    message, preview, *_ = datasets_tab.check_upload(str(path), "auto", False, "SmolLM2-135M-Instruct", 512,
                                                   "question = instruction\nnotes = output")
    assert "x" in str(preview["value"]) and "Paris" not in str(preview["value"])
    bad, *_ = datasets_tab.check_upload(str(path), "auto", False, "SmolLM2-135M-Instruct", 512, "question")
    assert "line 1" in bad
    msg, table, _ = datasets_tab.add_upload(str(path), "auto", False, "qa", "question = instruction\nanswer = output")
    assert msg.startswith("Added") and db.get_dataset("qa").mapping == {"question": "instruction", "answer": "output"}


def test_memory_estimate_names_the_workers_device_and_warns_when_too_big(studio_home):
    """The Train form's estimate is for the running worker's device; a job bigger than its memory gets a
    warning naming the worker (the row a real worker writes; see test_lifecycle for the real process)."""
    import os
    import socket

    from studio.spec import JobSpec
    from studio.ui.train_tab import estimate_markdown

    text = estimate_markdown(JobSpec(dataset="d"))
    assert "Estimated peak memory" in text and "no worker is running" in text
    db.register_worker(id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid(),
                       device="cuda", device_name="NVIDIA L4", memory_gb=24.0, gpu_count=1, bf16=True)
    small = estimate_markdown(JobSpec(dataset="d"))
    assert "NVIDIA L4 (24 GB, bf16) trains with bf16, padding-free batches" in small and "too big" not in small
    big = estimate_markdown(JobSpec(dataset="d", base_model="meta-llama/Meta-Llama-3-8B", load_in_4bit=False,
                                    max_length=4096, per_device_train_batch_size=8))
    assert "Warning: too big for a worker." in big and "24.0 GB GPU" in big and socket.gethostname() in big
    qlora = estimate_markdown(JobSpec(dataset="d", base_model="meta-llama/Meta-Llama-3-8B",
                                      gradient_checkpointing=True, max_length=512, per_device_train_batch_size=1))
    assert "too big" not in qlora  # the advice in the warning works: 4-bit with checkpointing fits


def test_serving_commands_appear_for_the_chosen_adapter_only(studio_home, tiny_model_dir):
    """No adapter chosen: no empty command boxes. Chosen: the vLLM and Python commands name its folder;
    the Ollama and llama.cpp boxes wait for a GGUF export."""
    from adapter_fixtures import make_job

    from studio.ui import adapters_tab

    job = make_job(tiny_model_dir, "served")
    keys = [key for key, _, _ in adapters_tab.SNIPPETS]
    _, _, *empty = adapters_tab.on_select(None)
    assert [u["visible"] for u in empty] == [False] * len(keys)
    _, _, *chosen = adapters_tab.on_select(job.id)
    shown = {key: u for key, u in zip(keys, chosen)}
    adapter = f"served={job.adapter_path}"  # relative to the data directory
    assert shown["vllm"]["visible"] and "--enable-lora" in shown["vllm"]["value"] and adapter in shown["vllm"]["value"]
    assert shown["peft"]["visible"] and "PeftModel" in shown["peft"]["value"]
    assert not shown["ollama"]["visible"] and not shown["llama_cpp"]["visible"]


def test_the_train_form_offers_every_spec_field(studio_home):
    """A field missing from the form would be silently dropped when a YAML is imported and started."""
    from dataclasses import fields

    import gradio as gr

    from studio.spec import JobSpec
    from studio.ui import train_tab

    with gr.Blocks():
        with gr.Tabs():
            built = train_tab.build()
    assert set(built["components"]) == {f.name for f in fields(JobSpec)}


def test_a_run_deleted_while_queued_never_reaches_the_worker(studio_home, tiny_model_dir, tmp_path):
    """Delete in the Runs tab revokes the queued task; a task whose job vanished anyway (deleted by a
    process that could not revoke it) is skipped with one log line. Either way: no traceback."""
    from identity_data import write

    from conftest import wait_for
    from studio import jobs, library
    from studio.spec import JobSpec
    from studio.ui import runs_tab
    from workerproc import Worker
    from workers.tasks import train_job

    library.add(write(tmp_path / "identity.jsonl"), name="identity")
    spec = dict(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, max_steps=2,
                eval_split=0.0, max_length=64)
    deleted = jobs.submit(JobSpec(**spec))
    message, _ = runs_tab.do_delete(deleted.id)
    assert message == "Run deleted." and db.get_job(deleted.id) is None
    train_job("0123456789ab")  # a task whose job row is already gone
    after = jobs.submit(JobSpec(**spec))
    log = tmp_path / "worker.log"
    with Worker(studio_home, log):
        wait_for(lambda: db.get_job(after.id).status in db.FINISHED, 180, what="the next run to finish")
    text = log.read_text()
    assert db.get_job(after.id).status == "completed", text
    assert "Traceback" not in text and "KeyError" not in text, text
    assert "does not exist" not in text, text
    assert [ln for ln in text.splitlines() if "0123456789ab" in ln and "no longer exists" in ln], text
    assert not [ln for ln in text.splitlines() if deleted.id in ln and "no longer exists" in ln], \
        "the deleted run's task was not revoked"


def _train_tab_handler(name: str):
    """A handler of the real Train tab, as gradio calls it."""
    import gradio as gr

    from studio.ui import train_tab

    with gr.Blocks() as blocks:
        with gr.Tabs():
            built = train_tab.build()
    fn = next(f.fn for f in blocks.fns.values() if f.name == name)
    return fn, built


def test_concurrent_starts_report_their_true_places_in_the_queue(studio_home, tiny_model_dir, tmp_path):
    """Several sessions press Start at once: each is told the place its run really has in the queue."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    from identity_data import write
    from studio import library
    from studio.spec import JobSpec
    from studio.ui import form
    from workers.queue import huey

    library.add(write(tmp_path / "identity.jsonl"), name="identity")
    on_start, built = _train_tab_handler("on_start")
    names = list(built["components"])
    starts = 6
    values = [form.values_from_spec(names, JobSpec(base_model=str(tiny_model_dir), dataset="identity",
                                                   load_in_4bit=False, name=f"run-{i}"))
              for i in range(starts)]
    with ThreadPoolExecutor(starts) as pool:
        replies = list(pool.map(lambda v: on_start(*v), values))
    told = {}
    for message, job_id in replies:
        assert job_id, message
        told[job_id] = int(re.search(r"position (\d+)", message).group(1))
    order = [t.args[0] for t in huey.pending()]  # the order the worker will take them in
    assert {j: order.index(j) + 1 for j in told} == told


def test_run_buttons_with_no_run_chosen_say_so_and_change_nothing(studio_home):
    from studio.ui import runs_tab

    job = _job()
    for handler in (runs_tab.do_delete, runs_tab.do_resume, runs_tab.do_cancel):
        for nothing in (None, ""):
            reply = handler(nothing)
            message = reply[0] if isinstance(reply, tuple) else reply
            assert message == "Choose a run first.", (handler.__name__, message)
    assert db.get_job(job.id).status == "running" and len(db.list_jobs()) == 1


def test_downloads_live_in_one_folder_and_old_ones_are_removed(studio_home):
    import os
    import time

    from studio.settings import get_settings
    from studio.ui import downloads, runs_tab

    job = _job("kept")
    db.add_metrics(job.id, [{"step": 1, "loss": 2.0}])
    first = runs_tab.download_yaml(job.id)["value"]
    root = get_settings().tmp_dir / "downloads"
    assert first.endswith("/kept.yaml") and os.path.dirname(os.path.dirname(first)) == str(root)
    assert "dataset: d" in open(first).read()
    hour_ago = time.time() - 2 * downloads.MAX_AGE_SECONDS
    os.utime(os.path.dirname(first), (hour_ago, hour_ago))
    second = runs_tab.download_csv(job.id)["value"]
    assert second.endswith("/kept-metrics.csv") and os.path.exists(second)
    assert not os.path.exists(first), "a download older than an hour is removed at the next one"
    assert len(list(root.iterdir())) == 1


def test_the_worker_line_says_what_the_workers_do(studio_home, tmp_path, monkeypatch):
    import os
    import socket
    import time

    from studio import models, settings
    from studio.ui import live

    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path / "models"))
    settings.reset_settings()
    assert "none is running" in live.worker_line() and "`studio worker`" in live.worker_line()
    db.register_worker(id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid(),
                       device="cpu")
    assert live.worker_line() == "**Worker:** idle"
    _job("r1")
    assert live.worker_line() == "**Worker:** training r1 (step 2/10)"
    models.mark_preparation(time.time() - 12, "checking the weights", 2, 3)  # as workers.bundled marks it
    assert "training r1 (step 2/10); preparing the base model (step 2 of 3: checking the weights, 12 s)" \
        in live.worker_line()
    marker = models.conversion_marker()
    marker.write_text(marker.read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    assert "preparing" not in live.worker_line(), "a marker left by a converter that died is no progress"


def test_download_boxes_stay_hidden_until_they_hold_a_file(studio_home):
    from studio.ui import adapters_tab, build_ui, runs_tab

    assert runs_tab.download_yaml(None) == {"__type__": "update", "value": None, "visible": False}
    shown = runs_tab.download_csv(_job("kept").id)
    assert shown["visible"] is True and shown["value"].endswith("/kept-metrics.csv")
    box, note = adapters_tab.on_zip("no-such-adapter")
    assert box["visible"] is False and note.startswith("**Error:**")
    downloads = {b.elem_id: b.visible for b in build_ui().blocks.values()
                 if b.elem_id in ("run-download", "adapters-zip-file", "adapters-eval-csv")}
    assert downloads == {"run-download": False, "adapters-zip-file": False, "adapters-eval-csv": False}


def test_chat_preselects_the_run_that_finished_last_but_keeps_a_choice(studio_home):
    from studio.ui import chat_tab

    older, newer = _job("older"), _job("newer")
    for job, finished in ((newer, 100.0), (older, 200.0)):  # started in one order, finished in the other
        with db.session() as s:
            row = s.get(db.Job, job.id)
            row.status, row.finished_at, row.adapter_path = "completed", finished, f"jobs/{job.id}/adapter"
            s.add(row)
            s.commit()
    _, first, *_ = chat_tab.refresh_values()
    assert first["value"] == older.id
    _, first, *_ = chat_tab.refresh_values(newer.id)
    assert "value" not in first, "a user's choice stays"


def test_status_lists_follow_the_database_and_only_changes_are_sent(studio_home):
    import gradio as gr

    from studio.ui import live, runs_tab

    job = _job("r1")
    before = [runs_tab.run_choices(), runs_tab.runs_table()]
    assert before[0] == [("r1 · running", job.id)] and before[1][0][1:3] == ["running", "2/10"]
    db.set_status(job.id, "completed", "done")
    after = [runs_tab.run_choices(), runs_tab.runs_table()]
    assert after[0] == [("r1 · completed", job.id)] and after[1][0][1] == "completed"
    assert live.only_changed(before, after) == after
    assert live.only_changed(after, [after[0], [["changed"]]]) == [gr.skip(), [["changed"]]]


def test_the_run_log_keeps_real_warnings_and_drops_deprecation_notices(studio_home):
    import logging
    import warnings

    from workers.train import JobLog

    (studio_home / "jobs" / "j1").mkdir(parents=True)
    path = studio_home / "jobs" / "j1" / "train.log"
    logging.captureWarnings(False)  # an earlier test's worker code may have left the hook half-installed
    with JobLog(path), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("old API", DeprecationWarning)
        logging.getLogger("transformers.modeling_utils").warning("`torch_dtype` is deprecated! Use `dtype`!")
        logging.getLogger("transformers.trainer_utils").warning(
            "mtime may not be reliable on this filesystem, falling back to numerical ordering")
        warnings.warn("the tokenizer has no pad token; using eos", UserWarning)
        logging.getLogger("studio.train").info("job j1: 36 train rows")
        logging.getLogger("studio.replay").info("general replay: 18 rows of the base model's own answers")
        logging.getLogger("studio.train").info("timing model-load 1.234 s at step 0")
    text = path.read_text()
    assert "deprecated" not in text and "old API" not in text and "mtime" not in text, text
    assert "UserWarning: the tokenizer has no pad token" in text and "job j1: 36 train rows" in text, text
    logging.captureWarnings(False)

    # the Runs tab's log panel: the studio's own sentences and real warnings, not its timing lines
    from studio import db
    from studio.ui.runs_tab import log_tail

    panel = log_tail(db.Job(name="j1", spec_json="{}", output_dir="jobs/j1"))
    assert "36 train rows" in panel and "general replay: 18 rows" in panel and "no pad token" in panel, panel
    assert "timing" not in panel, panel


def test_ui_messages_use_plain_text_marks():
    import re
    from pathlib import Path

    emoji = re.compile("[\U00010000-\U0010FFFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")
    ui = Path(__file__).resolve().parent.parent / "studio" / "ui"
    found = [f"{p.name}:{n}: {line.strip()}" for p in sorted(ui.glob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if emoji.search(line)]
    assert found == []


def test_a_run_that_ended_before_its_first_step_does_not_wait_for_one(studio_home):
    from studio.ui import runs_tab

    job = _job("early")
    _, fig, *_ = runs_tab.poll(job.id, None, 0.0, False)
    assert "waiting for the first step" in fig.layout.annotations[0].text
    db.set_status(job.id, "failed", "the model folder is gone")
    _, fig, status, *_ = runs_tab.poll(job.id, None, 0.0, False)
    assert fig.layout.annotations[0].text == "no steps recorded: the run failed before its first"
    assert "early — **failed**" in status
