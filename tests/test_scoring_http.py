"""vLLM's scoring extension on our inference server, driven by the official `openai` client (``extra_body``)
against a real `studio infer` process: ``prompt_logprobs`` of a conversation that ends with a reference
reply, rendered with ``add_generation_prompt: false`` (or ``continue_final_message``), sum to the same
teacher-forced loss the in-process engine computes; bad combinations get OpenAI-style 400s."""
from __future__ import annotations

import pytest

from adapter_fixtures import make_job
from conftest import isolated_home
from inferproc import infer_process

openai = pytest.importorskip("openai")

SINGLE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "The capital of France is Paris."}]
MULTI = [{"role": "user", "content": "What is your name?"}, {"role": "assistant", "content": "Zorblax."},
         {"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "Quintar Labs."}]
SCORE = {"add_generation_prompt": False, "prompt_logprobs": 0}


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    with isolated_home(tmp_path_factory.mktemp("scoring")) as home:
        make_job(tiny_model_dir, "greeter", seed=1)
        yield home


@pytest.fixture(scope="module")
def client(home, tmp_path_factory):
    from studio.settings import api_key

    with infer_process(home, tmp_path_factory.mktemp("scoring-log") / "infer.log") as url:
        yield openai.OpenAI(base_url=url, api_key=api_key(), max_retries=0)


@pytest.fixture(scope="module")
def engine(home, tiny_model_dir):
    """The in-process engine with the same base and adapter: its teacher-forced loss is the reference."""
    from studio.adapter_library import resolve
    from workers.inference.chat_engine import ChatEngine

    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))
    ref = resolve("greeter")
    engine.ensure_adapter(ref.key, ref.folder)
    return engine, ref.key


def _scored(client, model: str, messages: list[dict], **extra) -> tuple[list, object]:
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0,
                                         extra_body={**SCORE, **extra})
    return out.model_extra["prompt_logprobs"], out


def _prompt_tokens(client, model: str, messages: list[dict]) -> int:
    """The generation request's own count of the prompt (with its generation prompt), as the client sees it."""
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0)
    return out.usage.prompt_tokens


@pytest.mark.parametrize("who", ["base", "adapter"])
def test_the_reference_reply_logprobs_sum_to_the_in_process_teacher_forced_loss(client, engine, tiny_model_dir,
                                                                                who):
    from studio.inference_client import reply_nll

    chat, key = engine
    model, adapter = (str(tiny_model_dir), None) if who == "base" else ("greeter", key)
    entries, out = _scored(client, model, SINGLE)
    assert entries[0] is None and len(entries) == out.usage.prompt_tokens
    first = entries[1]
    (token, logprob), = first.items()
    assert logprob["rank"] >= 1 and logprob["logprob"] <= 0 and isinstance(logprob["decoded_token"], str)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 1

    nll, tokens = reply_nll(entries, _prompt_tokens(client, model, SINGLE[:-1]))
    expected, count = chat.nll(SINGLE, adapter)  # one assistant turn: every trained token is the reference's
    assert tokens == count and nll == pytest.approx(expected, rel=1e-4, abs=1e-4)

    # a longer conversation: only the last reply counts, not the earlier assistant turn
    entries, _ = _scored(client, model, MULTI)
    nll, tokens = reply_nll(entries, _prompt_tokens(client, model, MULTI[:-1]))
    whole, whole_count = chat.nll(MULTI, adapter)
    before, before_count = chat.nll(MULTI[:2], adapter)
    assert tokens == whole_count - before_count
    assert nll == pytest.approx(whole - before, rel=1e-4, abs=1e-4)


def test_continue_final_message_leaves_the_reply_open_and_top_logprobs_add_alternatives(client, tiny_model_dir):
    model = str(tiny_model_dir)
    closed, _ = _scored(client, model, SINGLE)
    opened, out = _scored(client, model, SINGLE, continue_final_message=True)
    assert len(opened) < len(closed)  # no end of turn after the reply
    for a, b in zip(opened[1:], closed[1:len(opened)]):
        assert a.keys() == b.keys() and next(iter(a.values()))["logprob"] == pytest.approx(
            next(iter(b.values()))["logprob"], abs=1e-4)
    assert isinstance(out.choices[0].message.content, str)

    wide, _ = _scored(client, model, SINGLE, prompt_logprobs=3)
    for entry, one in zip(wide[1:], closed[1:]):
        (token, mine), = one.items()
        assert token in entry and 3 <= len(entry) <= 4  # the token itself and the three likeliest
        assert sorted(e["rank"] for e in entry.values())[:3] == [1, 2, 3]
        assert entry[token]["rank"] == mine["rank"]


@pytest.mark.parametrize("extra, param, words", [
    ({"add_generation_prompt": True, "continue_final_message": True}, "continue_final_message", "Cannot set both"),
    ({"prompt_logprobs": -1}, "prompt_logprobs", "greater than or equal to 0"),
    ({"prompt_logprobs": 21}, "prompt_logprobs", "less than or equal to 20"),
    ({"prompt_logprobs": 0, "max_tokens": 8}, "max_tokens", "set `max_tokens` to 1"),
])
def test_bad_scoring_requests_get_one_clear_400(client, tiny_model_dir, extra, param, words):
    body = {"temperature": 0, "max_tokens": 1, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=str(tiny_model_dir), messages=SINGLE, extra_body=body)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and words in error["message"], error


def test_continue_final_message_needs_a_final_assistant_turn_and_prompt_logprobs_no_stream(client, tiny_model_dir):
    with pytest.raises(openai.BadRequestError, match="end with an assistant message"):
        client.chat.completions.create(model=str(tiny_model_dir), messages=SINGLE[:1], max_tokens=1,
                                       extra_body={"add_generation_prompt": False, "continue_final_message": True})
    with pytest.raises(openai.BadRequestError, match="not available when `stream` is true"):
        client.chat.completions.create(model=str(tiny_model_dir), messages=SINGLE, max_tokens=1, stream=True,
                                       extra_body=SCORE)
