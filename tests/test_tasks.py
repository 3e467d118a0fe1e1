"""Merge, GGUF export and batch evaluation are queued tasks: jobs of their own kind on the training lifecycle,
run on a worker with progress, a result and cancel; the UI process starts and follows them without torch."""
from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import pytest

from adapter_fixtures import make_job
from conftest import wait_for

CHAT_ROWS = [{"messages": [{"role": "user", "content": f"Question number {i}: what comes after {i}?"},
                           {"role": "assistant", "content": f"The number {i + 1} comes after {i}."}]}
             for i in range(40)]


def _dataset(tmp_path: Path, name: str = "held-out", rows: list[dict] = CHAT_ROWS) -> str:
    from studio import library

    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return library.add(path, name=name)[0].name


def _events(job_id: str) -> list[str]:
    from studio import db

    return [e.status for e in db.job_events(job_id)]


# ---- the job row and the lists ----------------------------------------------------------------------

def test_a_task_is_a_job_that_training_lists_do_not_show_and_cancel_while_queued_revokes_it(tiny_model_dir,
                                                                                            studio_home):
    from studio import adapter_library, db, jobs
    from studio.ui import adapters_tab, runs_tab
    from workers.queue import huey

    run = make_job(tiny_model_dir, "exportee", seed=1)
    note, task_id, cancel, timer = adapters_tab.on_merge(run.id, "float32")  # no worker: it stays queued
    task = db.get_job(task_id)
    assert (task.kind, task.status, task.spec["ref"]) == ("merge", "queued", run.id) and "Queued" in note
    assert cancel["visible"] and timer["active"]
    assert run.kind == "train"

    assert [j.id for j in db.list_jobs()] == [run.id]  # Runs tab, Chat, Adapters library, sweeps, submit's names
    assert {j.id for j in db.list_jobs(kind=None)} == {run.id, task.id}
    assert [value for _, value in runs_tab.run_choices()] == [run.id]
    assert [a["ref"] for a in adapter_library.list_adapters()] == [run.id]
    assert db.get_job(task.name) is None  # a task's name never stands for a run
    shown, followed, _, timer, *_ = adapters_tab.poll_export(task.id)
    assert "merge exportee**: queued (position 1)" in shown and followed is not None and timer is not None

    assert adapters_tab.on_cancel(task.id) == "Cancelled."
    shown, followed, cancel, timer, *_ = adapters_tab.poll_export(task.id)  # the next tick: the end, then quiet
    assert shown == "**merge exportee**: cancelled." and followed is None
    assert not cancel["visible"] and not timer["active"]
    assert db.get_job(task.id).status == "cancelled" and huey.is_revoked(task.task_id)
    with pytest.raises(ValueError, match="is not resumed: start it again"):
        jobs.resume(task.id)
    assert _events(task.id) == ["queued", "cancelled"]


def test_bad_choices_queue_nothing_and_say_why(tiny_model_dir, studio_home, tmp_path):
    from studio import db
    from studio.ui import adapters_tab

    make_job(tiny_model_dir, "exportee", seed=1)
    assert adapters_tab.on_merge(None, "float32")[0] == "Choose an adapter first."
    assert adapters_tab.on_gguf("no-such-run", "q8_0", True)[0] == (
        "**Error:** there is no finished run or imported adapter named 'no-such-run'")
    _dataset(tmp_path, "texts", [{"text": "plain text, no conversation"}])
    note, task_id, _, timer = adapters_tab.on_evaluate(str(tiny_model_dir), [], "dataset:texts", 5, 8)
    assert note.startswith("**Error:** no row to evaluate") and task_id is None and not timer["active"]
    assert db.list_jobs(kind=None) == [db.get_job("exportee")]


# ---- the Tasks table: every task, wherever it was started -----------------------------------------

def test_tasks_table_shows_tasks_started_elsewhere_and_picking_one_follows_it(tiny_model_dir, studio_home):
    """A page that started nothing sees a finished merge (run elsewhere) and another page's queued evaluation
    in the Tasks table the shared tick refreshes; picking one shows its result, or its progress and Cancel."""
    import gradio as gr

    from studio import db, jobs
    from studio.ui import adapters_tab
    from workers.device import device_label
    from workers.inference.task import run_task

    run = make_job(tiny_model_dir, "exportee", seed=1)
    merge = jobs.submit_task("merge", "merge exportee", {"ref": run.id, "dtype": "float32"}, queue=False)
    assert run_task(merge.id) == "completed"
    waiting = jobs.submit_task("evaluate", "evaluate exportee", {
        "base_model": str(tiny_model_dir), "adapters": {"exportee": run.id}, "source": "dataset:none", "limit": 3,
        "max_new_tokens": 8}, own_folder=True, queue=False)

    *_, shown, choices = adapters_tab.refresh_values()  # what the tick sends (the last two: the Tasks table, picker)
    rows = {r[-1]: dict(zip(adapters_tab.TASK_HEADERS, r)) for r in shown}
    assert [v for _, v in choices["choices"]] == [waiting.id, merge.id]  # newest first; no training run
    done = rows[merge.id]
    assert (done["kind"], done["adapter"], done["status"], done["progress"]) == (
        "merge", "exportee", "completed", "step 5/5: done")
    merged_bytes = db.get_job(merge.id).summary["bytes"]
    assert done["result"] == f"{adapters_tab.human_bytes(merged_bytes)} merged (float32)"
    assert done["device"] == device_label() and done["started"] and done["finished"]
    queued = rows[waiting.id]
    assert (queued["adapter"], queued["status"], queued["progress"], queued["result"], queued["started"]) == (
        "base + exportee", "queued", "queued (position 1)", "", "")

    select = gr.SelectData(None, {"index": [1, 0], "value": "merge exportee", "row_value": shown[1]})
    assert adapters_tab.on_task_row(select) == merge.id  # a click on the merge's row picks it
    out = adapters_tab.on_pick_task(merge.id)
    n = len(adapters_tab.SNIPPETS)
    note, followed, cancel, timer, *codes = out[:4 + n]
    export_acc, eval_out = out[4 + n], out[5 + n:]
    assert note.startswith("Merged into `") and followed is None and not cancel["visible"] and not timer["active"]
    assert export_acc["open"] and all(isinstance(v, type(gr.skip())) for v in eval_out)

    out = adapters_tab.on_pick_task(waiting.id)  # another page's queued evaluation: followed here, cancellable
    ev_note, followed, cancel, timer, *_, eval_acc = out[5 + n:]
    assert "evaluate exportee**: queued (position 1)" in ev_note and followed == waiting.id
    assert cancel["visible"] and timer["active"] and eval_acc["open"]
    assert adapters_tab.on_cancel(followed) == "Cancelled."
    *_, shown, _ = adapters_tab.refresh_values()
    assert [r[3] for r in shown] == ["cancelled", "completed"]
    assert adapters_tab.on_pick_task("no-such-task") == adapters_tab.on_pick_task(None)


def test_a_task_module_loads_without_the_training_stack(tiny_model_dir, studio_home, tmp_path):
    """`studio export` and a task on a worker import neither workers.train nor TRL; the merge still records
    the device it ran on."""
    import subprocess
    import sys

    from studio import db, jobs
    from workerproc import ROOT, worker_env

    run = make_job(tiny_model_dir, "exportee", seed=1)
    task = jobs.submit_task("merge", "merge exportee", {"ref": run.id, "dtype": "float32"}, queue=False)
    code = ("import sys; from workers.inference.task import run_task; "
            f"status = run_task({task.id!r}); "
            "print(status, sorted(m for m in ('workers.train', 'trl', 'workers.callbacks') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=worker_env(studio_home), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "completed []"
    from workers.device import device_label

    assert db.get_job(task.id).device == device_label()


# ---- the worker's side, run inline ----------------------------------------------------------------

def test_merge_task_reports_each_step_and_its_result(tiny_model_dir, studio_home):
    from studio import db, jobs
    from studio.settings import get_settings
    from workers.inference.export import MERGE_STEPS
    from workers.inference.task import Progress, run_task

    run = make_job(tiny_model_dir, "exportee", seed=1)
    task = jobs.submit_task("merge", "merge exportee", {"ref": run.id, "dtype": "float32"}, queue=False)
    seen = []
    original = Progress.__call__

    def spy(self, message, total=None, done=None):
        original(self, message, total, done)
        job = db.get_job(self.job_id)
        seen.append((job.status, job.current_step, job.total_steps, job.progress_message))

    Progress.__call__ = spy
    try:
        assert run_task(task.id) == "completed"
    finally:
        Progress.__call__ = original
    assert [s[1] for s in seen] == list(range(MERGE_STEPS)) and {s[2] for s in seen} == {MERGE_STEPS}
    assert {s[0] for s in seen} == {"running"} and seen[1][3] == "loading the base model in float32"
    task = db.get_job(task.id)
    folder = get_settings().exports_dir / "exportee-merged"
    assert (task.current_step, task.total_steps, task.progress_message) == (MERGE_STEPS, MERGE_STEPS, "done")
    assert task.summary["path"] == str(folder)
    assert task.summary["bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert _events(task.id) == ["queued", "running", "completed"]


def test_cancel_while_running_stops_before_the_next_step_and_leaves_nothing(tiny_model_dir, studio_home):
    from studio import db, jobs
    from studio.settings import get_settings
    from workers.inference.task import Progress, run_task

    run = make_job(tiny_model_dir, "exportee", seed=1)
    task = jobs.submit_task("gguf", "gguf exportee", {"ref": run.id, "quant": "f16", "drift": True}, queue=False)
    original = Progress.__call__

    def cancel_at_the_weights(self, message, total=None, done=None):
        if message.startswith("folding the adapter"):  # the user presses Cancel while the base loads
            assert jobs.cancel(self.job_id).cancel_requested
        original(self, message, total, done)

    Progress.__call__ = cancel_at_the_weights
    try:
        assert run_task(task.id) == "cancelled"
    finally:
        Progress.__call__ = original
    task = db.get_job(task.id)
    assert task.current_step == 2 and task.error is None and task.finished_at
    assert _events(task.id) == ["queued", "running", "cancelled"]
    exports = get_settings().exports_dir
    assert not exports.exists() or list(exports.iterdir()) == []  # no merge, no GGUF, no partial folder


def test_gguf_and_evaluation_tasks_write_their_results(tiny_gguf_model_dir, studio_home, tmp_path):
    from studio import db, jobs
    from studio.settings import get_settings
    from studio.ui import adapters_tab
    from workers.inference.task import run_task

    run = make_job(tiny_gguf_model_dir, "exportee", seed=1, golden_prompts=["Hello, how are you?", "What is 2+2?"])
    gguf = jobs.submit_task("gguf", "gguf exportee", {"ref": run.id, "quant": "q8_0", "drift": True}, queue=False)
    assert run_task(gguf.id) == "completed", db.get_job(gguf.id).error
    gguf = db.get_job(gguf.id)
    folder = get_settings().exports_dir / "exportee-gguf"
    stored = json.loads((folder / "drift-q8_0.json").read_text())
    assert stored == gguf.summary["drift"] and stored["prompts"] == 2 and stored["gguf"] == "exportee-q8_0.gguf"
    assert {"identical_replies", "identical_share", "first_difference", "max_abs_logit_diff", "mean_abs_logit_diff",
            "checked_at"} <= set(stored) and stored["runtime"].startswith("llama.cpp")
    assert gguf.summary["gguf"]["bytes"] == (folder / "exportee-q8_0.gguf").stat().st_size
    assert gguf.current_step == gguf.total_steps == 5 + 1 + 4  # merge, convert, drift (llama.cpp, load, two prompts)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    shown = adapters_tab.export_result(gguf)
    assert "Merged into" in shown and "exportee-q8_0.gguf" in shown and "Drift check (q8_0)" in shown

    from workers import cli  # `studio export` runs the same task inline, recorded as a job of its kind

    out = tmp_path / "cli" / "mine.gguf"
    assert cli.main(["export", "exportee", "--gguf", str(out), "--quant", "f16", "--no-drift-check"]) == 0
    assert out.stat().st_size > 0 and (out.parent / "Modelfile").exists() and not (out.parent / "drift-f16.json").exists()
    by_cli = db.list_jobs(kind="gguf")[0]
    assert (by_cli.status, by_cli.spec["gguf_out"], by_cli.summary["gguf"]["path"]) == ("completed", str(out), str(out))

    _dataset(tmp_path)
    note, task_id, _, _ = adapters_tab.on_evaluate(str(tiny_gguf_model_dir), [run.id], "dataset:held-out", 3, 8)
    assert "3 rows on 2 models" in note
    from inferproc import infer_process

    with infer_process(get_settings().home, tmp_path / "infer.log") as url:  # the replies come from it
        assert run_task(task_id) == "completed", db.get_job(task_id).error
    task = db.get_job(task_id)
    assert task.total_steps == task.current_step == 3 * 2 and task.summary["models"] == ["base", "exportee"]
    from workers.device import device_label

    assert (task.device, task.summary["server"]) == (device_label(), url)
    csv_path = Path(task.summary["csv"])
    assert csv_path.is_relative_to(get_settings().resolve(task.output_dir))
    assert len(list(csv.reader(io.StringIO(csv_path.read_text())))) == 1 + 3
    note, metrics, rows, csv_box = adapters_tab.eval_result(task)
    assert note.startswith("Evaluated 3 rows on 2 models")
    assert [r[0] for r in metrics["value"]] == ["base", "exportee"] and len(rows["value"]) == 3
    assert Path(csv_box["value"]).read_text() == csv_path.read_text()
    jobs.delete(task.id)  # the task's own folder goes with it
    assert not csv_path.exists()


def test_an_evaluation_without_an_inference_server_fails_with_how_to_start_one(tiny_model_dir, studio_home,
                                                                              tmp_path):
    from studio import db, jobs
    from workers.inference.evaluation import NO_SERVER
    from workers.inference.task import run_task

    run = make_job(tiny_model_dir, "exportee", seed=1)
    _dataset(tmp_path)
    task = jobs.submit_task("evaluate", "evaluate exportee", own_folder=True, queue=False, params={
        "base_model": str(tiny_model_dir), "adapters": {"exportee": run.id}, "source": "dataset:held-out", "limit": 3,
        "max_new_tokens": 8})
    assert run_task(task.id) == "failed"
    task = db.get_job(task.id)
    assert task.error == NO_SERVER and _events(task.id) == ["queued", "running", "failed"]


# ---- a real consumer ------------------------------------------------------------------------------

def test_cancel_works_for_queued_and_running_tasks_on_a_real_worker(tiny_model_dir, studio_home, tmp_path):
    from studio import db, jobs
    from workerproc import Worker

    run = make_job(tiny_model_dir, "exportee", seed=1)
    _dataset(tmp_path)
    queued = jobs.submit_task("merge", "merge exportee", {"ref": run.id})
    jobs.cancel(queued.id)
    long = jobs.submit_task("evaluate", "evaluate exportee", own_folder=True, params={
        "base_model": str(tiny_model_dir), "adapters": {"exportee": run.id}, "source": "dataset:held-out",
        "limit": 40, "max_new_tokens": 512})
    with Worker(studio_home, tmp_path / "worker.log"):
        wait_for(lambda: db.get_job(long.id).current_step >= 1, 300, what="the evaluation to answer once")
        assert jobs.cancel(long.id).cancel_requested
        wait_for(lambda: db.get_job(long.id).status in db.FINISHED, 120, what="the evaluation to stop")
    long = db.get_job(long.id)
    assert long.status == "cancelled" and long.current_step < long.total_steps == 80
    assert _events(long.id) == ["queued", "running", "cancelled"]
    queued = db.get_job(queued.id)
    assert queued.status == "cancelled" and queued.started_at is None  # the worker never ran it
    assert _events(queued.id) == ["queued", "cancelled"]


@pytest.mark.browser
def test_merge_export_and_evaluation_from_the_ui_run_on_the_worker_and_the_ui_stays_torch_free(
        tiny_gguf_model_dir, studio_home, tmp_path):
    """The Adapters tab in a real browser queues a merge, a GGUF export and a batch evaluation; `studio serve`'s
    worker runs them while the UI keeps answering, and the UI process never maps torch."""
    from browser import SHARED_MODELS, Server, open_page, open_tab, pick_first_containing, require_browser, \
        torch_mapped
    from conftest import ARTIFACTS

    require_browser()
    from playwright.sync_api import expect, sync_playwright

    from studio import db

    expect.set_options(timeout=120_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    make_job(tiny_gguf_model_dir, "exportee", seed=1)
    _dataset(tmp_path)
    server = Server(studio_home, ARTIFACTS / "tasks-server.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    answered_while_running = []

    def answers() -> bool:
        with urllib.request.urlopen(server.url, timeout=10) as r:
            return r.status == 200

    def running_and_answering(kind: str) -> bool:
        tasks = db.list_jobs(("running",), kind=kind)
        if tasks and answers():
            answered_while_running.append(kind)
        return bool(tasks) or bool(db.list_jobs(("completed",), kind=kind))

    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            open_tab(page, "Adapters")
            pick_first_containing(page, "adapters-pick", "exportee")
            note = page.locator("#adapters-export-result")

            page.locator("#adapters-merge").click()
            expect(note).to_contain_text("Queued: merge exportee")
            wait_for(lambda: running_and_answering("merge"), 300, interval=0.1, what="the merge to start")
            expect(note).to_contain_text("Merged into", timeout=300_000)
            expect(page.locator("#adapters-export-cancel")).to_be_hidden()

            page.locator("#adapters-gguf").click()
            expect(note).to_contain_text("Queued: GGUF export of exportee")
            wait_for(lambda: running_and_answering("gguf"), 300, interval=0.1, what="the GGUF export to start")
            expect(note).to_contain_text("Drift check (q8_0)", timeout=300_000)
            expect(page.locator("#adapters-snippet-ollama")).to_contain_text("ollama create exportee")

            page.get_by_text("Batch evaluation", exact=True).first.click()
            pick_first_containing(page, "adapters-eval-adapters", "exportee")
            pick_first_containing(page, "adapters-eval-source", "dataset held-out")
            page.locator("#adapters-eval-run").click()
            wait_for(lambda: running_and_answering("evaluate"), 300, interval=0.1, what="the evaluation to start")
            expect(page.locator("#adapters-eval-note")).to_contain_text("Evaluated", timeout=600_000)
            expect(page.locator("#adapters-eval-metrics")).to_contain_text("exportee")
            expect(page.locator("#adapters-eval-csv")).to_be_visible()
            expect(page.locator("#adapters-tasks")).to_contain_text("evaluate exportee")
            page.screenshot(path=str(ARTIFACTS / "ui-tasks.png"), full_page=True)

            other = browser.new_page(viewport={"width": 1400, "height": 1000})  # a second browser sees them all
            other.goto(server.url)
            open_tab(other, "Adapters")
            pick_first_containing(other, "adapters-task-pick", "merge exportee")
            expect(other.locator("#adapters-export-result")).to_contain_text("Merged into")
            browser.close()
        assert {j.kind: j.status for j in db.list_jobs(kind=("merge", "gguf", "evaluate"))} == {
            "merge": "completed", "gguf": "completed", "evaluate": "completed"}
        assert all(j.worker_pid != server.proc.pid for j in db.list_jobs(kind=None) if j.kind != "train")
        assert answered_while_running, "the UI answered no request while a task ran"
        assert torch_mapped(server.proc.pid) == []
    finally:
        code = server.stop()
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"
