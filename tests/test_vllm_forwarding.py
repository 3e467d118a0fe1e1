"""`studio infer --engine vllm`: our endpoint in front of a vLLM server, driven by the official `openai` client.

CI has no GPU, so vLLM itself is played by a small server started here that speaks the endpoints we use
(``/health``, ``/v1/load_lora_adapter``, ``/v1/chat/completions`` streamed and not) and records what it was
sent. Our server is a real `studio infer` process pointed at it with ``--vllm-url``: the names clients use,
the key, the 404s and the registration stay ours; adapters load into vLLM once, on first use.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi import Request  # module level: the fake's handlers are annotated with it (postponed annotations)

from adapter_fixtures import make_adapter, make_job
from conftest import ROOT, free_port, isolated_home
from inferproc import started_infer
from workerproc import worker_env

openai = pytest.importorskip("openai")

UPSTREAM_KEY = "upstream-secret"
MESSAGES = [{"role": "user", "content": "Hello there"}]


class FakeVLLM:
    """What vLLM's OpenAI server answers with --enable-lora and runtime LoRA updating: one served base, LoRA
    adapters loaded by name, replies that say which model answered ("[MODEL] last user message")."""

    def __init__(self, served: str):
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

        self.served, self.loras, self.loads, self.chats = served, {}, [], []
        app = FastAPI()

        def refused(request: Request):
            if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
                return JSONResponse({"error": {"message": "Unauthorized"}}, status_code=401)
            return None

        @app.get("/health")
        async def health():
            return PlainTextResponse("")

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            if bad := refused(request):
                return bad
            body = await request.json()
            self.loads.append(body)
            if body["lora_name"] in self.loras:
                return JSONResponse({"error": {"message": f"The lora adapter '{body['lora_name']}' has already been "
                                                          "loaded."}}, status_code=400)
            if not (Path(body["lora_path"]) / "adapter_config.json").exists():
                return JSONResponse({"error": {"message": "no adapter there"}}, status_code=400)
            self.loras[body["lora_name"]] = body["lora_path"]
            return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            if bad := refused(request):
                return bad
            body = await request.json()
            self.chats.append(body)
            model = body["model"]
            if model != self.served and model not in self.loras:
                return JSONResponse({"error": {"message": f"The model `{model}` does not exist.",
                                               "type": "NotFoundError", "code": 404}}, status_code=404)
            words = f"[{model}] {body['messages'][-1]['content']}".split(" ")
            if not body.get("stream"):
                return {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}}

            def events():
                def chunk(delta, finish=None):
                    return {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                yield f"data: {json.dumps(chunk({'role': 'assistant', 'content': ''}))}\n\n"
                for i, word in enumerate(words):
                    yield f"data: {json.dumps(chunk({'content': word if i == 0 else ' ' + word}))}\n\n"
                yield f"data: {json.dumps(chunk({}, 'stop'))}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
                    yield f"data: {json.dumps({**chunk({}), 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """A data directory with a finished run and two imported adapters (r=4 and r=16), a fake vLLM serving the
    tiny model, and a real `studio infer --engine vllm --max-lora-rank 8` process in front of it."""
    from studio import adapter_import, adapter_library
    from studio.models import shown_model

    with isolated_home(tmp_path_factory.mktemp("vllm")) as home:
        job = make_job(tiny_model_dir, "greeter", seed=1)
        adapter_import.import_adapter(make_adapter(tiny_model_dir, home.parent / "narrow", 2), "narrow",
                                      str(tiny_model_dir))
        adapter_import.import_adapter(make_adapter(tiny_model_dir, home.parent / "wide", 3, r=16), "wide",
                                      str(tiny_model_dir))
        fake = FakeVLLM(shown_model(str(tiny_model_dir)))
        try:
            with started_infer(home, home.parent / "infer.log", "--engine", "vllm", "--base-model",
                               str(tiny_model_dir), "--vllm-url", fake.url, "--max-lora-rank", "8", register=False,
                               VLLM_API_KEY=UPSTREAM_KEY) as (url, proc):
                from studio.settings import api_key

                client = openai.OpenAI(base_url=url, api_key=api_key(), max_retries=0)
                yield {"client": client, "fake": fake, "job": job, "proc": proc, "port": urlsplit(url).port,
                       "base": shown_model(str(tiny_model_dir)), "adapter_key": adapter_library.resolve("greeter").key,
                       "adapter_folder": adapter_library.resolve("greeter").folder}
        finally:
            fake.stop()


def test_models_list_our_names_for_the_served_base(setup):
    ids = {m.id: m for m in setup["client"].models.list().data}
    assert {setup["base"], "greeter", "imported/narrow", "imported/wide"} <= set(ids)
    assert all((getattr(m, "parent", None) or m.id) == setup["base"] for m in ids.values())


def test_the_base_is_forwarded_under_vllms_name_and_answered_under_ours(setup):
    fake, client = setup["fake"], setup["client"]
    reply = client.chat.completions.create(model=setup["base"], messages=MESSAGES, temperature=0, max_tokens=8)
    assert reply.model == setup["base"]
    assert reply.choices[0].message.content == f"[{setup['base']}] Hello there"
    sent = fake.chats[-1]
    assert sent["model"] == setup["base"] and sent["max_tokens"] == 8 and sent["temperature"] == 0
    assert sent["messages"] == MESSAGES


def test_an_adapter_loads_into_vllm_once_and_streams_under_our_name(setup):
    fake, client = setup["fake"], setup["client"]
    before = len(fake.loads)
    for _ in range(2):
        chunks = list(client.chat.completions.create(model="greeter", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"[{setup['adapter_key']}] Hello there"
        assert {c.model for c in chunks} == {"greeter"}
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "the reply came in one piece"
        assert chunks[-1].usage.completion_tokens == 3
    loads = fake.loads[before:]
    assert loads == [{"lora_name": setup["adapter_key"], "lora_path": str(setup["adapter_folder"])}]
    assert fake.chats[-1]["model"] == setup["adapter_key"] and fake.chats[-1]["stream"] is True


def test_vllms_scoring_extension_is_forwarded_as_sent(setup):
    """prompt_logprobs and the rendering flags reach vLLM unchanged, which answers them itself (any max_tokens)."""
    fake, client = setup["fake"], setup["client"]
    client.chat.completions.create(model=setup["base"], messages=MESSAGES, max_tokens=4, temperature=0,
                                   extra_body={"add_generation_prompt": False, "prompt_logprobs": 2})
    sent = fake.chats[-1]
    assert (sent["add_generation_prompt"], sent["prompt_logprobs"], sent["max_tokens"]) == (False, 2, 4)
    with pytest.raises(openai.BadRequestError, match="Cannot set both"):  # refused here, as vLLM refuses it
        client.chat.completions.create(model=setup["base"], messages=MESSAGES, max_tokens=1,
                                       extra_body={"continue_final_message": True})
    assert fake.chats[-1] is sent


def test_wrong_key_unknown_model_and_too_wide_adapter_are_refused_before_vllm(setup):
    fake, client = setup["fake"], setup["client"]
    seen = (len(fake.chats), len(fake.loads))
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{setup['port']}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=setup["base"], messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-run", messages=MESSAGES)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as wide:
        client.chat.completions.create(model="imported/wide", messages=MESSAGES)
    assert "rank 16, above this server's --max-lora-rank 8" in wide.value.body["message"]
    assert (len(fake.chats), len(fake.loads)) == seen


def test_the_server_registers_itself(setup):
    from studio.inference_client import live_servers

    rows = [s for s in live_servers() if s.pid == setup["proc"].pid]
    assert rows and rows[0].loaded_bases == [{"model": setup["base"], "memory_mb": None, "engine": "vllm"}]


def test_without_vllm_the_engine_is_refused_in_one_sentence(tmp_path):
    if __import__("importlib.util").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    done = subprocess.run([sys.executable, "-m", "workers.cli", "infer", "--engine", "vllm", "--port", "0"], cwd=ROOT,
                          env=worker_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: vLLM is not installed here: `pip install vllm` on a GPU host, or leave "
                                   "out --engine vllm to serve with transformers + peft")


def test_the_vllm_child_serves_one_base_with_lora_on_loopback():
    from workers.inference.vllm_engine import vllm_command

    command = vllm_command(Path("/models/base"), "base", 4321, 32)
    assert command[1:] == ["serve", "/models/base", "--served-model-name", "base", "--host", "127.0.0.1",
                           "--port", "4321", "--enable-lora", "--max-lora-rank", "32"]
