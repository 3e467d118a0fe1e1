"""Acceptance: the whole studio through a real browser, proving real learning.

`studio serve` runs as a subprocess (real SQLite, real huey consumer); headless Chromium uploads a
dataset teaching a made-up name, starts a 4-bit QLoRA job on the bundled SmolLM2 with the form's
defaults, watches the loss chart grow while the job runs, then asks a held-out question in the Chat
tab: the adapter knows the name, the base model does not.
"""
from __future__ import annotations

import re
import time

import pytest

import identity_data
from browser import SHARED_MODELS, Server, chart_points, open_page, open_tab, pick, pick_first_containing, \
    require_browser
from conftest import ARTIFACTS

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_upload_train_watch_and_chat_in_the_browser(tmp_path):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = identity_data.write(tmp_path / "identity.jsonl")
    server = Server(tmp_path / "home", ARTIFACTS / "acceptance-server.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        print(f"page served {server.wait_ready():.1f} s after start")
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)

            # Datasets: upload, preview, add
            page.locator("#dataset-upload input[type=file]").set_input_files(str(data))
            expect(page.locator("#dataset-message")).to_contain_text("40 rows", timeout=60_000)
            expect(page.locator("#dataset-preview")).to_contain_text("Zorblax")
            page.locator("#dataset-add").click()
            expect(page.locator("#dataset-message")).to_contain_text("Added", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "datasets.png"), full_page=True)

            # Train: the defaults (4-bit QLoRA on the bundled SmolLM2), our dataset
            open_tab(page, "Train")
            pick(page, "spec-dataset", "identity")
            expect(page.locator("#spec-load_in_4bit input")).to_be_checked()
            expect(page.locator("#spec-target_modules")).to_contain_text("q_proj")
            page.locator("#start-training").click()
            expect(page.locator("#train-status")).to_contain_text("queued", timeout=30_000)
            run_name = re.search(r"Run (\S+) queued", page.locator("#train-status").inner_text()).group(1)
            page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

            # Runs: the chart grows while the job is running, with no user action
            open_tab(page, "Runs")
            seen_running_points = 0
            t_start = None
            deadline = time.time() + 1500
            while time.time() < deadline:
                status = page.locator("#run-status").inner_text()
                if "running" in status:
                    t_start = t_start or time.time()
                    seen_running_points = max(seen_running_points, chart_points(page))
                if any(word in status for word in ("completed", "failed", "cancelled", "interrupted")):
                    break
                time.sleep(2)
            status = page.locator("#run-status").inner_text()
            page.screenshot(path=str(ARTIFACTS / "runs.png"), full_page=True)
            assert "completed" in status, f"the job did not complete: {status}"
            assert seen_running_points >= 3, f"only {seen_running_points} loss points were seen while running"
            print(f"training wall time in the UI: {time.time() - (t_start or time.time()):.0f} s; {status}")

            # Chat: held-out paraphrase; adapter knows the name, base does not
            open_tab(page, "Chat")
            page.locator("#chat-refresh").click()
            pick_first_containing(page, "chat-run", run_name)
            page.locator("#chat-prompt textarea").fill(identity_data.HELD_OUT[0])
            page.locator("#chat-send").click()
            expect(page.locator("#chat-adapter")).to_contain_text(identity_data.NAME, timeout=300_000)
            expect(page.locator("#chat-note")).to_have_text("", timeout=300_000)
            base_reply = page.locator("#chat-base").inner_text()
            adapter_reply = page.locator("#chat-adapter").inner_text()
            page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
            print(f"base: {base_reply!r}\nadapter: {adapter_reply!r}")
            assert identity_data.NAME in adapter_reply
            assert identity_data.NAME not in base_reply
            browser.close()
    finally:
        code = server.stop()  # never an assertion here: it would hide the failure that brought us here
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"
