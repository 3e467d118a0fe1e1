"""A run's system-prompt choice (keep / replace / omit) follows its adapter everywhere it answers: the Chat
tab's engine, the inference server and the golden prompts during training. Rendered prompts on the tiny model."""
from __future__ import annotations

import pytest

import identity_data
from adapter_fixtures import make_checkpoint, make_job

DEFAULT = "You are a helpful assistant."  # the tiny model's template default
QUESTION = [{"role": "user", "content": identity_data.HELD_OUT[0]}]


@pytest.fixture
def engine(tiny_model_dir):
    from workers.inference.chat_engine import ChatEngine

    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))
    return engine


def _prompt(engine, adapter, messages=QUESTION) -> str:
    from studio.render import render_text

    return render_text(engine.tokenizer, engine.conversation(messages, adapter), generation_prompt=True)


def test_a_run_trained_without_the_default_system_prompt_is_chatted_without_it(tiny_model_dir, studio_home, engine):
    from studio import adapter_library

    omitted = make_job(tiny_model_dir, "omitted", system_prompt_mode="omit")
    replaced = make_job(tiny_model_dir, "replaced", seed=2, system_prompt_mode="replace",
                        system_prompt=f"You are {identity_data.NAME}.")
    kept = make_job(tiny_model_dir, "kept", seed=3)
    checkpoint = make_checkpoint(omitted, tiny_model_dir, 4)
    for ref in (omitted.id, replaced.id, kept.id, f"{omitted.id}/checkpoint-4"):
        found = adapter_library.resolve(ref)
        engine.ensure_adapter(found.key, found.folder)
    key = {name: adapter_library.resolve(ref).key for name, ref in
           (("omit", omitted.id), ("replace", replaced.id), ("keep", kept.id),
            ("checkpoint", f"{omitted.id}/checkpoint-4"))}
    assert adapter_library.resolve(f"{omitted.id}/checkpoint-4").folder == checkpoint

    assert DEFAULT in _prompt(engine, None)  # the base answers as its template writes it
    assert DEFAULT in _prompt(engine, key["keep"])
    for which in ("omit", "checkpoint"):
        text = _prompt(engine, key[which])
        assert DEFAULT not in text and text.startswith("<|im_start|>system\n<|im_end|>")
    replaced_text = _prompt(engine, key["replace"])
    assert f"You are {identity_data.NAME}." in replaced_text and DEFAULT not in replaced_text
    own = [{"role": "system", "content": "Answer in French."}, *QUESTION]  # the user's own system prompt wins
    assert _prompt(engine, key["omit"], own) == _prompt(engine, None, own)


def test_an_imported_adapter_and_a_gone_run_keep_the_template_default(tiny_model_dir, studio_home, tmp_path):
    from adapter_fixtures import make_adapter
    from studio.chat import trained_system_prompt

    assert trained_system_prompt(make_adapter(tiny_model_dir, tmp_path / "elsewhere")) == ("keep", "")
    job = make_job(tiny_model_dir, "soon-gone", system_prompt_mode="omit")
    from studio.settings import get_settings

    folder = get_settings().resolve(job.adapter_path)
    assert trained_system_prompt(folder) == ("omit", "")
    from studio import db

    with db.session() as s:
        s.delete(s.get(db.Job, job.id))
        s.commit()
    assert trained_system_prompt(folder) == ("keep", "")

    from studio.spec import JobSpec

    named = db.Job(name="named", spec_json=JobSpec(dataset="d", system_prompt_mode="omit").to_json(),
                   output_dir="jobs/named-folder")  # a run folder not named after the job's id
    with db.session() as s:
        s.add(named)
        s.commit()
    assert trained_system_prompt(get_settings().resolve("jobs/named-folder/adapter")) == ("omit", "")


def test_the_inference_server_asks_a_runs_adapter_as_it_was_trained(tiny_model_dir, studio_home):
    from studio.chat import GenerationSettings
    from studio.render import render_text, default_system_prompt, with_system_prompt
    from workers.inference.engine import InferenceEngine, Reply
    from workers.inference.names import resolve_target

    job = make_job(tiny_model_dir, "served-omit", system_prompt_mode="omit")
    server = InferenceEngine(budget_bytes=10**10)
    settings = GenerationSettings(max_new_tokens=2, temperature=0.0)
    counted = {}
    for model in (job.name, str(tiny_model_dir)):
        reply = Reply()
        list(server.generate(resolve_target(model), QUESTION, settings, reply=reply))
        counted[model] = reply.prompt_tokens
    tok = server.chat_engine(str(tiny_model_dir)).tokenizer

    def tokens(messages):
        return len(tok(render_text(tok, messages, generation_prompt=True), add_special_tokens=False)["input_ids"])

    omitted = with_system_prompt(QUESTION, "omit", "", default_system_prompt(tok))
    assert counted[job.name] == tokens(omitted) < counted[str(tiny_model_dir)] == tokens(QUESTION)


def test_golden_prompts_are_asked_as_the_run_trained_and_the_bases_answers_are_reused(tiny_model_dir, studio_home,
                                                                                       tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio import render
    from workers import golden

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rendered: list[str] = []
    original = render.render_text

    def spy(tokenizer, messages, *args, **kwargs):
        text = original(tokenizer, messages, *args, **kwargs)
        if kwargs.get("generation_prompt"):  # a prompt being answered (not the default's detection)
            rendered.append(text)
        return text

    monkeypatch.setattr(render, "render_text", spy)
    prompts = ["What is your name?", "Who made you?", "Hi"]
    one_by_one = [golden.answer_golden(model, tok, [p], max_new_tokens=4) for p in prompts]
    batched = golden.answer_golden(model, tok, prompts, max_new_tokens=4)
    assert batched == [r[0] for r in one_by_one]  # one left-padded batch answers as each prompt alone
    assert all(DEFAULT in text for text in rendered)
    rendered.clear()
    golden.answer_golden(model, tok, prompts, max_new_tokens=4, system=("omit", ""))
    assert rendered and not any(DEFAULT in text for text in rendered)

    calls = []
    answer = golden.answer_golden
    monkeypatch.setattr(golden, "answer_golden", lambda *a, **k: calls.append(k) or answer(*a, **k))
    for run in ("first", "second"):
        callback = golden.GoldenPromptsCallback(run, prompts, tok, max_new_tokens=4, output_dir=tmp_path / run,
                                                system=("omit", ""), base=f"{tiny_model_dir} full")
        callback._answer(model, "base")
        callback._answer(model, 2)
    assert [c.get("disable_adapter", False) for c in calls] == [True, False, False]  # the base answered once
    assert [c.get("system") for c in calls[1:]] == [("omit", ""), ("omit", "")]
    import json

    base = [json.loads((tmp_path / run / "base.json").read_text())["replies"] for run in ("first", "second")]
    assert base[0] == base[1] and len(base[0]) == len(prompts)
