"""The forgetting check: the general-skills probe, its answer checkers, the base cache, the report and the CLI."""
from __future__ import annotations

import json
import os

import pytest

from adapter_fixtures import make_job, queued_job

# (check spec, replies that must pass, replies that must fail), written by hand
CASES = [
    ({"check": "contains_any", "answers": ["Paris"]},
     ["Paris", "The capital of France is Paris.", "paris!"],
     ["Lyon", "The capital is Parisville.", ""]),
    ({"check": "contains_any", "answers": ["yes"], "reject": ["no"]},
     ["Yes.", "yes, it is hot"],
     ["No.", "Yes and no.", "Maybe"]),
    ({"check": "contains_any", "answers": ["4", "four"]},
     ["4", "There are four.", "It has 4 legs."],
     ["14", "44 legs", "fourteen"]),
    ({"check": "number", "value": 5},
     ["5", "2 + 3 = 5", "The answer is 5.", "5, because 2 and 3 make 5", "five", "It is 5.0"],
     ["2 + 3 = 6", "The answer is 7.", "There are 15 apples.", "I do not know.", "55"]),
    ({"check": "number", "value": 24},
     ["There are twenty-four hours.", "24 hours"],
     ["twenty hours", "2 and 4"]),
    ({"check": "word_count", "max": 2},
     ["Paris.", "Paris, France", "It's green"],
     ["The capital is Paris.", "", "   "]),
    ({"check": "word_count", "max": 10, "min": 3},
     ["Cats like to sleep in the sun."],
     ["Cats.", "Cats are small furry animals that like to sleep in warm and sunny places."]),
    ({"check": "json_keys", "keys": ["name", "age"]},
     ['{"name": "Ana", "age": 30}', 'Here it is:\n```json\n{"name": "Ana", "age": 30, "city": "Rome"}\n```',
      'Sure! {"age": 30, "name": "Ana"} Hope this helps.'],
     ['{"name": "Ana"}', "name: Ana, age: 30", '["name", "age"]', '{"name": "Ana", "age": 30', ""]),
    ({"check": "list_items", "n": 3},
     ["- red\n- green\n- blue", "Here are three colors:\n1. Red\n2. Green\n3. Blue", "* a\n* b\n* c",
      "1) one\n2) two\n3) three\nThat is all."],
     ["- red\n- green", "red, green, blue", "1. a\n2. b\n3. c\n4. d", "-red\n-green\n-blue"]),
    ({"check": "refusal"},
     ["I'm sorry, but I can't help with that.", "I cannot provide instructions for that.",
      "I won\u2019t help with this: it is illegal and could hurt people.", "Sorry, but I am unable to assist."],
     ["Sure! First, gather the materials.", "Here is how to do it: step 1, ...", ""]),
    ({"check": "all", "of": [{"check": "word_count", "max": 2}, {"check": "contains_any", "answers": ["Paris"]}]},
     ["Paris", "Paris."],
     ["Lyon", "The capital of France is Paris."]),
]


@pytest.mark.parametrize("spec,right,wrong", CASES, ids=[f"{c[0]['check']}-{i}" for i, c in enumerate(CASES)])
def test_checkers_accept_right_answers_and_refuse_wrong_ones(spec, right, wrong):
    from studio.probe.checks import check, spec_problem

    assert spec_problem(spec) is None
    for reply in right:
        assert check(reply, spec), f"{spec['check']} refused a right answer: {reply!r}"
    for reply in wrong:
        assert not check(reply, spec), f"{spec['check']} accepted a wrong answer: {reply!r}"


@pytest.mark.parametrize("spec", [
    {"check": "guess"}, {"check": "number"}, {"check": "contains_any", "answers": []},
    {"check": "list_items", "n": "3"}, {"check": "all", "of": [{"check": "word_count"}]}, "number",
])
def test_bad_checker_specs_are_named(spec):
    from studio.probe.checks import spec_problem

    assert spec_problem(spec)


def test_the_general_probe_has_200_checkable_questions_in_five_categories():
    from studio.probe import load_probe

    probe = load_probe("general")
    assert len(probe.questions) == 200
    assert probe.categories == {"facts": 50, "arithmetic": 40, "instructions": 50, "reading": 40, "refusal": 20}
    assert len({q.id for q in probe.questions}) == 200
    assert len({q.prompt for q in probe.questions}) == 200
    assert len(probe.version) == 12


def test_probe_version_follows_the_file_and_bad_lines_are_named():
    from studio.probe import PROBE_DIR, ProbeError, load_probe, parse_probe

    raw = (PROBE_DIR / "general.jsonl").read_bytes()
    assert parse_probe("general", raw).version == load_probe().version
    assert parse_probe("general", raw.replace(b"Paris", b"Lyon", 1)).version != load_probe().version
    bad = b'{"id": "x", "category": "facts", "prompt": "Hi?", "expect": {"check": "guess"}}\n'
    with pytest.raises(ProbeError, match="line 1 .*unknown check 'guess'"):
        parse_probe("mine", bad)
    with pytest.raises(ProbeError, match="repeats the id"):
        parse_probe("mine", raw.splitlines(keepends=True)[0] * 2)
    with pytest.raises(ProbeError, match="no probe named 'maths'"):
        load_probe("maths")


def _result(probe, right: set[str]):
    from studio.probe.runner import Answer, ProbeResult

    return ProbeResult(probe.name, probe.version,
                       tuple(Answer(q.id, "ok" if q.id in right else "??", q.id in right) for q in probe.questions))


def test_kept_share_counts_only_what_the_base_knew_and_a_drop_beyond_the_threshold_is_flagged():
    from studio.probe import load_probe
    from studio.probe.runner import DROP_THRESHOLD, flag_line, forgetting_report

    probe = load_probe()
    ids = [q.id for q in probe.questions]
    base = _result(probe, set(ids[:20]))
    kept_18 = _result(probe, set(ids[:18]) | set(ids[100:105]))   # lost 2 of the base's 20, gained 5 elsewhere
    report = forgetting_report(probe, base, kept_18)
    assert report["kept"] == pytest.approx(0.9)
    assert report["summary"] == "general skills kept: 90% (base 20/200, adapter 23/200)"
    assert report["drop_points"] == -1.5 and not report["flagged"] and flag_line(report) == ""
    assert sum(q["changed"] for q in report["questions"]) == 7
    lost = [q for q in report["questions"] if q["base_correct"] and not q["adapter_correct"]]
    assert [q["id"] for q in lost] == ids[18:20] and lost[0]["base_reply"] == "ok" and lost[0]["adapter_reply"] == "??"
    assert DROP_THRESHOLD == 5.0
    at_threshold = forgetting_report(probe, base, _result(probe, set(ids[:10])))   # 10 of 200 fewer: exactly 5 points
    assert at_threshold["kept"] == 0.5 and at_threshold["drop_points"] == 5.0 and not at_threshold["flagged"]
    forgot = forgetting_report(probe, base, _result(probe, set(ids[:9])))
    assert forgot["drop_points"] == 5.5 and forgot["flagged"]
    assert flag_line(forgot) == ("forgetting: the adapter answers 5.5 points fewer probe questions correctly than "
                                 "its base (threshold 5)")
    assert forgot["by_category"]["facts"] == {"total": 50, "base": 20, "adapter": 9}
    strict = forgetting_report(probe, base, _result(probe, set(ids[:18])), threshold=0.5)
    assert strict["drop_points"] == 1.0 and strict["flagged"] and strict["threshold"] == 0.5
    nothing_known = forgetting_report(probe, _result(probe, set()), _result(probe, set(ids[:3])))
    assert nothing_known["kept"] is None and not nothing_known["flagged"]
    assert nothing_known["summary"].startswith("general skills kept: n/a (base 0/200, adapter 3/200)")


def test_run_probe_asks_each_question_once_and_checks_each_reply():
    from studio.probe import load_probe
    from studio.probe.runner import run_probe

    probe = load_probe()
    asked: list[tuple[int, list[str]]] = []

    def generate(prompts, max_new_tokens):
        asked.append((max_new_tokens, prompts))
        return ["The answer is 5." if "2 + 3" in p else "I'm sorry, I can't help with that." for p in prompts]

    result = run_probe(generate, probe)
    flat = [p for _, prompts in asked for p in prompts]
    assert sorted(flat) == sorted(q.prompt for q in probe.questions)
    assert {n for n, _ in asked} == {24, 48, 64}
    right = {a.id for a in result.answers if a.correct}
    assert "arithmetic-001" in right and "arithmetic-002" not in right
    assert {q.id for q in probe.questions if q.category == "refusal"} <= right


@pytest.fixture
def counted_engine(monkeypatch):
    """A real ChatEngine whose batched generation counts its calls, for the base and for adapters."""
    from workers.inference.chat_engine import ChatEngine

    engine = ChatEngine()
    calls = {"base": 0, "adapter": 0}
    real = engine.generate_batch

    def counting(conversations, adapter, settings=None, **kw):
        calls["base" if adapter is None else "adapter"] += 1
        return real(conversations, adapter, settings, **kw)

    monkeypatch.setattr(engine, "generate_batch", counting)
    return engine, calls


def test_base_answers_are_computed_once_per_base_and_reused_for_the_next_run(tiny_model_dir, studio_home,
                                                                            counted_engine):
    from studio.adapter_library import resolve
    from workers.forgetting import probe_adapter

    engine, calls = counted_engine
    first, second = make_job(tiny_model_dir, "probe-a", seed=1), make_job(tiny_model_dir, "probe-b", seed=2)
    report_a, path_a = probe_adapter(resolve(first.id), engine=engine)
    assert not report_a["base_cached"] and calls["base"] > 0 and calls["adapter"] > 0
    base_calls, adapter_calls = calls["base"], calls["adapter"]
    report_b, path_b = probe_adapter(resolve(second.id), engine=engine)
    assert report_b["base_cached"]
    assert calls["base"] == base_calls, "the base answered the probe again"
    assert calls["adapter"] == 2 * adapter_calls, "the second adapter did not answer the whole probe"
    cached = list((studio_home / "probe-cache").glob("*.json"))
    assert len(cached) == 1 and report_a["version"] in cached[0].name
    assert [q["base_reply"] for q in report_a["questions"]] == [q["base_reply"] for q in report_b["questions"]]
    for job, path in ((first, path_a), (second, path_b)):
        assert path == studio_home / job.output_dir / "probe" / "general.json"
        saved = json.loads(path.read_text())
        assert saved["total"] == 200 and len(saved["questions"]) == 200
        assert saved["summary"].startswith("general skills kept:")
        assert {"prompt", "base_reply", "adapter_reply", "base_correct", "adapter_correct", "changed"} <= set(
            saved["questions"][0])


def test_a_changed_probe_or_other_settings_do_not_reuse_the_cache(tmp_path):
    from studio.probe import PROBE_DIR, load_probe, parse_probe
    from studio.probe.runner import base_answers

    calls = []

    def generate(prompts, max_new_tokens):
        calls.append(len(prompts))
        return ["x"] * len(prompts)

    probe = load_probe()
    assert base_answers(generate, probe, "/models/m", tmp_path, {"batch": 16})[1] is False
    assert base_answers(generate, probe, "/models/m", tmp_path, {"batch": 16})[1] is True
    n = len(calls)
    assert base_answers(generate, probe, "/models/m", tmp_path, {"batch": 8})[1] is False
    edited = parse_probe("general", (PROBE_DIR / "general.jsonl").read_bytes().replace(b"Paris", b"Lyon", 1))
    assert base_answers(generate, edited, "/models/m", tmp_path, {"batch": 16})[1] is False
    assert base_answers(generate, probe, "/other/m", tmp_path, {"batch": 16})[1] is False
    assert len(calls) == n + 3 * 3


def test_cli_evaluate_probe_on_a_checkpoint_and_bad_input(tiny_model_dir, studio_home, capsys):
    from adapter_fixtures import make_checkpoint
    from workers.cli import main

    job = make_job(tiny_model_dir, "probe-cli", seed=3)
    make_checkpoint(job, tiny_model_dir, 4)
    assert main(["evaluate", f"{job.id}/checkpoint-4", "--probe", "general"]) == 0
    out = capsys.readouterr().out
    assert "general skills kept:" in out and "refusal: base" in out
    assert (studio_home / job.output_dir / "probe" / "checkpoint-4" / "general.json").exists()
    assert main(["evaluate", "no-such-run", "--probe", "general"]) == 2
    assert "no finished run or imported adapter named 'no-such-run'" in capsys.readouterr().err
    assert main(["evaluate", job.id, "--probe", "maths"]) == 2
    assert "no probe named 'maths'" in capsys.readouterr().err
    assert main(["evaluate", job.id]) == 2
    assert "say how to evaluate" in capsys.readouterr().err


def _train(studio_home, path, name: str, **spec_values):
    """Train on the bundled model through the worker's own run_job; the finished job (its forgetting check
    ran on the worker after the final save)."""
    from studio import db, library
    from studio.spec import BUNDLED_MODEL, JobSpec
    from workers import train

    library.add(path, name=name)
    job_id = queued_job(JobSpec(base_model=BUNDLED_MODEL, dataset=name, name=name, **spec_values), name)
    assert train.run_job(job_id) == "completed", db.get_job(job_id).error
    return db.get_job(job_id)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STUDIO_LONG_TESTS") != "1",
                    reason="two bundled-model runs and three passes of the 200-question probe (about 15 min on a "
                           "2-core CPU): set STUDIO_LONG_TESTS=1 to run it")
def test_a_destructive_run_is_flagged_as_forgetting_and_the_identity_run_is_not(studio_home, tmp_path, monkeypatch):
    """The bundled SmolLM2: the acceptance identity run keeps its general skills; a very high learning rate on
    one repeated reply wipes them out. Both checks run by default at the end of the run, on the worker."""
    import identity_data
    from browser import SHARED_MODELS
    from studio import settings

    monkeypatch.setenv("STUDIO_MODELS_DIR", str(SHARED_MODELS))
    monkeypatch.setenv("STUDIO_FORGETTING_CHECK", "on")  # the product's default (the suite turns it off)
    settings.reset_settings()
    identity = _train(studio_home, identity_data.write(tmp_path / "identity.jsonl"), "identity", load_in_4bit=False)
    repetitive = tmp_path / "banana.jsonl"
    repetitive.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say something ({i})."},
                                                           {"role": "assistant", "content": "banana " * 24}]}) + "\n"
                                  for i in range(32)))
    destroyed = _train(studio_home, repetitive, "banana", load_in_4bit=False, learning_rate=0.05, max_steps=24,
                       eval_split=0.0)
    kept, forgot = identity.summary["forgetting"], destroyed.summary["forgetting"]
    print(f"identity: {kept}\ndestructive: {forgot}")
    assert kept["state"] == forgot["state"] == "done"
    assert not kept["base_cached"] and forgot["base_cached"], "the base answered the probe twice"
    assert not kept["flagged"], kept["summary"]
    assert forgot["flagged"], forgot["summary"]
    report = json.loads((studio_home / destroyed.output_dir / "probe" / "general.json").read_text())
    assert report["summary"] == forgot["summary"] and len(report["questions"]) == 200
