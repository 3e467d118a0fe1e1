"""Nothing one request sends can wedge the inference endpoint: a real `studio infer` process, driven by the
official `openai` client and raw HTTP (httpx), answers a normal request while a 10^9-token request runs, refuses
prompts past the model's context, oversized bodies, unknown parameters and bad values in OpenAI's error shape,
and stops generating when a client leaves."""
from __future__ import annotations

import json
import re
import threading

import pytest

from adapter_fixtures import make_job
from conftest import isolated_home, wait_for
from inferproc import started_infer

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

CONTEXT = 32_768          # a tiny model with a long context: a 10^9-token request generates for minutes
QUESTION = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-long"), context=CONTEXT))


@pytest.fixture(scope="module")
def server(tmp_path_factory, long_model, tiny_model_dir):
    """A real `studio infer` that knows both bases (a finished run of each)."""
    with isolated_home(tmp_path_factory.mktemp("bounds")) as home:
        make_job(tiny_model_dir, "short-context", seed=1)
        make_job(long_model, "long-context", seed=2)
        log = tmp_path_factory.mktemp("bounds-log") / "infer.log"
        with started_infer(home, log) as (url, proc):
            from studio.settings import api_key

            yield url, api_key(), log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=server[1], max_retries=0, timeout=120)


def _post(server, body: dict | bytes, key: str | None = None, timeout: float = 120) -> httpx.Response:
    url, real_key, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/chat/completions", content=content, timeout=timeout,
                      headers={"Authorization": f"Bearer {key or real_key}", "Content-Type": "application/json"})


def _error(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_a_billion_token_request_neither_blocks_others_nor_outlives_its_client(server, client, long_model):
    """The long request streams while normal requests to the same base are answered in between; when its client
    goes, the server stops generating it."""
    first = client.chat.completions.create(model=long_model, messages=QUESTION, max_tokens=4, temperature=0)
    assert first.choices[0].finish_reason == "length"     # the base is loaded and answers

    received, leave = [], threading.Event()

    def long_stream():
        with client.chat.completions.create(model=long_model, messages=[{"role": "user", "content": "Tell a long story"}],
                                            max_tokens=10**9, temperature=0, stream=True) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                if leave.is_set():
                    break               # the client goes away mid-reply

    thread = threading.Thread(target=long_stream)
    thread.start()
    wait_for(lambda: len(received) > 20, 120, what="the long request to stream")
    for _ in range(3):
        out = client.chat.completions.create(model=long_model, messages=QUESTION, max_tokens=8, temperature=0)
        assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 8
    assert thread.is_alive(), "the normal requests were answered while the long one was still generating"
    leave.set()
    thread.join(120)
    log = server[2]
    wait_for(lambda: "stopped after" in log.read_text(), 60, what="the server to stop the abandoned reply")
    stopped = int(re.findall(r"stopped after (\d+) tokens", log.read_text())[-1])
    assert 20 < stopped < CONTEXT


def test_a_non_streamed_request_stops_when_its_client_leaves(server, long_model):
    with pytest.raises(httpx.TimeoutException):
        _post(server, {"model": long_model, "messages": QUESTION, "max_tokens": 10**9, "temperature": 0},
              timeout=3.0)
    log = server[2]
    wait_for(lambda: log.read_text().count("stopped after") >= 2, 60,
             what="the server to stop the reply its client left")
    response = _post(server, {"model": long_model, "messages": QUESTION, "max_tokens": 3, "temperature": 0})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3


def test_max_tokens_is_capped_at_what_the_context_leaves(server, tiny_model_dir):
    """The 1,024-token tiny model: a 10^9 budget ends at the context, with finish_reason length."""
    response = _post(server, {"model": str(tiny_model_dir), "messages": QUESTION, "max_tokens": 10**9,
                              "temperature": 0})
    usage = response.json()["usage"]
    assert response.status_code == 200 and usage["prompt_tokens"] + usage["completion_tokens"] <= 1024


def test_a_prompt_past_the_context_is_refused_before_any_generation(server, client, tiny_model_dir):
    big = "word " * 200_000                       # about 1 MB
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=str(tiny_model_dir), messages=[{"role": "user", "content": big}])
    body = err.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "maximum context length is 1,024 tokens" in body["message"]
    many = [{"role": "user", "content": "hi"}] * 10_000
    response = _post(server, {"model": str(tiny_model_dir), "messages": many})
    assert response.status_code == 400 and "messages" in _error(response)["message"]
    after = client.chat.completions.create(model=str(tiny_model_dir), messages=QUESTION, max_tokens=3)
    assert after.usage.completion_tokens == 3


def test_an_oversized_body_is_refused_unread_and_the_key_comes_first(server):
    from studio import limits

    huge = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (limits.REQUEST_BODY_BYTES + 10) + b'"}]}'
    response = _post(server, huge)
    assert response.status_code == 413 and "MiB" in _error(response)["message"]
    no_key = _post(server, b"{not json", key="wrong")
    assert no_key.status_code == 401 and _error(no_key)["code"] == "invalid_api_key"


@pytest.mark.parametrize("extra", [{"tools": [{"type": "function", "function": {"name": "f"}}]},
                                   {"response_format": {"type": "json_object"}}, {"logprobs": True},
                                   {"top_logprobs": 3}, {"logit_bias": {"1": 5}}, {"presence_penalty": 0.5},
                                   {"frequency_penalty": 1.0}], ids=lambda e: next(iter(e)))
def test_a_parameter_the_server_cannot_honour_is_refused_by_name(client, tiny_model_dir, extra):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=str(tiny_model_dir), messages=QUESTION, max_tokens=2,
                                       extra_body=extra)
    param = next(iter(extra))
    assert err.value.body["param"] == param and f"`{param}`" in err.value.body["message"]


def test_neutral_values_of_those_parameters_are_accepted(client, tiny_model_dir):
    out = client.chat.completions.create(model=str(tiny_model_dir), messages=QUESTION, max_tokens=2,
                                         presence_penalty=0, frequency_penalty=0, logprobs=False,
                                         response_format={"type": "text"}, tool_choice="none")
    assert out.usage.completion_tokens == 2


@pytest.mark.parametrize("body, param", [
    ({"seed": 2**70}, "seed"), ({"max_tokens": "many"}, "max_tokens"), ({"temperature": "NaN"}, "temperature"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": "x" * 1000}, "stop")])
def test_bad_values_are_400_naming_the_field(server, tiny_model_dir, body, param):
    response = _post(server, {"model": str(tiny_model_dir), "messages": QUESTION, **body})
    assert response.status_code == 400, response.text
    assert param in _error(response)["message"]


def test_a_lone_surrogate_is_a_400_not_a_500(server, tiny_model_dir):
    raw = ('{"model": %s, "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
           % json.dumps(str(tiny_model_dir))).encode()
    response = _post(server, raw)
    assert response.status_code == 400
    assert "lone surrogate" in _error(response)["message"] and _error(response)["param"] == "messages"
