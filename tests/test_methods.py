"""Training methods as plug-ins: the registry's validation sentences, GRPO's reward functions, and on the
tiny model each new method (KTO, ORPO, GRPO, SimPO) trains, checkpoints, resumes and reports its own metrics."""
import json
import shutil

import pytest

from studio.method_info import METHOD_FIELDS, METHOD_INFO
from studio.rewards import answer_reward, boxed, format_reward, last_number, length_reward, reward_errors
from studio.spec import JobSpec


# ---- the registry, torch-free ------------------------------------------------------------------------

@pytest.mark.parametrize("method,kind,needs", [
    ("kto", "preference", "KTO needs an unpaired preference dataset"),
    ("orpo", "chat", "ORPO needs a preference dataset"),
    ("grpo", "unpaired_preference", "GRPO needs a prompt-only dataset"),
    ("sft", "prompt_only", "SFT needs conversations or text"),
    ("dpo", "prompt_only", "DPO needs a preference dataset"),
    ("simpo", "unpaired_preference", "SimPO needs a preference dataset"),
])
def test_a_dataset_of_the_wrong_kind_is_refused_naming_the_kind_needed(method, kind, needs):
    spec = JobSpec(dataset="data", method=method, reward_format_regex="<answer>", per_device_train_batch_size=4)
    errors = spec.validate(dataset_kind=kind)
    assert list(errors) == ["method"], errors
    assert errors["method"].startswith(needs), errors
    assert f"'data' holds {kind.replace('_', ' ')} rows" in errors["method"]


@pytest.mark.parametrize("method,kind", [("sft", "chat"), ("sft", "unpaired_preference"), ("dpo", "preference"),
                                         ("kto", "unpaired_preference"), ("orpo", "preference"),
                                         ("grpo", "prompt_only"), ("simpo", "preference")])
def test_each_method_accepts_its_dataset_kinds(method, kind):
    spec = JobSpec(dataset="data", method=method, reward_answer="answer_tag", per_device_train_batch_size=4)
    assert spec.validate(dataset_kind=kind) == {}


def test_the_methods_own_rules_are_refused_in_one_sentence():
    assert JobSpec(dataset="d", method="kto", per_device_train_batch_size=1).validate() == {
        "per_device_train_batch_size": "KTO needs a batch size of at least 2: it estimates its KL term from the "
                                       "other rows of the batch"}
    errors = JobSpec(dataset="d", method="grpo", reward_answer="boxed", per_device_train_batch_size=6,
                     num_generations=4).validate()
    assert errors == {"num_generations": "batch size x gradient accumulation (6) must be a multiple of the number of "
                                         "generations (4): every prompt's completions are scored together"}
    assert "at least one reward" in JobSpec(dataset="d", method="grpo").validate()["reward_answer"]
    bad = JobSpec(dataset="d", method="grpo", reward_format_regex="<answer>(").validate()
    assert bad["reward_format_regex"].startswith("the format pattern is not a valid regular expression")
    assert JobSpec(dataset="d", method="orpo", beta=0).validate()["beta"].startswith("ORPO beta must be")


def test_simpo_is_trls_cpo_trainer_with_the_simpo_loss_and_no_sft_term(tmp_path):
    from workers.methods import TRAINERS

    config = TRAINERS["simpo"].config(JobSpec(dataset="d", method="simpo", beta=2.5, max_length=256), tmp_path, 12,
                                      False, "cpu")
    assert type(config).__name__ == "CPOConfig" and config.loss_type == "simpo" and config.cpo_alpha == 0.0
    assert config.beta == 2.5 and config.max_length == 256
    assert JobSpec(dataset="d", method="simpo", beta=0).validate()["beta"].startswith("SimPO beta must be")


def test_every_method_field_is_a_spec_field_and_round_trips_through_yaml():
    names = {f for f in JobSpec().to_dict()}
    assert set(METHOD_FIELDS) <= names
    spec = JobSpec(dataset="d", method="grpo", num_generations=8, max_completion_length=64, reward_answer="boxed",
                   reward_format_regex=r"\\boxed\{.*\}", reward_length_target=50, reward_length_weight=0.5)
    assert JobSpec.from_yaml(spec.to_yaml()) == spec


def test_every_method_metric_has_a_chart_label():
    from studio.charts import METRICS, PANEL_COLOURS

    for info in METHOD_INFO.values():
        for key in info.metrics:
            assert key in METRICS and key in PANEL_COLOURS, key


# ---- rewards -------------------------------------------------------------------------------------------

def test_answer_extractors_find_the_final_answer():
    assert last_number("3 apples and 4 pears make 7") == "7"
    assert last_number("about 1,250.5 grams, not -3") == "-3"
    assert last_number("no digits") is None
    assert boxed(r"so \boxed{\frac{1}{2}} and done") == r"\frac{1}{2}"
    assert boxed(r"\boxed{unclosed") is None


def test_answer_reward_compares_with_the_reference_column():
    tag = answer_reward("answer_tag")
    completions = [[{"role": "assistant", "content": "<answer>Zorblax</answer>"}],
                   [{"role": "assistant", "content": "<answer> zorblax </answer>"}],
                   [{"role": "assistant", "content": "Zorblax"}]]
    assert tag(completions=completions, answer=["Zorblax"] * 3) == [1.0, 1.0, 0.0]
    assert answer_reward("last_number")(completions=["it is 42.0", "41"], answer=["42", "42"]) == [1.0, 0.0]
    assert tag.__name__ == "answer_answer_tag"


def test_format_and_length_rewards():
    assert format_reward(r"^<answer>.*</answer>$")(completions=["<answer>x</answer>", "x"]) == [1.0, 0.0]
    length = length_reward(10)
    assert length(completions=["", "", ""], completion_ids=[[0] * 10, [0] * 5, [0] * 25]) == [1.0, 0.5, 0.0]


def test_reward_errors_name_the_field():
    assert reward_errors(JobSpec(method="grpo", reward_length_target=20)) == {}
    assert list(reward_errors(JobSpec(method="grpo", reward_format_regex="[a-"))) == ["reward_format_regex"]


# ---- the memory estimate -------------------------------------------------------------------------------

def test_each_method_adds_its_own_memory_terms():
    from studio import memory
    from studio.spec import BUNDLED_MODEL
    from studio.catalog import config_for

    config = config_for(BUNDLED_MODEL)
    base = dict(dataset="d", load_in_4bit=False, per_device_train_batch_size=4, max_length=256)
    est = {m: memory.estimate_for_spec(JobSpec(method=m, reward_answer="boxed", **base), config, "cpu")
           for m in METHOD_INFO}
    assert est["dpo"].breakdown["logits"] == pytest.approx(2 * est["sft"].breakdown["logits"])
    assert est["orpo"].breakdown["logits"] == est["simpo"].breakdown["logits"] == est["dpo"].breakdown["logits"]
    assert est["kto"].total_gb == pytest.approx(est["sft"].total_gb)
    assert memory.GENERATION_TERM in est["grpo"].breakdown and est["grpo"].total_gb > est["sft"].total_gb


# ---- training on the tiny model ----------------------------------------------------------------------

def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _unpaired(path, n=16):
    rows = []
    for i in range(n):
        rows.append({"prompt": f"Question {i}: what is your name?", "completion": "My name is Zorblax.", "label": True})
        rows.append({"prompt": f"Question {i}: what is your name?",
                     "completion": f"I am a generic assistant number {i}.", "label": False})
    return _write(path, rows)


def _pairs(path, n=12):
    return _write(path, [{"prompt": f"Question {i}: what is your name?", "chosen": "My name is Zorblax.",
                          "rejected": f"I am a generic assistant number {i}."} for i in range(n)])


def _prompts(path, n=8):
    return _write(path, [{"prompt": f"Question {i}: say the name inside answer tags.", "answer": "Zorblax"}
                         for i in range(n)])


DATA = {"kto": ("unpaired_preference", _unpaired), "orpo": ("preference", _pairs), "grpo": ("prompt_only", _prompts),
        "simpo": ("preference", _pairs)}
METHOD_ARGS = {"kto": {}, "orpo": {}, "simpo": {"beta": 2.0},
               "grpo": dict(num_generations=4, max_completion_length=12, reward_answer="answer_tag",
                            reward_format_regex="<answer>", reward_length_target=6, beta=0.05)}


def _job(studio_home, tmp_path, base_model, method, name, **kw):
    from studio import db, library

    kind, write = DATA[method]
    rec, _ = library.add(write(tmp_path / f"{method}.jsonl"), name=f"{method}-data")
    assert rec.kind == kind
    spec = JobSpec(base_model=str(base_model), dataset=f"{method}-data", method=method, r=8, lora_alpha=16,
                   per_device_train_batch_size=4, eval_split=0.0, max_length=128, lora_dropout=0.0,
                   **{**METHOD_ARGS[method], **kw})
    assert spec.validate(dataset_kind=kind) == {}
    job = db.Job(name=name, spec_json=spec.to_json(), output_dir=f"jobs/{name}")
    with db.session() as s:
        s.add(job)
        s.commit()
    return job


@pytest.mark.parametrize("method", ["kto", "orpo", "grpo", "simpo"])
def test_each_method_trains_checkpoints_resumes_and_reports_its_metrics(studio_home, tmp_path, tiny_model_dir,
                                                                        method):
    from studio import charts, db
    from workers import train

    job = _job(studio_home, tmp_path, tiny_model_dir, method, method, load_in_4bit=False, learning_rate=5e-3,
               max_steps=4, save_steps=2, golden_prompts=["What is your name?"])
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    out = studio_home / "jobs" / method
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    wanted = METHOD_INFO[method].metrics
    rows = db.metric_rows(job.id)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in wanted[:2]:
        assert all(r.get(key) is not None for r in rows), (key, rows)
    drawn = {d["name"] for d in charts.run_figure(rows).to_dict()["data"]}
    assert {charts.METRICS[k][0] for k in wanted[:2]} <= drawn

    # resume from the step-2 checkpoint: steps 3 and 4 are trained again and logged once each
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "adapter")
    db.set_status(job.id, "queued", "resume requested", error=None, finished_at=None)
    assert train.run_job(job.id, resume=True) == "completed", db.get_job(job.id).error
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [r["step"] for r in db.metric_rows(job.id)] == [1, 2, 3, 4]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert list((out / "golden").glob("*")), "golden prompts were answered"


def test_grpo_answer_reward_needs_the_answer_column(studio_home, tmp_path, tiny_model_dir):
    from studio import db, library
    from workers import train

    library.add(_write(tmp_path / "bare.jsonl", [{"prompt": f"Say hi {i}"} for i in range(4)]), name="bare")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="bare", method="grpo", load_in_4bit=False,
                   reward_answer="last_number", max_steps=1, eval_split=0.0)
    job = db.Job(name="bare", spec_json=spec.to_json(), output_dir="jobs/bare")
    with db.session() as s:
        s.add(job)
        s.commit()
    assert train.run_job(job.id) == "failed"
    assert db.get_job(job.id).error == ("The answer reward compares with the dataset's 'answer' column, and 4 of 4 "
                                        "prompts of 'bare' have no answer")


def test_grpo_golden_prompts_score_each_sampled_completion_against_the_rows_answer(monkeypatch):
    """The answer hook: each prompt's samples get the weighted reward of the run's reward functions, with the
    reference answer of the dataset row the prompt comes from (generation stands in: fixed completions)."""
    from types import SimpleNamespace

    from workers.methods import grpo

    spec = JobSpec(method="grpo", num_generations=2, reward_answer="answer_tag", reward_answer_weight=1.0,
                   reward_format_regex="<answer>", reward_format_weight=0.5)
    rows = [{"prompt": [{"role": "user", "content": "Name?"}], "answer": "Zorblax"},
            {"prompt": [{"role": "user", "content": "Colour?"}], "answer": "blue"}]
    texts = ["<answer>Zorblax</answer>", "<answer>blue</answer>"]
    monkeypatch.setattr(grpo, "sample", lambda model, tok, prompts, n, *a: [(texts[:n], [[1], [2]])] * len(prompts))
    answer = grpo.golden(spec, rows, SimpleNamespace(args=SimpleNamespace(temperature=0.7)))
    replies, extra = answer(None, None, ["Name?", "Colour?"])
    assert [[s["reward"] for s in group] for group in extra["samples"]] == [[1.5, 0.5], [0.5, 1.5]]
    assert extra["temperature"] == 0.7
    assert replies[0] == "[reward 1.50] <answer>Zorblax</answer>\n[reward 0.50] <answer>blue</answer>"


def test_a_grpo_runs_golden_prompts_show_sampled_completions_with_their_rewards(studio_home, tmp_path,
                                                                               tiny_model_dir):
    from studio import db, golden_prompts
    from workers import train

    job = _job(studio_home, tmp_path, tiny_model_dir, "grpo", "grpo-golden", load_in_4bit=False, max_steps=2,
               save_steps=2, reward_format_regex=".", reward_format_weight=0.5, reward_length_target=0,
               golden_prompts=["Question 0: say the name inside answer tags."])
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    entries = golden_prompts.read_golden(job.id)
    assert [e["step"] for e in entries] == ["base", 2]
    for entry in entries:
        (group,) = entry["samples"]
        assert len(group) == 4 and entry["temperature"] == 1.0  # num_generations 4; TRL's default temperature
        for s in group:  # the answer reward (no '<answer>' from a random model) gives 0, any text matches '.'
            assert s["reward"] == (0.5 if s["completion"] else 0.0) + (1.0 if "<answer>Zorblax" in s["completion"]
                                                                      else 0.0)
        assert entry["replies"][0]["reply"].count("[reward ") == 4


# ---- the Train form --------------------------------------------------------------------------------------

def test_the_form_offers_only_the_chosen_methods_fields_and_checks_the_dataset(studio_home, tmp_path):
    import gradio as gr

    from studio import library
    from studio.method_info import METHOD_FIELDS
    from studio.ui import train_tab

    with gr.Blocks() as blocks:
        with gr.Tabs():
            built = train_tab.build()
    event = next(f for f in blocks.fns.values() if f.name == "method_changed")
    outputs = [c._id for c in event.outputs]
    assert outputs[:-1] == [built["components"][n]._id for n in METHOD_FIELDS]
    comps = built["components"]
    assert comps["padding_free"].visible and not comps["num_generations"].visible and not comps["beta"].visible

    _write(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "hello"}]}] * 3)
    library.add(tmp_path / "chats.jsonl", name="chats")
    for method, shown in (("grpo", {"beta", "num_generations", "max_completion_length", "reward_answer",
                                    "reward_format_regex", "reward_length_target"}),
                          ("kto", {"beta", "desirable_weight", "undesirable_weight"}),
                          ("sft", {"assistant_only_loss", "padding_free", "chunked_loss"})):
        *updates, note = event.fn(method, "chats")
        visible = {name for name, u in zip(METHOD_FIELDS, updates) if u["visible"]}
        hidden = set(METHOD_FIELDS) - set(METHOD_INFO[method].fields)
        assert shown <= visible and not visible & hidden, (method, visible)
        if method == "sft":
            assert note == ""
        else:
            assert note.startswith(f"**Method:** {METHOD_INFO[method].needs}; 'chats' holds chat rows"), note
    beta = dict(zip(METHOD_FIELDS, event.fn("orpo", None)[:-1]))["beta"]
    assert beta["visible"] and beta["info"].startswith("ORPO's λ")
