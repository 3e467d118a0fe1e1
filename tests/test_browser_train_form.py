"""In a real browser at 1280x900: the Train form's basic part fits one screen with one short line of help per
field, the dataset just added is the one chosen, the long explanations open behind "What each field means",
and the Datasets tab's preview renders the system prompt as the Train tab's choice will train it.

With STUDIO_UPDATE_SCREENSHOTS set, its screenshots replace docs/screenshots/train.png and train-advanced.png
(the README's pictures of the Train tab)."""
from __future__ import annotations

import os
import shutil

import pytest

import identity_data
from browser import SHARED_MODELS, Server, ensure_bundled_model, launch_browser, open_tab, pick, require_browser
from conftest import ARTIFACTS, ROOT

pytestmark = pytest.mark.browser

SCREEN = {"width": 1280, "height": 900}
HELP_WORDS = 14
SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM"


def test_the_train_form_reads_in_a_glance(tmp_path):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    ensure_bundled_model()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = identity_data.write(tmp_path / "identity.jsonl")
    server = Server(tmp_path / "home", ARTIFACTS / "train-form-server.log", worker=False,
                    STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport=SCREEN)
            page.set_default_timeout(60_000)
            page.goto(server.url)

            # the preview renders identity rows as System prompt auto trains them: without SmolLM's default
            open_tab(page, "Datasets")
            page.locator("#dataset-upload input[type=file]").set_input_files(str(data))
            stats, mask = page.locator("#dataset-stats"), page.locator("#dataset-mask")
            expect(stats).to_contain_text("is left out of rows without a system turn (Train tab, System prompt "
                                          "auto: these rows teach their own name or maker, so omit)", timeout=120_000)
            expect(mask).to_contain_text("Zorblax")
            expect(mask).not_to_contain_text(SMOLLM_DEFAULT)
            page.locator("#dataset-add").click()
            expect(page.locator("#dataset-message")).to_contain_text("Added", timeout=60_000)

            # the Train tab: the dataset just added is chosen, once; the basic form fits one screen
            open_tab(page, "Train")
            expect(page.locator("#spec-dataset input")).to_have_value("identity")
            expect(page.locator("#memory-estimate")).to_contain_text("Estimated peak memory")
            page.mouse.click(5, 5)
            page.evaluate("window.scrollTo(0, 0)")
            advanced = page.locator("#train-advanced").bounding_box()
            assert advanced["y"] + advanced["height"] <= SCREEN["height"], advanced
            assert page.locator("#start-training").bounding_box()["y"] < SCREEN["height"]
            helps = page.evaluate("""() => [...document.querySelectorAll('[id^="spec-"]')]
                .filter(e => e.offsetParent !== null)
                .map(e => [e.id, (e.querySelector('.info-text, [data-testid="block-info"] + div') || {}).textContent || ''])""")
            assert len(helps) >= 14, helps
            for elem_id, text in helps:
                assert 0 < len(text.split()) <= HELP_WORDS + 3, (elem_id, text)  # + " One per line." on lists
            page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

            # the Train tab's system-prompt choice reaches the preview: keep shows the default again
            pick(page, "spec-system_prompt_mode", "keep")
            open_tab(page, "Datasets")
            expect(stats).to_contain_text("adds its default", timeout=120_000)
            expect(mask).to_contain_text(SMOLLM_DEFAULT)
            open_tab(page, "Train")
            pick(page, "spec-system_prompt_mode", "auto")
            page.mouse.click(5, 5)

            # the advanced fields, and the long explanations behind their toggle
            page.locator("#train-advanced").get_by_text("Advanced", exact=True).click()
            expect(page.locator("#spec-fit_check")).to_be_visible()
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(ARTIFACTS / "train-advanced.png"), full_page=True)
            page.locator("#field-docs").get_by_text("What each field means", exact=True).click()
            docs = page.locator("#field-docs-text")
            expect(docs).to_contain_text(SMOLLM_DEFAULT)  # System prompt's details
            expect(docs).to_contain_text("PiSSA and OLoRA need an unquantised base")
            browser.close()
        if os.environ.get("STUDIO_UPDATE_SCREENSHOTS"):  # the README's pictures of the Train tab
            for name in ("train.png", "train-advanced.png"):
                shutil.copyfile(ARTIFACTS / name, ROOT / "docs" / "screenshots" / name)
    finally:
        server.stop()
