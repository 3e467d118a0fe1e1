"""In a real browser: the Train tab's Base model list shows "name · family · size · licence" but the form's
handlers receive the hub id (gradio 6.0 sent the label of a (label, value) choice when allow_custom_value is on,
gradio issue #12548), whether the model is clicked in the list or its label typed; a hub id or local folder
typed in arrives unchanged. Read from what the browser sends, from the downloaded YAML and from Start's refusal."""
from __future__ import annotations

import json

import pytest
import yaml

from browser import SHARED_MODELS, Server, launch_browser, open_tab, require_browser
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

QWEN = ("Qwen2.5-0.5B-Instruct · Qwen2.5 · 0.5B · Apache-2.0", "Qwen/Qwen2.5-0.5B-Instruct")
QWEN_15 = ("Qwen2.5-1.5B-Instruct · Qwen2.5 · 1.5B · Apache-2.0", "Qwen/Qwen2.5-1.5B-Instruct")


def test_the_base_model_list_hands_the_hub_id_to_the_form(tmp_path):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    from studio.ui.train_tab import base_model_choices

    assert QWEN in base_model_choices() and QWEN_15 in base_model_choices()
    labels = {label for label, _ in base_model_choices()}
    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = Server(tmp_path / "home", ARTIFACTS / "base-model-picker-server.log", worker=False,
                    STUDIO_MODELS_DIR=str(SHARED_MODELS))
    sent: list[str] = []  # every string the browser sends to a handler

    def record(request):
        if "queue/join" in request.url and request.post_data:
            sent.extend(x for x in json.loads(request.post_data).get("data", []) if isinstance(x, str))

    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.on("request", record)
            page.goto(server.url)
            open_tab(page, "Train")
            box, estimate, status = (page.locator("#spec-base_model input"), page.locator("#memory-estimate"),
                                     page.locator("#train-status"))
            expect(estimate).to_contain_text("Estimated peak memory")
            page.get_by_text("YAML", exact=True).click()  # open the accordion: the download link shows in it

            def form_base_model() -> str:
                """base_model of the YAML that "Download this form as YAML" writes from the form's values."""
                links = page.locator("#yaml-download a[href]")
                old = links.first.get_attribute("href") if links.count() else None
                page.get_by_role("button", name="Download this form as YAML").click()
                expect(links.first).to_be_attached()
                if old:  # each download is a new file in a folder of its own
                    expect(links.first).not_to_have_attribute("href", old)
                return yaml.safe_load(page.request.get(links.first.get_attribute("href")).text())["base_model"]

            # a listed model picked by clicking it: the box shows its label, the handlers get its hub id
            before = estimate.inner_text()
            box.click()
            page.get_by_role("option", name=QWEN[0], exact=True).click()
            expect(box).to_have_value(QWEN[0])
            expect(estimate).not_to_have_text(before)
            expect(estimate).to_contain_text("Estimated peak memory")  # the table knows Qwen2.5's shape
            assert form_base_model() == QWEN[1]
            page.locator("#start-training").click()  # no dataset: refused, naming the model it was given
            expect(status).to_contain_text(f"'{QWEN[1]}'")

            # a listed model's label typed in full: still its hub id
            box.click()
            box.fill(QWEN_15[0])
            box.press("Enter")
            expect(box).to_have_value(QWEN_15[0])
            assert form_base_model() == QWEN_15[1]

            # a hub id and a local folder typed in arrive as typed
            for typed in ("someone/my-model-7b", str(tmp_path / "models" / "my-local-model")):
                box.click()
                box.fill(typed)
                box.press("Enter")
                expect(box).to_have_value(typed)
                expect(estimate).to_contain_text("Memory estimate: the model's configuration is not known here.")
                assert form_base_model() == typed
            browser.close()
    finally:
        server.stop()
    assert QWEN[1] in sent and QWEN_15[1] in sent
    assert not labels & set(sent), f"a list label reached the handlers: {sorted(labels & set(sent))}"
