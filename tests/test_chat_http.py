"""The Chat tab generates nothing itself: `studio serve`'s worker starts an inference server in its own
process, the browser's three-pane compare streams from it over HTTP, and the UI process never maps torch."""
from __future__ import annotations

import pytest

from adapter_fixtures import make_job
from browser import SHARED_MODELS, Server, open_page, open_tab, pick_first_containing, require_browser, torch_mapped
from conftest import ARTIFACTS, wait_for

pytestmark = pytest.mark.browser

PROMPT = "What is your name?"
PANES = ("chat-base", "chat-adapter", "chat-adapter-2")


def test_the_chat_tab_streams_from_an_inference_server_and_the_ui_never_loads_torch(studio_home, tiny_model_dir):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    from studio.inference_client import live_servers
    from studio.models import shown_model

    expect.set_options(timeout=120_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    make_job(tiny_model_dir, "greeter", seed=1)
    make_job(tiny_model_dir, "poet", seed=2)
    server = Server(studio_home, ARTIFACTS / "chat-http-server.log", STUDIO_MODELS_DIR=str(SHARED_MODELS))
    try:
        server.wait_ready()
        infer = wait_for(live_servers, 180, what="the worker's inference server to register")[0]
        assert infer.pid != server.proc.pid, "the inference server runs in the UI process"
        with sync_playwright() as p:
            browser, page = open_page(p, server.url)
            open_tab(page, "Chat")
            page.locator("#chat-refresh").click()
            pick_first_containing(page, "chat-run", "greeter")
            pick_first_containing(page, "chat-run-2", "poet")
            page.locator("#chat-prompt textarea").fill(PROMPT)
            page.locator("#chat-send").click()
            for pane in PANES:
                expect(page.locator(f"#{pane}")).to_contain_text(PROMPT, timeout=180_000)
            expect(page.locator("#chat-note")).to_have_text("", timeout=180_000)
            texts = [page.locator(f"#{pane}").inner_text() for pane in PANES]
            page.screenshot(path=str(ARTIFACTS / "ui-chat-http.png"), full_page=True)
            browser.close()
        assert len(set(texts)) == 3, f"base and both adapters should answer differently: {texts}"
        assert torch_mapped(server.proc.pid) == []
        served = [b["model"] for s in live_servers() for b in s.loaded_bases or []]
        assert shown_model(str(tiny_model_dir)) in served, served
    finally:
        code = server.stop()
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"
