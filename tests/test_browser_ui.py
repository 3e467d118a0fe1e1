"""The real UI in headless Chromium against `studio serve`, with the tiny model so it takes a minute or
two: bad and good uploads, live chart without user action, reload and UI-restart survival, run
comparison with a config diff, and a three-pane chat compare."""
from __future__ import annotations

import json
import time

import pytest

from browser import SHARED_MODELS, Server, chart_points, ensure_bundled_model, open_page, open_tab, pick, \
    pick_first_containing, require_browser, type_number
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _table_rows(page, elem_id: str) -> list[list[str]]:
    """The data rows of a gradio Dataframe as the page shows them (its virtual rows, not the header)."""
    return page.evaluate(
        """(id) => [...document.querySelectorAll(`#${id} [role=row]`)]
                     .filter(row => !row.querySelector('th') && !row.closest('[aria-hidden=true]'))
                     .map(row => [...row.children].map(cell => cell.innerText.trim()))""", elem_id)


def _start_run(page, model_dir, r: int, steps: int, quant: bool):
    from playwright.sync_api import expect

    open_tab(page, "Train")
    box = page.locator("#spec-base_model input")
    box.fill(str(model_dir))
    box.press("Enter")
    pick(page, "spec-dataset", "identity")
    page.locator("#spec-r input").fill(str(r))
    if page.locator("#spec-load_in_4bit input").is_checked() != quant:
        page.locator("#spec-load_in_4bit input").click()
    page.get_by_text("Advanced").click()
    for field, value in (("max_steps", str(steps)), ("eval_split", "0")):
        type_number(page, f"spec-{field}", value)
    page.get_by_text("Advanced").click()
    # the run's length matters below (it must still be running when cancelled): Start sends what the form holds
    expect(page.locator("#spec-max_steps input")).to_have_value(str(steps))
    expect(page.locator("#spec-eval_split input")).to_have_value("0")
    page.locator("#start-training").click()
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('queued')", timeout=30_000)
    return page.locator("#train-status").inner_text().split("Run ")[1].split(" queued")[0]


def test_the_studio_in_a_browser(tmp_path, tiny_model_dir):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)

    from identity_data import write

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    good = write(tmp_path / "identity.jsonl")
    ensure_bundled_model()  # the Datasets tab previews with the bundled model's chat template
    server = Server(home, ARTIFACTS / "ui-server.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)

            # a fresh studio says where to begin
            open_tab(page, "Runs")
            expect(page.locator("#run-status")).to_contain_text("No runs yet")
            open_tab(page, "Datasets")

            # a bad file: one sentence, nothing stored
            page.locator("#dataset-upload input[type=file]").set_input_files(str(bad))
            expect(page.locator("#dataset-message")).to_contain_text("cannot be used")
            expect(page.locator("#dataset-message")).to_contain_text("assistant")
            page.locator("#dataset-add").click()
            expect(page.locator("#dataset-message")).to_contain_text("Not added")
            # a good file: preview, masked/trained parts and the length histogram
            page.reload()
            page.locator("#dataset-upload input[type=file]").set_input_files(str(good))
            expect(page.locator("#dataset-message")).to_contain_text("40 rows")
            expect(page.locator("#dataset-mask")).to_contain_text("Zorblax")
            expect(page.locator("#dataset-hist")).to_be_visible()
            page.locator("#dataset-add").click()
            expect(page.locator("#dataset-message")).to_contain_text("Added")
            page.screenshot(path=str(ARTIFACTS / "ui-datasets.png"), full_page=True)

            # a live run: the chart gains points with no user action. It must outlast everything up to its
            # Cancel below (reloads, a UI restart): on a fast CPU the tiny model ran 300 steps in 3 s.
            first = _start_run(page, tiny_model_dir, r=4, steps=100_000, quant=False)
            open_tab(page, "Runs")
            _wait(lambda: chart_points(page) >= 2, 240, "the first points")
            n1 = chart_points(page)
            _wait(lambda: chart_points(page) > n1, 120, "the chart to grow by itself")
            page.screenshot(path=str(ARTIFACTS / "ui-runs-live.png"), full_page=True)

            # a reload keeps it
            page.reload()
            open_tab(page, "Runs")
            pick_first_containing(page, "run-select", first)
            _wait(lambda: chart_points(page) >= n1, 60, "the chart after a reload")
            browser.close()

        # restart the UI process (the worker keeps training): job, chart and history all come back
        ui_only = Server(home, ARTIFACTS / "ui-server-2.log", worker=False, STUDIO_MODELS_DIR=str(SHARED_MODELS))
        try:
            ui_only.wait_ready()
            with sync_playwright() as p:
                browser, page = open_page(p, ui_only.url)
                open_tab(page, "Runs")
                pick_first_containing(page, "run-select", first)
                _wait(lambda: chart_points(page) >= n1, 60, "the chart after a UI restart")
                expect(page.locator("#run-status")).to_contain_text(first)
                browser.close()
        finally:
            ui_code = ui_only.stop()
        assert ui_code == 0, f"the UI-only studio serve did not stop cleanly ({ui_code}); see {ui_only.log.name}"

        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            open_tab(page, "Runs")
            pick_first_containing(page, "run-select", first)
            page.locator("#run-cancel").click()
            expect(page.locator("#run-status")).to_contain_text("cancelled", timeout=120_000)
            second = _start_run(page, tiny_model_dir, r=8, steps=12, quant=True)
            open_tab(page, "Runs")
            expect(page.locator("#run-status")).to_contain_text("completed", timeout=300_000)

            # two runs overlaid, labelled by what differs, with the config diff
            page.locator("#compare").get_by_text("Compare runs").click()
            page.locator("#compare-runs input").click()
            page.get_by_role("option").filter(has_text=first).first.click()
            page.locator("#compare-runs input").click()
            page.get_by_role("option").filter(has_text=second).first.click()
            page.locator("#compare-button").click()
            _wait(lambda: page.evaluate(
                "() => { const el = document.querySelector('#compare-chart .js-plotly-plot');"
                " return el && el.data ? el.data.map(d => d.name).join('|') : ''; }"), 60, "the comparison")
            names = page.evaluate("() => document.querySelector('#compare-chart .js-plotly-plot').data"
                                  ".map(d => d.name).join('|')")
            assert "r=4" in names and "r=8" in names and "4-bit" in names, names
            rows = _wait(lambda: _table_rows(page, "compare-diff"), 60, "the settings that differ")
            assert ["r", "4", "8"] in rows and ["max_steps", "100000", "12"] in rows, rows
            assert ["load_in_4bit", "false", "true"] in [[c.lower() for c in row] for row in rows], rows
            assert all(len(set(row[1:])) == 2 for row in rows), f"a row whose values agree: {rows}"
            page.screenshot(path=str(ARTIFACTS / "ui-compare.png"), full_page=True)

            # chat: base | finished run | checkpoint of the cancelled run, one prompt, three panes
            open_tab(page, "Chat")
            page.locator("#chat-refresh").click()
            pick_first_containing(page, "chat-run", second)
            pick_first_containing(page, "chat-run-2", first)
            page.locator("#chat-prompt textarea").fill("What is your name?")
            page.locator("#chat-send").click()
            for pane in ("chat-base", "chat-adapter", "chat-adapter-2"):  # the prompt lands in each pane at once
                expect(page.locator(f"#{pane}")).to_contain_text("What is your name?", timeout=180_000)
            expect(page.locator("#chat-note")).to_have_text("", timeout=180_000)  # then the last reply ends
            texts = [page.locator(f"#{i}").inner_text() for i in ("chat-base", "chat-adapter", "chat-adapter-2")]
            page.screenshot(path=str(ARTIFACTS / "ui-chat-compare.png"), full_page=True)
            assert all("What is your name?" in t for t in texts), json.dumps(texts)
            assert len({t for t in texts}) >= 2, "the adapters should change the replies of the random model"
            browser.close()
    finally:
        code = server.stop()
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"
