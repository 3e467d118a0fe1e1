"""The OpenAI-compatible inference server: ``/v1/models`` and ``/v1/chat/completions`` (streamed as
server-sent events, or not), where ``model`` names a base model or an adapter (studio.adapter_library).

Every ``/v1`` request carries ``Authorization: Bearer <key>`` (studio.settings.api_key). The server runs
uvicorn on a thread of its process (beside a worker's queue consumer, or alone for `studio infer`) and
keeps a row in the ``inference_servers`` table while it runs, so clients find it
(studio.inference_client).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import socket
import threading
import time

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from studio import limits

from . import protocol
from .engine import InferenceEngine, PromptTooLong, Reply
from .names import UnknownModel, model_cards, resolve_target
from .protocol import APIError, ChatCompletionRequest

log = logging.getLogger("studio.inference")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000             # `studio infer`; a worker's server takes STUDIO_INFER_PORT or a free port

router = APIRouter()


def key_matches(headers: dict[bytes, bytes], key: str) -> bool:
    scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


class Gate:
    """Every ``/v1`` request passes here before its body is read: the key first (401), then the body's size
    (413 past ``limits.REQUEST_BODY_BYTES``, counted as it arrives, so a huge body is never read in full),
    then the number of requests in flight (429 past ``limits.REQUESTS_IN_FLIGHT``). A pure ASGI middleware:
    FastAPI reads and parses a body before it runs a route's dependencies."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not key_matches(headers, self.key):
            return await _refuse(send, APIError(401, "Incorrect API key provided: use the key in STUDIO_API_KEY or "
                                                     "in the data directory's api_key file.", code="invalid_api_key"))
        too_big = APIError(413, f"The request body is over {limits.REQUEST_BODY_BYTES // (1024 * 1024)} MiB: send "
                                f"fewer or shorter messages.", code="request_too_large")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limits.REQUEST_BODY_BYTES:
            return await _refuse(send, too_big)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limits.REQUEST_BODY_BYTES:
                return await _refuse(send, too_big)
            if not message.get("more_body"):
                break
        if self.in_flight >= limits.REQUESTS_IN_FLIGHT:
            return await _refuse(send, APIError(
                429, f"This server is answering {self.in_flight} requests already, its most: try again shortly.",
                type="rate_limit_error", code="too_many_requests"))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()   # then the client's disconnect, when it goes

        self.in_flight += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1


async def _refuse(send, error: APIError) -> None:
    await JSONResponse(error.body(), status_code=error.status)({"type": "http"}, None, send)


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    cards = await anyio.to_thread.run_sync(model_cards)
    served = getattr(request.app.state.engine, "served", None)  # a vLLM engine serves one base
    if served is not None:
        cards = [c for c in cards if (c.parent or c.id) == served]
    return {"object": "list", "data": [c.as_dict() for c in cards]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    engine: InferenceEngine = request.app.state.engine
    try:
        target = await anyio.to_thread.run_sync(resolve_target, body.model)
    except UnknownModel as exc:
        raise APIError(404, str(exc), param="model", code="model_not_found") from None
    if not isinstance(engine, InferenceEngine):  # a forwarding engine (vllm_engine.py) answers the whole request
        return await engine.respond(body, target)
    messages = [m.plain() for m in body.messages]
    scoring = body.scores()
    try:  # loaded before answering, so a model that cannot load is an error status, not a broken stream
        await anyio.to_thread.run_sync(engine.prepare, target)
    except Exception as exc:
        log.exception("loading %s failed", body.model)
        raise APIError(500, f"cannot load {body.model}: {exc}", type="server_error") from None
    reply = Reply()
    if scoring:  # vLLM's scoring extension (protocol.py): one forward pass, one generated token
        try:
            scored = await anyio.to_thread.run_sync(
                engine.score, target, messages, body.add_generation_prompt, body.continue_final_message,
                body.prompt_logprobs, body.settings(), reply)
        except PromptTooLong as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except Exception as exc:
            log.exception("scoring failed")
            raise APIError(500, f"scoring failed: {exc}", type="server_error") from None
        return protocol.completion(protocol.completion_id(), body.model, reply.text, reply.finish_reason,
                                   reply.prompt_tokens, reply.completion_tokens, scored)
    try:  # the prompt is measured against the model's context before any reply is promised
        admitted = await anyio.to_thread.run_sync(engine.admit, target, messages, body.settings())
    except PromptTooLong as exc:
        raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
    pieces = engine.generate(target, messages, admitted.settings, body.stops(), reply, admitted)
    cid = protocol.completion_id()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(events(pieces, reply, cid, body.model, include_usage),
                                 media_type="text/event-stream")
    done, text = object(), []
    try:  # piece by piece, so a client that goes away stops the generation here too
        while (piece := await anyio.to_thread.run_sync(next, pieces, done)) is not done:
            text.append(piece)
            if await request.is_disconnected():
                break
    except Exception as exc:
        log.exception("generation failed")
        raise APIError(500, f"generation failed: {exc}", type="server_error") from None
    finally:
        await anyio.to_thread.run_sync(pieces.close)
    return protocol.completion(cid, body.model, "".join(text), reply.finish_reason, reply.prompt_tokens,
                               reply.completion_tokens)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def events(pieces, reply: Reply, cid: str, model: str, include_usage: bool):
    """The reply as OpenAI's stream: a role chunk, content chunks, a finish chunk, usage, ``[DONE]``.
    A client that goes away stops the generation (the pieces iterator is closed)."""
    done = object()
    try:
        yield _sse(protocol.chunk(cid, model, {"role": "assistant", "content": ""}))
        while (piece := await anyio.to_thread.run_sync(next, pieces, done)) is not done:
            yield _sse(protocol.chunk(cid, model, {"content": piece}))
        yield _sse(protocol.chunk(cid, model, {}, reply.finish_reason))
        if include_usage:
            yield _sse({**protocol.chunk(cid, model, {}), "choices": [],
                        "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)})
    except Exception as exc:  # the status line is sent already: the error travels as an event
        log.exception("generation failed")
        yield _sse(protocol.error_body(f"generation failed: {exc}", "server_error"))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pieces.close)
    yield _sse("[DONE]")


async def _api_error(_request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _invalid(_request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
    return JSONResponse(protocol.error_body(message, "invalid_request_error", param), status_code=400)


async def _http_error(_request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(protocol.error_body(str(exc.detail), kind), status_code=exc.status_code)


def build_app(engine: InferenceEngine, key: str) -> FastAPI:
    app = FastAPI(title="Fine-Tune Studio inference", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.include_router(router)
    app.add_middleware(Gate, key=key)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    return app


# ---- the running server --------------------------------------------------------------------------

class BindError(OSError):
    """The address cannot be listened on (taken, or not this host's)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: one the OS chooses)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, exc.strerror) from None
    sock.listen(128)
    return sock


def public_url(host: str, port: int, advertise: str | None = None) -> str:
    """The OpenAI base URL clients use, the one registered: ``advertise`` (STUDIO_INFER_ADVERTISE: the name or
    address other machines reach this one by) when given, else the bound address, or this host's name for a
    wildcard bind."""
    shown = advertise or (socket.getfqdn() if host in ("0.0.0.0", "::", "") else host)
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/v1"


class InferenceServer:
    """uvicorn on a thread, registered in the database while it runs (``with InferenceServer(...)``)."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, engine: InferenceEngine | None = None,
                 key: str | None = None, advertise: str | None = None):
        """``advertise``: the host name or address put in the registered URL (default STUDIO_INFER_ADVERTISE)."""
        import uvicorn

        from studio.settings import api_key, infer_advertise

        self.sock = bind(host, port)
        self.url = public_url(host, self.sock.getsockname()[1], advertise or infer_advertise())
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.engine = engine or InferenceEngine(on_change=self._record)
        config = uvicorn.Config(build_app(self.engine, key or api_key()), log_config=None, access_log=False,
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="inference-server", daemon=True)

    def _record(self, loaded_bases: list[dict]) -> None:
        from studio import db

        db.touch_inference_server(self.id, loaded_bases)

    def __enter__(self) -> "InferenceServer":
        from studio import db
        from studio.lifecycle import WORKER_BEAT_SECONDS
        from workers.arguments import device_facts
        from workers.heartbeat import Heartbeat

        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError(f"the inference server did not start on {self.url}")
        db.register_inference_server(id=self.id, host=socket.gethostname(), pid=os.getpid(), url=self.url,
                                     device=device_facts()["device"], loaded_bases=self.engine.loaded_bases())
        self._beat = Heartbeat(lambda: self._record(self.engine.loaded_bases()), WORKER_BEAT_SECONDS,
                               "inference-beat").__enter__()
        log.info("inference server at %s", self.url)
        return self

    def __exit__(self, *exc) -> None:
        from studio import db

        self._beat.__exit__(*exc)
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()
        try:
            db.remove_inference_server(self.id)
        except Exception as error:
            log.warning("could not remove the inference server's row: %s", error)


def beside_worker() -> InferenceServer:
    """The server a worker starts beside its queue consumer: bound to ``STUDIO_INFER_HOST`` (default loopback)
    on ``STUDIO_INFER_PORT`` (default: a free port), registered as ``STUDIO_INFER_ADVERTISE`` (default: the
    bound address, or this machine's name for a wildcard bind) so clients on other machines find it."""
    from studio.settings import get_settings

    settings = get_settings()
    server = InferenceServer(settings.infer_host, settings.infer_port, advertise=settings.infer_advertise)
    if _loopback(server.url) and not settings.database_url.startswith("sqlite"):
        log.warning("the inference server registered %s, which only this machine reaches: for a UI or clients on "
                    "other machines set STUDIO_INFER_HOST=0.0.0.0 and STUDIO_INFER_ADVERTISE to this machine's name "
                    "or address (docs/cluster.md)", server.url)
    return server


def _loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_forever(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, engine=None) -> None:
    """`studio infer`: serve until SIGINT or SIGTERM. BindError when the port is taken. ``engine``: the
    default InferenceEngine, or a VLLMEngine (vllm_engine.py) to forward to."""
    from studio.settings import API_KEY_FILE, get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s infer %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with InferenceServer(host, port, engine=engine) as server:
        settings = get_settings()
        where = "STUDIO_API_KEY" if settings.endpoint_key else settings.home / API_KEY_FILE
        print(f"OpenAI-compatible endpoint: {server.url} (key in {where})", flush=True)
        while not stop.wait(1.0):
            pass
    from studio import db

    db.checkpoint()
