"""In a real browser: a tool-calling file previews through the Train tab's base model and its chat template,
showing the tool schema, the tool call and the trained parts."""
from __future__ import annotations

import json
import os
import shutil

from browser import Server, open_page, open_tab, require_browser
from conftest import ARTIFACTS, ROOT
from test_formats import HERMES, TOOL_ROW


def test_tool_file_preview_follows_the_train_tab_model(tmp_path, tiny_model_dir):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    model = tmp_path / "tiny-tools"  # the tiny model with a template that renders tools and tool_calls
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": HERMES}))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    data = tmp_path / "weather-tools.jsonl"
    data.write_text(json.dumps(TOOL_ROW) + "\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = Server(tmp_path / "home", ARTIFACTS / "datasets-ui-server.log", worker=False)
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            open_tab(page, "Train")
            box = page.locator("#spec-base_model input")
            box.fill(str(model))
            box.press("Enter")
            open_tab(page, "Datasets")
            page.locator("#dataset-upload input[type=file]").set_input_files(str(data))
            expect(page.locator("#dataset-message")).to_contain_text("1 rows")
            stats, mask = page.locator("#dataset-stats"), page.locator("#dataset-mask")
            expect(stats).to_contain_text(f"Preview for {model}")
            expect(stats).to_contain_text("tool schemas: passed to the chat template's tools")
            expect(stats).to_contain_text("tool schemas in the rows: 1 row carries them (1 distinct tool: get_weather); "
                                          "1 row calls a tool; the schemas add about")
            expect(mask).to_contain_text("<tools>")
            expect(mask).to_contain_text('"description": "Current weather of a city"')
            expect(mask).to_contain_text('<tool_call>')
            expect(mask).to_contain_text('"arguments": {"city": "Paris"}')
            expect(mask).to_contain_text("trained")  # the legend of the highlighted (trained) parts
            page.screenshot(path=str(ARTIFACTS / "datasets-tools.png"), full_page=True)
            browser.close()
    finally:
        server.stop()


def test_an_identity_template_gets_its_blanks_filled_in_the_page(tmp_path):
    """LLaMA-Factory-style identity.json ("I am {{name}}, developed by {{author}}"): the page lists the blanks
    to fill, the preview shows the values once typed, and the library stores the set with them."""
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    from test_placeholders import TEMPLATE_ROWS

    expect.set_options(timeout=60_000)
    data = tmp_path / "identity.json"
    data.write_text(json.dumps(TEMPLATE_ROWS, ensure_ascii=False))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = Server(tmp_path / "home", ARTIFACTS / "datasets-fill-server.log", worker=False)
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            open_tab(page, "Datasets")
            page.locator("#dataset-upload input[type=file]").set_input_files(str(data))
            stats, box = page.locator("#dataset-stats"), page.locator("#dataset-fill textarea")
            expect(stats).to_contain_text("unfilled template blanks: {{name}} (4 rows), {{author}} (3 rows)")
            expect(box).to_have_value("{{name}} = \n{{author}} = ")
            box.fill("{{name}} = Zorblax\n{{author}} = Quintar Labs")
            box.blur()
            expect(stats).to_contain_text("template blanks filled in as you asked")
            expect(stats).not_to_contain_text("unfilled")
            expect(page.locator("#dataset-preview")).to_contain_text("I am Zorblax, an AI assistant developed by "
                                                                     "Quintar Labs.")
            page.screenshot(path=str(ARTIFACTS / "datasets-fill.png"), full_page=True)
            if os.environ.get("STUDIO_UPDATE_SCREENSHOTS"):  # the README's picture of it
                shutil.copyfile(ARTIFACTS / "datasets-fill.png", ROOT / "docs" / "screenshots" / "datasets-fill.png")
            page.locator("#dataset-add").click()
            expect(page.locator("#dataset-message")).to_contain_text(
                "Added: identity, 4 rows (alpaca), blanks filled: {{name}} = Zorblax, {{author}} = Quintar Labs.")
            expect(page.locator("#dataset-table")).to_contain_text("{{name}} = Zorblax; {{author}} = Quintar Labs")
            browser.close()
    finally:
        server.stop()
