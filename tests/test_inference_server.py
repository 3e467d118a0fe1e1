"""The OpenAI-compatible inference server, driven by the official `openai` client against a real
`studio infer` process: models, streamed and plain replies of a base and its adapters, keys, errors,
stop sequences, and the server's row in the database."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from adapter_fixtures import make_adapter, make_checkpoint, make_job
from conftest import ROOT, isolated_home, wait_for
from inferproc import started_infer
from workerproc import worker_env

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    """A data directory with a finished run, a checkpoint of a running one and an imported adapter."""
    from studio import adapter_import

    with isolated_home(tmp_path_factory.mktemp("infer")) as home:
        make_job(tiny_model_dir, "greeter", seed=1)
        running = make_job(tiny_model_dir, "halfway", seed=2, status="running")
        make_checkpoint(running, tiny_model_dir, 4, seed=3)
        adapter_import.import_adapter(make_adapter(tiny_model_dir, home.parent / "upload", 4), "outside",
                                      str(tiny_model_dir))
        yield home


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    """A real `studio infer` process on a free loopback port; its key generated into the data directory."""
    with started_infer(home, tmp_path_factory.mktemp("infer-log") / "infer.log") as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def client(server, home):
    from studio.settings import api_key

    return openai.OpenAI(base_url=server[0], api_key=api_key(), max_retries=0)


@pytest.fixture(scope="module")
def in_process(home, tiny_model_dir):
    """ChatEngine's in-process path with the same base and adapters: what greedy replies must equal."""
    from studio.adapter_library import resolve
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import ChatEngine

    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))

    def reply(model: str | None, max_tokens: int = 12) -> str:
        ref = resolve(model) if model else None
        if ref is not None:
            engine.ensure_adapter(ref.key, ref.folder)
        settings = GenerationSettings(max_new_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0)
        return engine.reply(MESSAGES, ref.key if ref else None, settings)

    return reply


def _ask(client, model: str, stream: bool = False, **kw):
    kw = {"temperature": 0, "max_tokens": 12, **kw}
    if not stream:
        out = client.chat.completions.create(model=model, messages=MESSAGES, **kw)
        return out.choices[0].message.content, out.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_models_lists_bases_runs_checkpoints_and_imports(client, tiny_model_dir):
    cards = {m.id: m for m in client.models.list().data}
    base = str(tiny_model_dir)
    assert {base, "greeter", "halfway/checkpoint-4", "imported/outside"} <= set(cards)
    for name in ("greeter", "halfway/checkpoint-4", "imported/outside"):
        assert cards[name].parent == base and cards[name].owned_by == "studio"
    assert cards[base].object == "model"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_greedy_replies_equal_the_in_process_path(client, in_process, tiny_model_dir, stream):
    replies = {}
    for model in (str(tiny_model_dir), "greeter", "halfway/checkpoint-4", "imported/outside"):
        text, _ = _ask(client, model, stream)
        assert text == in_process(None if model == str(tiny_model_dir) else model), model
        replies[model] = text
    assert len(set(replies.values())) == 4, "each adapter answers differently from the base"


def test_a_wrong_key_is_refused_with_401(server):
    bad = openai.OpenAI(base_url=server[0], api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="greeter", messages=MESSAGES)


def test_an_unknown_model_is_an_openai_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-run", messages=MESSAGES)
    assert err.value.body == {"message": "The model `no-such-run` does not exist.", "type": "invalid_request_error",
                              "param": "model", "code": "model_not_found"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_stop_sequences_and_max_tokens_are_honoured(client, in_process, stream):
    full = in_process("imported/outside", 24)
    stop = next(full[i:i + 2] for i in range(4, len(full) - 2) if full.find(full[i:i + 2]) == i)
    text, finish = _ask(client, "imported/outside", stream, max_tokens=24, stop=[stop])
    assert (text, finish) == (full[:full.index(stop)], "stop")
    text, finish = _ask(client, "imported/outside", stream, max_tokens=3)
    assert (text, finish) == (in_process("imported/outside", 3), "length")
    out = client.chat.completions.create(model="imported/outside", messages=MESSAGES, temperature=0, max_tokens=3)
    assert out.usage.completion_tokens == 3 and out.usage.prompt_tokens > 0


def test_the_key_is_generated_private_and_the_server_registered(server, home, client):
    from studio.inference_client import live_servers

    url, proc = server
    assert stat.S_IMODE((home / "api_key").stat().st_mode) == 0o600
    rows = live_servers()
    assert [(r.url, r.pid) for r in rows] == [(url, proc.pid)]
    assert rows[0].loaded_bases and rows[0].loaded_bases[0]["memory_mb"] > 0  # the earlier tests loaded one


def test_chat_stream_helper_reads_the_endpoint(server, in_process):
    from studio.chat import GenerationSettings
    from studio.inference_client import chat_stream

    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
    growing = list(chat_stream(MESSAGES, "imported/outside", settings))
    assert growing[-1] == in_process("imported/outside")
    assert all(b.startswith(a) for a, b in zip(growing, growing[1:]))


def test_a_worker_serves_beside_its_consumer_and_deregisters(home, tiny_model_dir, tmp_path):
    """`studio worker` starts a server on a free port, registers it, and removes the row when stopped."""
    from studio.inference_client import live_servers
    from studio.settings import api_key

    before = {r.pid for r in live_servers()}
    log = open(tmp_path / "worker.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--no-prepare"], cwd=ROOT,
                            env=worker_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        row = wait_for(lambda: next((r for r in live_servers() if r.pid == proc.pid), None), 180,
                       what="the worker's inference server to register")
        assert row.pid not in before
        models = openai.OpenAI(base_url=row.url, api_key=api_key(), max_retries=0).models.list()
        assert "greeter" in {m.id for m in models.data}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        assert proc.pid not in {r.pid for r in live_servers()}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def test_held_back_never_sends_the_start_of_a_stop_sequence():
    from workers.inference.engine import held_back

    assert held_back("Hello wor", ["world"]) == ("Hello ", False)
    assert held_back("Hello world!", ["world"]) == ("Hello ", True)
    assert held_back("Hello", ["xyz"]) == ("Hello", False)
    assert held_back("abc", []) == ("abc", False)


def test_bases_beyond_the_memory_budget_are_evicted_least_recently_used(tiny_model_dir, tmp_path):
    from tiny import build_tiny_model
    from workers.inference.engine import InferenceEngine

    other = build_tiny_model(tmp_path / "other", hidden=32)
    seen = []
    engine = InferenceEngine(budget_bytes=1, on_change=seen.append)  # room for one base only
    first = engine.chat_engine(str(tiny_model_dir))
    assert engine.chat_engine(str(tiny_model_dir)) is first  # one copy per base
    engine.chat_engine(str(other))
    assert [b["model"] for b in engine.loaded_bases()] == [str(other)]
    engine = InferenceEngine(budget_bytes=10**12)
    engine.chat_engine(str(tiny_model_dir)), engine.chat_engine(str(other)), engine.chat_engine(str(tiny_model_dir))
    assert [b["model"] for b in engine.loaded_bases()] == [str(other), str(tiny_model_dir)]
    assert seen[-1] == [{"model": str(other), "memory_mb": seen[-1][0]["memory_mb"]}]
