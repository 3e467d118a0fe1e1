"""General replay: the base's own answers to general instructions, trained beside a small SFT set so it keeps its
general skills (bench/forgetting.py measures what it keeps on the bundled model). Here: the prompt set stays
apart from the probe it is judged by, the rows a run gets, and a real run on the tiny model."""
from __future__ import annotations

import difflib
import json

import pytest

from adapter_fixtures import identity_job

STEPS = 4


def test_the_replay_prompts_are_none_of_the_probe_questions_and_none_asks_about_the_assistant():
    from studio.datasets.stats import IDENTITY
    from studio.probe import load_probe
    from studio.replay import load

    prompts = load().prompts
    probe = [q.prompt.lower() for q in load_probe("general").questions]
    assert len(prompts) == len(set(prompts)) >= 90
    close = {p: m for p in prompts for m in difflib.get_close_matches(p.lower(), probe, n=1, cutoff=0.75)}
    assert close == {}, "replay prompts this close to a probe question would let the probe grade its own rehearsal"
    assert not [p for p in prompts if IDENTITY.search(p) or "your name" in p.lower() or "who are you" in p.lower()]


def test_how_many_rows_a_run_gets_and_which():
    from studio.replay import FLOOR, applies, count, parse, pick

    assert count(0.5, 87, 99) == 44 and count(0.25, 200, 99) == 50    # the share of the rows
    assert count(0.25, 36, 99) == 36 and count(0.01, 3, 99) == 3    # a small set: as many as its own rows...
    assert count(0.25, 87, 99) == FLOOR == 40                        # ...up to the floor
    assert count(0.5, 10_000, 99) == 99          # a large dataset: all of them, a small share of its rows
    assert count(0.0, 87, 99) == 0 and count(0.5, 0, 99) == 0
    prompts = tuple(f"q{i}" for i in range(50))
    assert pick(prompts, 10, seed=1) == pick(prompts, 10, seed=1) != pick(prompts, 10, seed=2)
    assert len(set(pick(prompts, 80, seed=1))) == 50
    assert pick(prompts, 30, seed=1)[:10] == pick(prompts, 10, seed=1)  # answers made ahead serve any run size
    assert applies("sft", "chat") and not applies("sft", "text") and not applies("dpo", "chat")
    first, second = parse("# c\nA?\n\nB?\n"), parse("# c\nA?\nC?\n")
    assert first.prompts == ("A?", "B?") and first.version != second.version


@pytest.mark.parametrize("reply,ok", [
    ("The capital of Peru is Lima.", True),
    ("1. 1 can of tuna\n2. 1 can of tuna\n3. 1 can of tuna\n4. 1 can of tuna", False),
    ("I'm glad to help. I'm glad to help. I'm glad to help. I'm glad to help.", False),
    ("I am SmolLM, an assistant made by Hugging Face.", False),
    ("   ", False),
])
def test_greedy_loops_empty_replies_and_the_bases_own_identity_are_not_rehearsed(reply, ok):
    from studio.datasets.stats import carries_identity
    from workers.replay import usable

    assert usable(reply, carries_identity) is ok


def test_a_reply_cut_by_the_budget_ends_at_its_last_full_sentence():
    from workers.replay import trim

    assert trim("Rain forms in clouds. Drops grow until they fall. Then the wat") == \
        "Rain forms in clouds. Drops grow until they fall."
    assert trim("Paris.") == "Paris."
    assert trim("A long reply without any full stop at all") == "A long reply without any full stop at all"


def test_automatic_epochs_count_the_replay_rows_too():
    """About 360 rows' worth in all: the first-run identity set's 87 rows and 40 replay rows make 3 epochs (4
    without replay), which keeps a newcomer's first run under 3 minutes on a 2-core CPU; the 36-row acceptance set
    and its 36 replay rows make 5."""
    from studio.spec import JobSpec
    from workers.arguments import schedule

    spec = JobSpec(dataset="d", per_device_train_batch_size=4, gradient_accumulation_steps=1)
    assert schedule(spec, 87)["epochs"] == 4
    both = schedule(spec, 87 + 40)
    assert both["epochs"] == 3 and both["total_steps"] == 3 * 32
    assert schedule(spec, 36 + 36)["epochs"] == 5
    assert schedule(JobSpec(dataset="d", num_train_epochs=2), 87 + 40)["epochs"] == 2   # the user's own choice


def _job(tiny_model_dir, tmp_path, name: str, **kw):
    return identity_job(tiny_model_dir, tmp_path, name, max_steps=STEPS, **kw)


def test_an_sft_run_trains_on_the_bases_answers_cached_once_per_base(studio_home, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    from studio import db
    from studio.replay import CACHE_DIR
    from workers import forgetting, replay, train

    seen = []
    real_build = train.build_trainer

    def build(spec, kind, model, tokenizer, train_rows, *args):
        seen.append(train_rows)
        return real_build(spec, kind, model, tokenizer, train_rows, *args)

    monkeypatch.setattr(train, "build_trainer", build)
    asked = []

    def answers(model, tokenizer, prompts, max_new_tokens, base=False, **kw):
        # the tiny random model only babbles (its loops are filtered out): a stand-in base with plain answers,
        # asked as the base would be (the fresh adapter switched off)
        asked.append((list(prompts), max_new_tokens, base))
        return [f"A plain answer number {i}. Cut here" for i, _ in enumerate(prompts)]

    monkeypatch.setattr(forgetting, "generate_replies", answers)
    first = _job(tiny_model_dir, tmp_path, "replay-first", general_replay=0.25)
    assert train.run_job(first) == "completed", db.get_job(first).error
    rows = seen[-1]
    user = [r for r in rows if "Zorblax" in json.dumps(r)]
    extra = [r for r in rows if r not in user]
    assert len(user) == 32 and len(extra) == 32              # 40 rows, 8 held out; a small set: as many as its own
    prompts = set(replay.replay.load().prompts)
    assert all(r["messages"][0]["content"] in prompts and r["messages"][1]["role"] == "assistant" for r in extra)
    assert all(r["messages"][1]["content"].endswith(".") for r in extra)     # cut at the last full sentence
    assert len(asked) == 1 and asked[0][1:] == (replay.replay.MAX_NEW_TOKENS, True) and len(asked[0][0]) == 40
    log = (studio_home / "jobs" / "replay-first" / "train.log").read_text()
    assert "general replay:" in log and "mixed into 32 training rows" in log
    from studio.model_card import model_card

    assert db.get_job(first).summary["general_replay_rows"] == 32
    assert "general replay: 32 rows of the base model's own answers" in model_card(db.get_job(first))
    cached = list((studio_home / CACHE_DIR).glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["answers"]

    def no_generation(*a, **kw):
        raise AssertionError("the base answered the replay prompts again")

    monkeypatch.setattr(forgetting, "generate_replies", no_generation)
    second = _job(tiny_model_dir, tmp_path, "replay-second", general_replay=0.25)
    assert train.run_job(second) == "completed", db.get_job(second).error
    assert seen[-1] == rows                                    # same seed: the same replay rows, from the cache

    off = _job(tiny_model_dir, tmp_path, "replay-off", general_replay=0.0)
    assert train.run_job(off) == "completed", db.get_job(off).error
    assert len(seen[-1]) == 32 and "general replay:" not in (studio_home / "jobs" / "replay-off" / "train.log").read_text()
    assert db.get_job(off).summary["general_replay_rows"] == 0 and "general replay" not in model_card(db.get_job(off))


def test_general_replay_is_validated_and_shown_only_for_sft():
    from studio.method_info import METHOD_INFO
    from studio.spec import JobSpec

    assert JobSpec(dataset="d").general_replay == 0.25
    assert "general_replay" in JobSpec(dataset="d", general_replay=1.5).validate()
    assert "general_replay" in JobSpec(dataset="d", general_replay=float("nan")).validate()
    assert "general_replay" in METHOD_INFO["sft"].fields and "general_replay" not in METHOD_INFO["dpo"].fields


def test_a_worker_makes_the_replay_answers_before_any_run_and_the_first_run_uses_them(studio_home, tiny_model_dir,
                                                                                     tmp_path, monkeypatch):
    """The worker's start answers the replay prompts in the order runs take them, stops between batches once a
    run starts, and a run then asks the base only what is still missing (nothing, here)."""
    from studio import db, models
    from studio.replay import CACHE_DIR, load, order
    from studio.spec import JobSpec
    from workers import consumer, forgetting, replay, train

    asked = []

    def answers(model, tokenizer, prompts, max_new_tokens, base=False, **kw):
        asked.append(list(prompts))
        return [f"A plain answer about {p[:20]}." for p in prompts]

    monkeypatch.setattr(forgetting, "generate_replies", answers)
    spec = JobSpec(base_model=str(tiny_model_dir), load_in_4bit=False)   # the form's defaults, on this base
    prompts = order(load().prompts, spec.seed)
    assert consumer.prewarm_replay(lambda: len(asked) == 2, spec) == 2 * replay.PREWARM_BATCH   # a run started
    assert [p for batch in asked for p in batch] == prompts[:2 * replay.PREWARM_BATCH]
    assert not models.conversion_marker().exists(), "the worker line still says it is preparing"
    assert consumer.prewarm_replay(lambda: False, spec) == len(prompts)
    assert [p for batch in asked for p in batch] == prompts, "an answer was asked twice"
    cached = json.loads(next((studio_home / CACHE_DIR).glob("*.json")).read_text())["answers"]
    assert set(cached) == set(prompts)

    def no_generation(*a, **kw):
        raise AssertionError("the run asked the base for replay answers made ahead")

    monkeypatch.setattr(forgetting, "generate_replies", no_generation)
    job = identity_job(tiny_model_dir, tmp_path, "after-prewarm", max_steps=STEPS)
    assert train.run_job(job) == "completed", db.get_job(job).error
    assert db.get_job(job).summary["general_replay_rows"] > 0


def test_the_preparation_holds_still_while_a_chat_is_answered(studio_home, tiny_model_dir, monkeypatch):
    """A chat opened in the worker's first minute does not share the CPU with the replay answers made ahead: from
    the token where it arrives, no token is generated until it is answered, the header says why, and the answers
    are all made after."""
    from studio import models
    from studio.spec import JobSpec
    from workers import consumer, forgetting, replay

    events, chat = [], {"looks": 0}

    def answers(model, tokenizer, prompts, max_new_tokens, base=False, wait=None, **kw):
        batch = sum(e == "batch" for e in events)
        events.append("batch")
        for token in range(3):
            if batch == 1 and token == 1:
                chat["looks"] = 3                    # a chat arrives; it is answered after three looks
            wait()
            events.append("token")
        return [f"A plain answer about {p[:20]}." for p in prompts]

    def pause():
        if chat["looks"]:
            chat["looks"] -= 1
            events.append("chat: " + json.loads(models.conversion_marker().read_text())["what"])
            return True
        return False

    monkeypatch.setattr(forgetting, "generate_replies", answers)
    monkeypatch.setattr(consumer, "PAUSE_POLL_SECONDS", 0.01)
    spec = JobSpec(base_model=str(tiny_model_dir), load_in_4bit=False)
    assert consumer.prewarm_replay(lambda: False, spec, pause=pause) == len(replay_prompts())
    first_chat = next(i for i, e in enumerate(events) if e.startswith("chat"))
    assert events[first_chat - 2:first_chat] == ["batch", "token"] and events[:first_chat].count("batch") == 2
    assert all(e.startswith("chat: ") and e.endswith(f"{replay.PREWARM_BATCH} of 99, paused while a chat is answered")
               for e in events[first_chat + 1:first_chat + 3]), events[first_chat:first_chat + 3]   # after the first look
    assert events[first_chat + 3] == "token", "a token was made while the chat was being answered"
    assert events.count("batch") == -(-len(replay_prompts()) // replay.PREWARM_BATCH)
    assert sum(e.startswith("chat") for e in events) == 3


def test_waiting_between_tokens_changes_no_reply(tiny_model_dir):
    """The hold is a step of generation that changes nothing: the same greedy replies, one look per token."""
    from workers.inference.chat_engine import ChatEngine
    from workers.forgetting import generate_replies

    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))
    model, tokenizer = engine.model, engine.tokenizer
    prompts = ["Name a colour.", "Count to three, please."]
    looks = []
    held = generate_replies(model, tokenizer, prompts, 6, wait=lambda: looks.append(1))
    assert held == generate_replies(model, tokenizer, prompts, 6) and 6 <= len(looks) <= 2 * 6


def replay_prompts():
    from studio.replay import load

    return load().prompts


def test_a_request_counts_as_served_until_its_reply_is_done_or_dropped():
    """The worker's server marks a chat busy from its first piece to its last (or until the client leaves)."""
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import FairLock
    from workers.inference.engine import SERVING, InferenceEngine, Reply
    from workers.inference.names import Target

    class Stream:
        def __init__(self):
            self.closed = False

        def __iter__(self):
            yield from ("Hel", "Hello", "Hello there")

        def close(self):
            self.closed = True

    class Base:
        lock = FairLock()

        def encode(self, messages, adapter):
            return [1, 2, 3]

        def context_length(self):
            return 100

        def stream(self, messages, adapter, settings, ids, counted):
            return Stream()

    engine = InferenceEngine(budget_bytes=1)
    engine.prepare = lambda target: (Base(), None)
    settings = GenerationSettings()
    pieces = engine.generate(Target(model="b", base="b", adapter=None), [{"role": "user", "content": "hi"}], settings,
                             reply=Reply())
    assert not SERVING.busy()
    assert next(pieces) == "Hel" and SERVING.busy()
    assert "".join(pieces) == "lo there" and not SERVING.busy()
    dropped = engine.generate(Target(model="b", base="b", adapter=None), [{"role": "user", "content": "hi"}], settings)
    next(dropped)
    assert SERVING.busy()
    dropped.close()                          # the client went away mid-reply
    assert not SERVING.busy()


def test_the_worker_prepares_until_a_job_starts_executing_and_never_dies_of_it(studio_home, monkeypatch, caplog):
    """The worker's start converts the bundled model, then makes replay answers until huey starts executing a job
    (the minutely lost-job sweep does not count); a failure there is a warning, and the worker goes on."""
    import logging

    from huey.signals import SIGNAL_EXECUTING

    from studio import settings
    from workers import consumer
    from workers.queue import huey
    from workers.tasks import find_lost_jobs, train_job

    stops = []

    pauses = []

    def prewarm(stop, spec=None, pause=None):
        stops.append(stop)
        pauses.append(pause)
        return 7

    monkeypatch.setattr("workers.bundled.ensure_bundled", lambda: None)
    monkeypatch.setattr(consumer, "prewarm_replay", prewarm)
    monkeypatch.setattr(consumer, "WORK_STARTED", consumer.threading.Event())
    monkeypatch.setenv("STUDIO_REPLAY_AHEAD", "on")      # the product's default (the suite turns it off)
    settings.reset_settings()
    caplog.set_level(logging.INFO, "studio.worker")
    huey.signal(SIGNAL_EXECUTING)(consumer.note_work)
    try:
        consumer.prepare_bundled_model()
        assert "worker prepared" in caplog.text and "7 general-replay answers made ahead" in caplog.text
        stop = stops[-1]
        from workers.inference.engine import SERVING

        assert not pauses[-1]()
        with SERVING:
            assert pauses[-1](), "the preparation would go on beside a chat the worker's server is answering"
        huey._emit(SIGNAL_EXECUTING, find_lost_jobs.s())
        assert not stop(), "the minutely sweep stopped the preparation"
        huey._emit(SIGNAL_EXECUTING, train_job.s("some-job"))
        assert stop(), "a job started and the preparation went on competing with it"
    finally:
        huey.disconnect_signal(consumer.note_work, SIGNAL_EXECUTING)
    stops.clear()
    consumer.prepare_bundled_model()                   # a job runs already: nothing is made ahead
    assert stops == [] and "0 general-replay answers made ahead" in caplog.text
    monkeypatch.setattr(consumer, "prewarm_replay", lambda stop, spec=None, pause=None: 1 / 0)
    consumer.WORK_STARTED.clear()
    caplog.clear()
    consumer.prepare_bundled_model()
    assert "failed; runs make their own" in caplog.text and "worker prepared" in caplog.text
    monkeypatch.setenv("STUDIO_REPLAY_AHEAD", "off")     # a deployment's choice: the runs make their own
    settings.reset_settings()
    caplog.clear()
    consumer.prepare_bundled_model()                   # prewarm would fail again: it is not called
    assert "worker prepared" in caplog.text and "failed" not in caplog.text
    monkeypatch.setenv("STUDIO_REPLAY_AHEAD", "sometimes")
    with pytest.raises(ValueError, match="STUDIO_REPLAY_AHEAD must be on or off"):
        settings.load_settings()
