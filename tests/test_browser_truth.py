"""Screens that tell the truth: a page kept open (never reloaded) across a run's end shows the run's final
status everywhere it shows one: the Run dropdown's label, the All-runs table, the status header, the
progress line, the Chat tab's adapter list and the Adapters library, and the worker line under the title.
One run completes, one fails in the worker. With STUDIO_UPDATE_SCREENSHOTS=1 the completed run's Runs tab
replaces docs/screenshots/runs.png."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from browser import SHARED_MODELS, Server, open_page, open_tab, pick, require_browser, type_number
from conftest import ARTIFACTS, ROOT
from workerproc import Worker, worker_env

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "docs" / "screenshots"
TICK = 20_000  # ms: one sync tick (2 s) plus the latency of a loaded machine


def _add_dataset(home, tmp_path):
    from identity_data import write

    subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "add", str(write(tmp_path / "identity.jsonl")),
                    "--name", "identity"], cwd=ROOT, env=worker_env(home), check=True, timeout=300,
                   capture_output=True)


def _start_run(page, model_dir, steps: int) -> str:
    """Queue a run from the Train tab (the tiny model, 16-bit, ``steps`` steps); returns its name."""
    open_tab(page, "Train")
    box = page.locator("#spec-base_model input")
    box.fill(str(model_dir))
    box.press("Enter")
    pick(page, "spec-dataset", "identity")
    if page.locator("#spec-load_in_4bit input").is_checked():
        page.locator("#spec-load_in_4bit input").click()
    page.get_by_text("Advanced").click()
    type_number(page, "spec-max_steps", str(steps))
    page.get_by_text("Advanced").click()
    page.locator("#start-training").click()
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('queued')", timeout=60_000)
    return page.locator("#train-status").inner_text().split("Run ")[1].split(" queued")[0]


def _table_rows(page, elem_id: str) -> list[list[str]]:
    return page.evaluate(
        """(id) => [...document.querySelectorAll(`#${id} [role=row]`)]
                     .filter(row => !row.querySelector('th') && !row.closest('[aria-hidden=true]'))
                     .map(row => [...row.children].map(cell => cell.innerText.trim()))""", elem_id)


def _row(page, elem_id: str, name: str) -> list[str] | None:
    return next((r for r in _table_rows(page, elem_id) if r and r[0] == name), None)


def _expect_runs_tab_says(page, name: str, status: str) -> None:
    """The Runs tab, as it stands (no reload): every place names ``status`` for the run ``name``."""
    from playwright.sync_api import expect

    expect(page.locator("#run-status")).to_contain_text(f"{name} — {status}")
    expect(page.locator("#run-select input")).to_have_value(f"{name} · {status}", timeout=TICK)
    page.wait_for_function("""([name, status]) => [...document.querySelectorAll('#runs-table [role=row]')]
        .some(r => r.children.length > 1 && r.children[0].innerText.trim() === name
                   && r.children[1].innerText.trim() === status)""", arg=[name, status], timeout=TICK)
    expect(page.locator("#run-progress")).not_to_contain_text("ETA")
    expect(page.locator("#worker-line")).to_have_text("Worker: idle", timeout=TICK)


def test_a_run_that_completes_while_the_page_is_open_says_completed_everywhere(tmp_path, tiny_model_dir):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    _add_dataset(home, tmp_path)
    server = Server(home, ARTIFACTS / "truth-completed-server.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            expect(page.locator("#worker-line")).to_have_text("Worker: idle", timeout=120_000)
            name = _start_run(page, tiny_model_dir, steps=40)
            open_tab(page, "Runs")
            expect(page.locator("#run-status")).to_contain_text(f"{name} — completed", timeout=600_000)
            _expect_runs_tab_says(page, name, "completed")
            expect(page.locator("#run-progress")).to_contain_text("step 40 / 40")
            row = _row(page, "runs-table", name)
            assert row[1:3] == ["completed", "40/40"], row
            expect(page.locator("#run-download")).to_be_hidden()  # no empty box before a download
            page.screenshot(path=str(ARTIFACTS / "truth-runs.png"), full_page=True)
            log = page.locator("#run-log textarea").input_value()
            assert "deprecated" not in log and "FutureWarning" not in log, log

            open_tab(page, "Chat")  # the run that just finished is chosen for the first adapter pane
            expect(page.locator("#chat-run input")).to_have_value(re.compile(rf"^{name} \("), timeout=TICK)
            page.screenshot(path=str(ARTIFACTS / "truth-chat.png"), full_page=True)

            open_tab(page, "Adapters")
            page.wait_for_function("""(name) => [...document.querySelectorAll('#adapters-table [role=row]')]
                .some(r => r.children.length > 1 && r.children[0].innerText.trim() === name)""", arg=name,
                                   timeout=TICK)
            expect(page.locator("#adapters-zip-file")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / "truth-adapters.png"), full_page=True)
            browser.close()
    finally:
        code = server.stop()
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"
    if os.environ.get("STUDIO_UPDATE_SCREENSHOTS"):  # the README's pictures, from a run that told the truth
        for shot in ("runs",):
            shutil.copyfile(ARTIFACTS / f"truth-{shot}.png", SCREENSHOTS / f"{shot}.png")


def test_a_run_that_fails_while_the_page_is_open_says_failed_everywhere(tmp_path, tiny_model_dir):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    _add_dataset(home, tmp_path)
    model = shutil.copytree(tiny_model_dir, tmp_path / "my-model")
    server = Server(home, ARTIFACTS / "truth-failed-server.log", worker=False, STUDIO_MODELS_DIR=str(SHARED_MODELS))
    worker = None
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            expect(page.locator("#worker-line")).to_contain_text("none is running: start one with studio worker")
            name = _start_run(page, model, steps=40)
            open_tab(page, "Runs")
            expect(page.locator("#run-select input")).to_have_value(f"{name} · queued")
            # the model folder goes away before any worker takes the run, then a worker starts
            shutil.rmtree(model)
            worker = Worker(home, ARTIFACTS / "truth-failed-worker.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
            expect(page.locator("#run-status")).to_contain_text(f"{name} — failed", timeout=300_000)
            expect(page.locator("#run-status")).to_contain_text("my-model")  # the reason, in one sentence
            _expect_runs_tab_says(page, name, "failed")
            page.screenshot(path=str(ARTIFACTS / "truth-failed.png"), full_page=True)

            open_tab(page, "Chat")  # a failed run is no adapter to chat with
            page.locator("#chat-run input").click()
            expect(page.get_by_role("option").filter(has_text=name)).to_have_count(0)
            page.keyboard.press("Escape")
            open_tab(page, "Adapters")
            assert _row(page, "adapters-table", name) is None
            browser.close()
    finally:
        if worker is not None:
            worker.stop()
        code = server.stop()
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"
