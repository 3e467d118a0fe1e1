"""Chat: one base in memory, adapters switched without reloading it, side-by-side panes, Stop, CLI."""
from __future__ import annotations

import argparse

import pytest

from adapter_fixtures import make_adapter, make_checkpoint, make_job

PROMPT = "Hello, how are you?"


@pytest.fixture
def engine(monkeypatch):
    from studio import chat

    fresh = chat.ChatEngine()
    monkeypatch.setattr(chat, "_engine", fresh)
    return fresh


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


def test_compare_panes_differ_from_base_and_keep_their_history(tiny_model_dir, studio_home, engine):
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
    assert engine.base_loads == 1


def test_checkpoints_and_imports_are_offered_and_usable(tiny_model_dir, studio_home, engine):
    from studio import adapters
    from workers.callbacks import COMPLETE_MARKER

    assert adapters.CHECKPOINT_MARKER == COMPLETE_MARKER
    running = make_job(tiny_model_dir, "live", status="running")
    make_checkpoint(running, tiny_model_dir, 2, seed=5)
    make_checkpoint(running, tiny_model_dir, 4, seed=6, complete=False)  # torn: being written
    finished = make_job(tiny_model_dir, "done", seed=1)
    imported = adapters.import_adapter(make_adapter(tiny_model_dir, studio_home.parent / "up", 9), "outside",
                                       str(tiny_model_dir))
    values = [v for _, v in adapters.chat_choices()]
    assert values == [finished.id, f"{running.id}/checkpoint-2", "imported/outside"]
    assert adapters.resolve(values[1]).folder.name == "checkpoint-2"
    assert adapters.resolve(values[2]).folder == imported

    history, note = _respond(*values)
    assert note == ""
    replies = [pane[-1]["content"] for pane in history]
    assert len(set(replies)) == 4
    with pytest.raises(adapters.AdapterError, match="pick one of its checkpoints"):
        adapters.resolve(running.id)


def test_an_adapter_of_another_base_is_refused_in_its_pane(tiny_model_dir, other_base, studio_home, engine):
    good = make_job(tiny_model_dir, "good", seed=1)
    narrow = make_job(other_base, "narrow", seed=1)
    history, note = _respond(good.id, narrow.id)
    assert "B: narrow was trained on" in note and "do not fit" in note
    assert history[2] == []  # pane B untouched
    assert history[1][-1]["content"]


def test_stop_ends_only_this_sessions_reply(tiny_model_dir, studio_home, engine):
    from studio.chat import GenerationSettings, compare

    engine.current_owner = "someone-else"
    engine.stop("me")
    assert not engine.stop_event.is_set()
    engine.current_owner = None

    jobs = [make_job(tiny_model_dir, f"run-{i}", seed=i) for i in (1, 2)]
    stream = compare(PROMPT, "auto", [j.id for j in jobs], [[], [], []], "", GenerationSettings(max_new_tokens=64),
                     owner="me")
    for histories, note in stream:
        if note.startswith("Generating: base"):
            engine.stop("me")
    assert note == "Stopped."
    assert histories[1][-1]["content"] == "(stopped)" and histories[2][-1]["content"] == "(stopped)"


def test_cli_chat_compare(tiny_model_dir, studio_home, capsys):
    from studio.adapters import cli_chat

    job = make_job(tiny_model_dir, "cli-run", seed=1)
    args = argparse.Namespace(run="cli-run", prompt=PROMPT, compare=True, system="", max_new_tokens=6,
                              temperature=0.0, seed=0)
    assert cli_chat(args) == 0
    out = capsys.readouterr().out
    assert f"--- base ({tiny_model_dir})" in out and "--- cli-run" in out
    assert cli_chat(argparse.Namespace(run="nope", prompt=PROMPT, compare=False)) == 2
    assert "no finished run or imported adapter named 'nope'" in capsys.readouterr().err
    assert job.status == "completed"


def test_least_recently_used_adapters_leave_memory(tiny_model_dir, tmp_path, engine, monkeypatch):
    from studio import chat

    monkeypatch.setattr(chat, "MAX_LOADED_ADAPTERS", 2)
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
