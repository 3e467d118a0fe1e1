"""vLLM behind our endpoint: `studio infer --engine vllm` on a GPU host where vLLM is installed.

vLLM serves one base model with ``--enable-lora`` from a child process (``vllm serve``) on a private
loopback port, with runtime LoRA loading on (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) and a private key.
Our server stays in front: its bearer key, its model names (runs, checkpoints, imports), its 404s and its
row in the database. A request for an adapter loads it into vLLM on first use through vLLM's
``/v1/load_lora_adapter``; then ``/v1/chat/completions`` is forwarded, streamed or not, with our name
for the model in every answer. The transformers + peft engine (engine.py) stays the default.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from studio.adapter_library import same_base
from studio.models import shown_model

from .names import Target
from .protocol import APIError, ChatCompletionRequest, error_body

log = logging.getLogger("studio.inference")

DEFAULT_MAX_LORA_RANK = 64
START_TIMEOUT = 900.0       # seconds: a large base loads and compiles its CUDA graphs first
TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0)


def unavailable_reason() -> str | None:
    """Why this host cannot start vLLM (one sentence), or None."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed here: `pip install vllm` on a GPU host, or leave out --engine vllm to "
                "serve with transformers + peft")
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and this host has none: leave out --engine vllm to serve with transformers + peft"
    return None


def vllm_command(model_path: Path, served_name: str, port: int, max_lora_rank: int) -> list[str]:
    """``vllm serve`` for one base with LoRA on, on loopback only."""
    exe = Path(sys.executable).with_name("vllm")
    head = [str(exe)] if exe.exists() else [shutil.which("vllm") or "vllm"]
    return [*head, "serve", str(model_path), "--served-model-name", served_name, "--host", "127.0.0.1",
            "--port", str(port), "--enable-lora", "--max-lora-rank", str(max_lora_rank)]


def _die_with_parent() -> None:
    """In the child: SIGTERM when `studio infer` dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upstream_error(response: httpx.Response) -> str:
    """vLLM's error message: ``{"error": {"message"}}`` (newer) or ``{"message"}`` (older)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"vLLM answered {response.status_code}"
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return f"vLLM answered {response.status_code}"


class VLLMEngine:
    """Forwards chat completions for one base and its LoRA adapters to a vLLM server at ``url`` (an OpenAI
    base URL ending in /v1). ``start`` runs that server as our child; a URL alone uses one already running."""

    def __init__(self, base: str, url: str, key: str | None = None, max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
                 process: subprocess.Popen | None = None):
        self.base, self.url, self.max_lora_rank, self.process = base, url.rstrip("/"), max_lora_rank, process
        self.served = shown_model(base)                       # vLLM's name for the base (--served-model-name)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.loaded: dict[str, str] = {}                      # adapter folder -> vLLM's lora_name
        self._lock: asyncio.Lock | None = None

    # -- the child process ----------------------------------------------------------------------------
    @classmethod
    def start(cls, base: str, max_lora_rank: int = DEFAULT_MAX_LORA_RANK, log_path: Path | None = None) -> "VLLMEngine":
        """Start ``vllm serve`` for ``base`` and wait until it answers; RuntimeError (one sentence) when it cannot."""
        if why := unavailable_reason():
            raise RuntimeError(why)
        from studio.settings import child_env
        from workers.bundled import model_folder

        port, key = _free_port(), secrets.token_urlsafe(24)
        env = child_env(VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_API_KEY=key)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        process = subprocess.Popen(vllm_command(model_folder(base), shown_model(base), port, max_lora_rank),
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        engine = cls(base, f"http://127.0.0.1:{port}/v1", key, max_lora_rank, process)
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {process.returncode} before it served {shown_model(base)}"
                                   + (f": see {log_path}" if log_path else ""))
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return engine
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        engine.stop()
        raise RuntimeError(f"vLLM did not answer within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    # -- what InferenceServer asks of an engine -------------------------------------------------------
    def loaded_bases(self) -> list[dict]:
        return [{"model": self.served, "memory_mb": None, "engine": "vllm"}]

    def serves(self, base: str) -> bool:
        return same_base(base, self.base)

    # -- adapters -------------------------------------------------------------------------------------
    def _check_adapter(self, target: Target) -> None:
        """Only LoRA adapters within --max-lora-rank load into vLLM: anything else is refused with a sentence."""
        try:
            config = json.loads((target.adapter.folder / "adapter_config.json").read_text())
        except (OSError, ValueError):
            raise APIError(404, f"The model `{target.model}` has no readable adapter_config.json.", param="model",
                           code="model_not_found") from None
        kind = str(config.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise APIError(400, f"`{target.model}` is a {kind} adapter and vLLM serves LoRA adapters only: serve it "
                                "with the default engine (studio infer without --engine vllm).", param="model")
        rank = max([int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())])
        if rank > self.max_lora_rank:
            raise APIError(400, f"`{target.model}` has LoRA rank {rank}, above this server's --max-lora-rank "
                                f"{self.max_lora_rank}: restart it with --max-lora-rank {rank} or more.", param="model")

    async def vllm_name(self, target: Target, client: httpx.AsyncClient) -> str:
        """vLLM's model name for ``target``, loading its adapter on first use."""
        if not self.serves(target.base):
            raise APIError(404, f"The model `{target.model}` does not exist on this server: it serves "
                                f"{self.served} and its adapters (vLLM).", param="model", code="model_not_found")
        if target.adapter is None:
            return self.served
        folder = str(target.adapter.folder)
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if folder in self.loaded:
                return self.loaded[folder]
            self._check_adapter(target)
            name = target.adapter.key
            r = await client.post(f"{self.url}/load_lora_adapter", json={"lora_name": name, "lora_path": folder},
                                  headers=self.headers)
            if r.status_code != 200 and "already" not in _upstream_error(r):
                raise APIError(500, f"vLLM could not load `{target.model}`: {_upstream_error(r)}", type="server_error")
            self.loaded[folder] = name
            log.info("vllm: loaded adapter %s as %s", target.model, name)
            return name

    # -- the request ----------------------------------------------------------------------------------
    async def respond(self, body: ChatCompletionRequest, target: Target):
        """Forward one chat completion to vLLM and answer it under our name for the model."""
        client = httpx.AsyncClient(timeout=TIMEOUT)
        try:
            payload = body.model_dump(exclude_none=True)
            payload["model"] = await self.vllm_name(target, client)
            payload["messages"] = [m.plain() for m in body.messages]
            request = client.build_request("POST", f"{self.url}/chat/completions", json=payload, headers=self.headers)
            try:
                response = await client.send(request, stream=body.stream)
            except httpx.HTTPError as exc:
                raise APIError(502, f"vLLM did not answer: {exc}", type="server_error") from None
            if response.status_code != 200:
                await response.aread()
                await response.aclose()
                raise APIError(response.status_code, _upstream_error(response),
                               type="server_error" if response.status_code >= 500 else "invalid_request_error")
        except BaseException:
            await client.aclose()
            raise
        if not body.stream:
            try:
                answer = response.json()
            finally:
                await client.aclose()
            answer["model"] = body.model
            return JSONResponse(answer)
        return StreamingResponse(self._relay(response, client, body.model), media_type="text/event-stream")

    @staticmethod
    async def _relay(response: httpx.Response, client: httpx.AsyncClient, model: str):
        """vLLM's server-sent events with our model name; a client that goes away closes vLLM's stream too."""
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    if line:
                        yield f"{line}\n\n"
                    continue
                try:
                    event = json.loads(line[len("data: "):])
                except ValueError:
                    yield f"{line}\n\n"
                    continue
                if isinstance(event, dict) and "model" in event:
                    event["model"] = model
                yield f"data: {json.dumps(event)}\n\n"
        except httpx.HTTPError as exc:  # the status line is sent already: the error travels as an event
            yield f"data: {json.dumps(error_body(f'vLLM stopped answering: {exc}', 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await response.aclose()
            await client.aclose()
