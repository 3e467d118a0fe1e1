"""Uploads to a running UI over real HTTP: only from the studio's own pages (another site's page cannot make a
visitor's browser upload files), and a file over the limit is told in MiB, the unit STUDIO_UPLOAD_LIMIT_MB is
read in, by the server, the page and the command line alike."""
from __future__ import annotations

import pytest

from conftest import ARTIFACTS, free_port

CROSS_ORIGIN = "uploads are accepted only from the studio's own pages, and this one came from another site ({})"
OVER = "the file is over the upload limit of 1 MiB (STUDIO_UPLOAD_LIMIT_MB)"


@pytest.fixture
def ui(studio_home, monkeypatch):
    """The UI launched in this process as `studio serve` launches it (no login), with a 1 MiB upload limit."""
    from studio import settings
    from studio.ui import build_ui, launch_kwargs

    monkeypatch.setenv("STUDIO_UPLOAD_LIMIT_MB", "1")
    settings.reset_settings()
    demo = build_ui()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def _upload(url: str, data: bytes = b'{"text": "hi"}\n', **headers: str):
    import httpx

    return httpx.post(f"{url}/gradio_api/upload", files={"files": ("rows.jsonl", data, "application/json")},
                      headers=headers, timeout=60)


def test_uploads_come_only_from_the_studios_own_pages(ui):
    same = _upload(ui, Origin=ui)
    assert same.status_code == 200 and same.json()[0].endswith("rows.jsonl")
    assert _upload(ui).status_code == 200  # no Origin: gradio_client, curl, a script; no browser acting for a site
    for origin in ("https://evil.example", "null", ui.replace("127.0.0.1", "localhost"), ui.replace("http:", "https:")
                   .rsplit(":", 1)[0]):
        refused = _upload(ui, Origin=origin)
        assert (refused.status_code, refused.text) == (403, CROSS_ORIGIN.format(origin)), origin
    # behind a reverse proxy that forwards the name the browser used
    proxied = _upload(ui, Origin="https://studio.example.com", **{"X-Forwarded-Host": "studio.example.com"})
    assert proxied.status_code == 200
    # other requests are gradio's business as before
    import httpx

    assert httpx.get(ui, headers={"Origin": "https://evil.example"}).status_code == 200


def test_a_file_over_the_limit_is_told_in_mib(ui, tmp_path):
    from studio import library
    from studio.datasets import DatasetError

    refused = _upload(ui, b"x" * (2 << 20), Origin=ui)
    assert (refused.status_code, refused.text) == (413, OVER)
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"text": "' + b"x" * (3 << 19) + b'"}\n')
    with pytest.raises(DatasetError) as told:
        library.inspect(big)
    assert str(told.value) == "the file is 1.5 MiB, over the upload limit of 1 MiB (STUDIO_UPLOAD_LIMIT_MB)"


@pytest.mark.browser
def test_the_page_tells_a_file_over_the_limit_in_mib(ui, tmp_path):
    """gradio's page checks a file's size before sending it, and says '1.0 Mb'; the studio's page says MiB."""
    from browser import open_page, require_browser

    require_browser()
    from playwright.sync_api import expect, sync_playwright

    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * (2 << 20))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser, page = open_page(p, ui)
        try:
            page.locator("#dataset-upload input[type=file]").set_input_files(big)
            expect(page.get_by_test_id("toast-text")).to_have_text(f'{OVER[:1].upper()}{OVER[1:]}: "big.jsonl"')
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "upload-limit.png"))
            raise
        finally:
            browser.close()
