"""Uploads: from the studio's own pages only, and a file over the limit told in MiB.

A browser lets any website POST a form, files included, to any address the visitor can reach (a "simple"
request: no preflight). Without a login, gradio's upload route would keep such files from any page a visitor
of the studio happens to open. A browser names the page that sends a request in its ``Origin`` header, so an
upload whose origin is not the address the studio is served at (the ``Host`` header, or ``X-Forwarded-Host``
behind a proxy) is refused with 403 and one sentence. A client that sends no ``Origin`` (gradio_client, curl,
a script) is no browser acting for another site, and passes.

gradio tells a file over the upload limit in its own units: the server in bytes, the page (which checks a
file before sending it) as "100.0 Mb". Both are replaced by the studio's sentence, the limit in MiB, the unit
STUDIO_UPLOAD_LIMIT_MB is read in.
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

UPLOAD_PATH = "/gradio_api/upload"
CROSS_ORIGIN = ("uploads are accepted only from the studio's own pages, and this one came from another site "
                "({origin})")
DEFAULT_PORTS = {"http": "80", "https": "443"}


def is_upload(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith(UPLOAD_PATH)


def _authority(netloc: str, scheme: str) -> str:
    """host[:port] in lower case, without the scheme's default port."""
    netloc = netloc.strip().lower()
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):  # not the inside of a bare IPv6 address
        return host if port == DEFAULT_PORTS.get(scheme) else netloc
    return netloc


def same_origin(headers: Headers) -> bool:
    """No ``Origin`` (no browser), or one whose host and port are those the request was sent to."""
    origin = headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:  # 'null': a sandboxed frame, a file:// page
        return False
    served = [headers.get("host", ""), headers.get("x-forwarded-host", "").split(",")[0]]
    return _authority(parts.netloc, parts.scheme) in {_authority(h, parts.scheme) for h in served if h.strip()}


class SameOriginUploads:
    """ASGI middleware around the gradio app (studio.ui.launch_kwargs)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if not is_upload(scope):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if not same_origin(headers):
            origin = headers.get("origin", "")[:80]
            return await PlainTextResponse(CROSS_ORIGIN.format(origin=origin), status_code=403)(scope, receive, send)
        await self.app(scope, receive, _limit_told_in_mib(send))


def over_the_limit() -> str:
    from studio.settings import get_settings

    return f"the file is over the upload limit of {get_settings().upload_limit_text} (STUDIO_UPLOAD_LIMIT_MB)"


def page_script() -> str:
    """The page's side (``demo.launch(js=...)``): the toast gradio shows for a file over the limit, before
    sending it, names the limit in MiB."""
    sentence = over_the_limit()
    return """() => {
  const gradios = /File\\(s\\) exceed the maximum allowed size of [0-9.]+ [KMGTPEZY]?b/;
  const ours = %s;
  new MutationObserver(() => {
    for (const toast of document.querySelectorAll("[data-testid=toast-text]")) {
      if (gradios.test(toast.textContent)) toast.textContent = toast.textContent.replace(gradios, ours);
    }
  }).observe(document.body, {childList: true, subtree: true});
}""" % json.dumps(sentence[:1].upper() + sentence[1:])


def _limit_told_in_mib(send):
    """``send`` with gradio's 413 (its limit in bytes) replaced by the studio's sentence."""
    refused = False

    async def wrapped(message):
        nonlocal refused
        if message["type"] == "http.response.start" and message["status"] == 413:
            refused = True
            body = over_the_limit().encode()
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
            message = {**message, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            await send(message)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if refused:  # gradio's own body: already answered
            return
        await send(message)

    return wrapped
