"""Chat: one base in memory, adapters switched without reloading it, side-by-side panes streamed from an
inference server, Stop, CLI."""
from __future__ import annotations

import argparse
import json

import pytest

from adapter_fixtures import make_adapter, make_checkpoint, make_job

PROMPT = "Hello, how are you?"


@pytest.fixture
def engine():
    from workers.inference.chat_engine import ChatEngine

    fresh = ChatEngine()
    return fresh


@pytest.fixture
def server(studio_home):
    """A real inference server (uvicorn on a thread of this process), registered in this test's database."""
    from workers.inference.server import InferenceServer

    with InferenceServer() as running:
        yield running


def base_loads(server) -> list[int]:
    return [e.base_loads for e in server.engine.bases.values()]


@pytest.fixture
def other_base(tmp_path_factory):
    """A tiny model of another width: adapters trained on it do not fit the main tiny model."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-narrow"), hidden=32)


def _respond(*refs, history=None, base="auto", max_new=8):
    from studio.ui import chat_tab

    refs = list(refs) + [""] * (3 - len(refs))
    history = history or [[], [], [], []]
    last = None
    for last in chat_tab.respond(PROMPT, base, *refs, "", *history, max_new, 0, 0.9, 50, 1.1, 0):
        pass
    return list(last[:4]), last[4]


def test_switching_adapters_never_reloads_the_base(tiny_model_dir, tmp_path, engine):
    from studio.chat import GenerationSettings

    settings = GenerationSettings(max_new_tokens=8)
    messages = [{"role": "user", "content": PROMPT}]
    engine.ensure_base(str(tiny_model_dir))
    plain = engine.reply(messages, None, settings)
    replies = {}
    for seed in (1, 2, 3):
        folder = make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed)
        engine.ensure_adapter(f"a{seed}", folder)
    for _ in range(2):  # back and forth between adapters and the base
        for name in ("a1", "a2", "a3", None):
            replies.setdefault(name, set()).add(engine.reply(messages, name, settings))
    engine.ensure_base(str(tiny_model_dir / "."))  # another spelling of the same folder
    assert engine.base_loads == 1
    assert all(len(r) == 1 for r in replies.values()), "switching changed a reply"
    assert replies[None] == {plain}, "disable_adapter() is not the plain base"
    assert len({next(iter(r)) for r in replies.values()}) == 4, "each adapter should answer differently"


def test_compare_panes_differ_from_base_and_keep_their_history(tiny_model_dir, studio_home, server):
    jobs = [make_job(tiny_model_dir, f"run-{c}", seed=s) for c, s in (("a", 1), ("b", 2), ("c", 3))]
    history, note = _respond(*(j.id for j in jobs))
    assert note == ""
    base_reply = history[0][-1]["content"]
    for pane in history:
        assert [m["role"] for m in pane] == ["user", "assistant"]
        assert pane[0]["content"] == PROMPT
    for pane in history[1:]:
        assert pane[-1]["content"] and pane[-1]["content"] != base_reply
    history, _ = _respond(*(j.id for j in jobs), history=history)  # a second turn: multi-turn per pane
    assert all(len(pane) == 4 for pane in history)
    assert base_loads(server) == [1]


def test_without_an_inference_server_the_note_says_how_to_start_one(tiny_model_dir, studio_home):
    job = make_job(tiny_model_dir, "lonely", seed=1)
    history, note = _respond(job.id)
    assert note == "No inference server is running: start `studio worker` (it starts one) or `studio infer`."
    assert history == [[], [], [], []]


def test_checkpoints_and_imports_are_offered_and_usable(tiny_model_dir, studio_home, server):
    from studio import adapter_import, adapter_library
    from workers.callbacks import COMPLETE_MARKER

    assert adapter_library.CHECKPOINT_MARKER == COMPLETE_MARKER
    running = make_job(tiny_model_dir, "live", status="running")
    make_checkpoint(running, tiny_model_dir, 2, seed=5)
    make_checkpoint(running, tiny_model_dir, 4, seed=6, complete=False)  # torn: being written
    finished = make_job(tiny_model_dir, "done", seed=1)
    imported = adapter_import.import_adapter(make_adapter(tiny_model_dir, studio_home.parent / "up", 9), "outside",
                                                str(tiny_model_dir))
    values = [v for _, v in adapter_library.chat_choices()]
    assert values == [finished.id, f"{running.id}/checkpoint-2", "imported/outside"]
    assert adapter_library.resolve(values[1]).folder.name == "checkpoint-2"
    assert adapter_library.resolve(values[2]).folder == imported

    history, note = _respond(*values)
    assert note == ""
    replies = [pane[-1]["content"] for pane in history]
    assert len(set(replies)) == 4
    with pytest.raises(adapter_library.AdapterError, match="pick one of its checkpoints"):
        adapter_library.resolve(running.id)


def test_an_adapter_of_another_base_is_refused_in_its_pane(tiny_model_dir, other_base, studio_home, server):
    good = make_job(tiny_model_dir, "good", seed=1)
    narrow = make_job(other_base, "narrow", seed=1)
    history, note = _respond(good.id, narrow.id)
    assert "B: narrow was trained on" in note and "do not fit" in note
    assert history[2] == []  # pane B untouched
    assert history[1][-1]["content"]


def test_stop_ends_only_this_sessions_reply(tiny_model_dir, studio_home, server):
    from studio import chat
    from studio.chat import GenerationSettings, compare

    jobs = [make_job(tiny_model_dir, f"run-{i}", seed=i) for i in (1, 2)]
    settings = GenerationSettings(max_new_tokens=64)
    mine = compare(PROMPT, "auto", [j.id for j in jobs], [[], [], []], "", settings, owner="me")
    for histories, note in mine:
        if note.startswith("Generating: base"):
            chat.stop("someone-else")
            chat.stop("me")
    assert note == "Stopped."
    assert histories[1][-1]["content"] == "(stopped)" and histories[2][-1]["content"] == "(stopped)"
    theirs = list(compare(PROMPT, "auto", [jobs[0].id], [[], []], "", settings, owner="another"))[-1]
    assert theirs[1] == "" and theirs[0][1][-1]["content"] not in ("", "(stopped)")


def test_cli_chat_compare(tiny_model_dir, studio_home, server, capsys):
    from studio.cli import cmd_chat
    from studio.models import shown_model

    job = make_job(tiny_model_dir, "cli-run", seed=1)
    args = argparse.Namespace(run="cli-run", prompt=PROMPT, compare=True, system="", max_new_tokens=6,
                              temperature=0.0, seed=0)
    assert cmd_chat(args) == 0
    out = capsys.readouterr().out
    assert f"--- base ({shown_model(str(tiny_model_dir))})" in out and "--- cli-run" in out
    assert cmd_chat(argparse.Namespace(run="nope", prompt=PROMPT, compare=False)) == 2
    assert "no finished run or imported adapter named 'nope'" in capsys.readouterr().err
    assert job.status == "completed"


def test_cli_chat_without_an_inference_server_says_how_to_start_one(tiny_model_dir, studio_home, capsys):
    from studio.cli import cmd_chat

    make_job(tiny_model_dir, "cli-run", seed=1)
    args = argparse.Namespace(run="cli-run", prompt=PROMPT, compare=False, system="", max_new_tokens=6,
                              temperature=0.0, seed=0)
    assert cmd_chat(args) == 1
    assert capsys.readouterr().err == ("error: No inference server is running: start `studio worker` (it starts "
                                       "one) or `studio infer`.\n")


def test_least_recently_used_adapters_leave_memory(tiny_model_dir, tmp_path, engine, monkeypatch):
    from workers.inference import chat_engine

    monkeypatch.setattr(chat_engine, "MAX_LOADED_ADAPTERS", 2)
    messages = [{"role": "user", "content": PROMPT}]
    engine.ensure_base(str(tiny_model_dir))
    folders = {n: make_adapter(tiny_model_dir, tmp_path / n, seed) for n, seed in (("a1", 1), ("a2", 2), ("a3", 3))}
    engine.ensure_adapter("a1", folders["a1"])
    first = engine.reply(messages, "a1")
    engine.ensure_adapter("a2", folders["a2"])
    engine.ensure_adapter("a1", folders["a1"])  # used again: a2 is now the oldest
    engine.ensure_adapter("a3", folders["a3"])
    assert list(engine.adapters) == ["a1", "a3"] and set(engine.model.peft_config) == {"a1", "a3"}
    assert engine.reply(messages, "a1") == first and engine.base_loads == 1


def test_snippets_reach_the_running_inference_server_without_showing_the_key(tiny_model_dir, studio_home, server,
                                                                             monkeypatch, capsys):
    import subprocess

    from studio import adapter_exports
    from studio.settings import api_key

    pytest.importorskip("openai")
    job = make_job(tiny_model_dir, "snippet-run", seed=1)
    running = make_job(tiny_model_dir, "halfway", seed=2, status="running")
    make_checkpoint(running, tiny_model_dir, 4, seed=3)
    key = api_key()
    snippets = adapter_exports.snippets(job.id)
    assert server.url in snippets["endpoint_curl"] and repr(server.url) in snippets["endpoint_openai"]
    assert '"model": "snippet-run"' in snippets["endpoint_curl"]
    assert "model='snippet-run'" in snippets["endpoint_openai"]
    assert "halfway/checkpoint-4" in adapter_exports.snippets(f"{running.id}/checkpoint-4")["endpoint_curl"]
    assert not any(key in text for text in snippets.values())

    monkeypatch.setenv("STUDIO_API_KEY", key)
    exec(compile(snippets["endpoint_openai"], "snippet", "exec"), {})
    printed = capsys.readouterr().out
    curl = subprocess.run(["bash", "-c", snippets["endpoint_curl"]], capture_output=True, text=True, timeout=120)
    assert curl.returncode == 0 and '"object":"chat.completion"' in curl.stdout.replace(" ", ""), curl
    assert printed.strip() == json.loads(curl.stdout)["choices"][0]["message"]["content"].strip()


def test_snippets_without_a_server_name_the_default_address(tiny_model_dir, studio_home):
    from studio import adapter_exports

    job = make_job(tiny_model_dir, "snippet-run", seed=1)
    snippets = adapter_exports.snippets(job.id)
    for text in (snippets["endpoint_curl"], snippets["endpoint_openai"]):
        assert "http://127.0.0.1:8000/v1" in text and "no inference server is running now" in text


def test_a_run_whose_name_another_run_took_first_is_served_by_its_id(tiny_model_dir, studio_home):
    from studio import adapter_library
    from studio.chat import served_name

    first = make_job(tiny_model_dir, "twin", seed=1)
    second = make_job(tiny_model_dir, "twin", seed=2)
    names = {served_name(adapter_library.resolve(job.id)) for job in (first, second)}
    assert {adapter_library.resolve(n).ref for n in names} == {first.id, second.id}


NO_SYSTEM_ROLE = (  # Gemma 2's way: a system turn is refused
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
THINKING_SWITCH = (  # SmolLM3's way: the switch changes the header of the whole conversation
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<|im_start|>system\n/no_think<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [NO_SYSTEM_ROLE, THINKING_SWITCH], ids=["no-system-role", "thinking-switch"])
def test_scoring_reads_the_prompt_generation_reads(tiny_model_dir, engine, template):
    """score renders as encode/stream do (system folded where the template has no system role, the thinking
    switch set), so a reference reply's log-probabilities follow the very prompt a generated reply follows."""
    engine.ensure_base(str(tiny_model_dir))
    engine.tokenizer.chat_template = template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT},
                {"role": "assistant", "content": "I am fine, thank you."}]
    prompt = engine.encode(messages[:-1], None)

    def scored(entries) -> list[int]:  # the tokens scored after the first (its own id is each entry's first key)
        assert entries[0] is None
        return [int(next(iter(entry))) for entry in entries[1:]]

    asked, _ = engine.score(messages[:-1], None)  # with the generation prompt: exactly what generation reads
    assert scored(asked) == prompt[1:]
    whole, _ = engine.score(messages, None, add_generation_prompt=False)
    assert scored(whole)[:len(prompt) - 1] == prompt[1:] and len(whole) > len(prompt)
    opened, _ = engine.score(messages, None, add_generation_prompt=False, continue_final_message=True)
    assert scored(opened) == scored(whole)[:len(opened) - 1] and len(prompt) < len(opened) < len(whole)


def test_a_final_turn_left_open_renders_as_transformers_leaves_it(tiny_model_dir):
    from transformers import AutoTokenizer

    from workers.inference.chat_engine import render_scored

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": " I am fine. "}]
    assert render_scored(tok, messages, False, True) == tok.apply_chat_template(messages, tokenize=False,
                                                                                continue_final_message=True)
    assert render_scored(tok, messages, False) == tok.apply_chat_template(messages, tokenize=False)
    with pytest.raises(ValueError, match="not compatible"):
        render_scored(tok, messages, True, True)
