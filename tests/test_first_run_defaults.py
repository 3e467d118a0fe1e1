"""Defaults that fit a first run: evaluation / checkpoint / golden-prompt cadence scaled to the run, and the
model's default system prompt kept, replaced or left out."""
from __future__ import annotations

import json

import pytest

import identity_data
from adapter_fixtures import make_job
from studio import golden_prompts, render
from studio.spec import JobSpec

GENERAL = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is 2 + 2?", "I am sure it is 4."),
    ("Name a primary colour.", "Red is a primary colour."),
]]


def _rounds(total: int, interval: int) -> int:
    """How many evaluations / checkpoints transformers runs: every ``interval`` steps and once at the end."""
    return total // interval + (total % interval != 0)


# ---- cadence ------------------------------------------------------------------------------------

def test_a_short_run_evaluates_at_most_twice_and_checkpoints_midway_and_at_the_end():
    from workers.arguments import schedule

    sched = schedule(JobSpec(num_train_epochs=2, per_device_train_batch_size=4), n_train=40)  # 20 steps
    assert sched["total_steps"] == 20
    assert 1 <= _rounds(20, sched["eval_steps"]) <= 2
    assert _rounds(20, sched["save_steps"]) == 2 and sched["save_steps"] == 10


def test_the_first_run_spends_about_a_tenth_of_its_time_on_evaluations_and_checkpoints():
    """The issue's run: 91 rows, the form's defaults (10% held out, batch 4, 4 epochs): 84 steps."""
    from workers.arguments import EVAL_BATCH_COST, SAVE_COST, schedule

    sched = schedule(JobSpec(), n_train=82, n_eval=9)
    total = sched["total_steps"]
    assert total == 84
    evals, saves = _rounds(total, sched["eval_steps"]), _rounds(total, sched["save_steps"])
    assert 1 <= evals <= 5 and 1 <= saves <= 5
    overhead = evals * 3 * EVAL_BATCH_COST + saves * SAVE_COST  # 9 eval rows = 3 batches of 4
    assert overhead <= 0.1 * total


def test_a_long_run_gets_five_of_each_and_an_expensive_evaluation_runs_once():
    from workers.arguments import schedule

    long = schedule(JobSpec(num_train_epochs=4), n_train=2000, n_eval=200)  # 2000 steps
    assert _rounds(long["total_steps"], long["eval_steps"]) == 5
    assert _rounds(long["total_steps"], long["save_steps"]) == 5
    costly = schedule(JobSpec(max_steps=100), n_train=400, n_eval=4000)  # an evaluation = 333 steps
    assert _rounds(100, costly["eval_steps"]) == 1


def test_automatic_checkpoints_fall_on_evaluation_steps_so_the_best_one_can_be_chosen():
    from workers.arguments import schedule

    for spec, n_train, n_eval in [(JobSpec(), 82, 9), (JobSpec(num_train_epochs=4), 2000, 200),
                                  (JobSpec(num_train_epochs=2, per_device_train_batch_size=4), 40, 4),
                                  (JobSpec(max_steps=100), 400, 4000)]:
        sched = schedule(spec, n_train=n_train, n_eval=n_eval)
        assert sched["save_steps"] % sched["eval_steps"] == 0, sched
        assert _rounds(sched["total_steps"], sched["save_steps"]) >= 1


def test_intervals_the_user_sets_are_kept():
    from workers.arguments import schedule

    sched = schedule(JobSpec(max_steps=20, eval_steps=3, save_steps=7), n_train=40)
    assert (sched["eval_steps"], sched["save_steps"]) == (3, 7)
    one = schedule(JobSpec(max_steps=1), n_train=4)
    assert one["eval_steps"] == one["save_steps"] == 1


def test_golden_prompts_are_answered_at_most_three_times_between_the_base_and_the_end():
    assert golden_prompts.golden_save_steps(84, 21) == set()  # a short run: the base and the end only
    assert golden_prompts.golden_save_steps(300, 100) == {100, 200}
    spread = golden_prompts.golden_save_steps(1000, 200)  # checkpoints at 200, 400, 600, 800 and the end
    assert len(spread) == 3 and spread <= {200, 400, 600, 800}


def test_golden_rounds_between_the_start_and_the_end_cost_at_most_a_twentieth_of_the_training_time():
    from workers.golden import GoldenPromptsCallback

    callback = GoldenPromptsCallback("j", ["p"], tokenizer=None, automatic=True)
    assert callback.affordable(23, 112)                # nothing measured yet
    callback.began, callback.last_round = 0.0, 5.0     # the base took 5 s
    # 23 steps in 32 s: about 156 s of training projected, a twentieth of it 7.8 s: one round of 5 s fits
    assert callback.affordable(23, 112, now=32.0)
    callback.spent = callback.last_round = 6.0         # that round took 6 s
    assert not callback.affordable(46, 112, now=32.0 + 6.0 + 32.0)   # a second would make 12 s
    # a long run affords rounds of the same cost: 200 of 1000 steps in 280 s, 1400 s projected, 70 s of rounds
    callback.spent = 0.0
    assert callback.affordable(200, 1000, now=280.0)


def test_a_short_run_with_automatic_cadence_answers_golden_prompts_at_the_start_and_the_end(tiny_model_dir,
                                                                                             studio_home):
    from studio.settings import get_settings
    from workers import train
    from workers.callbacks import StudioCallback
    from workers.golden import GoldenPromptsCallback

    job = make_job(tiny_model_dir, "golden-auto", status="running")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="tiny-data", load_in_4bit=False, max_steps=6,
                   per_device_train_batch_size=2, max_length=64, r=4, eval_split=0)
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    out = get_settings().resolve(job.output_dir)
    rows = identity_data.rows()[:12]
    trainer = train.build_trainer(spec, "chat", model, tok, rows, [], out, StudioCallback(job.id), "cpu")
    trainer.add_callback(GoldenPromptsCallback(job.id, ["What is your name?"], tok, max_new_tokens=2,
                                               automatic=not spec.save_steps))
    trainer.train()

    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert sorted(p.name for p in (out / "golden").iterdir()) == ["base.json", "step-6.json"]
    assert json.loads((out / "golden" / "step-6.json").read_text())["final"] is True


# ---- system prompt ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _texts(tokenizer, **spec_values) -> list[str]:
    from workers.arguments import encode_rows

    rows = identity_data.rows()[:2] + [{"messages": [{"role": "system", "content": "Own system."},
                                                     *identity_data.rows()[0]["messages"]]}]
    spec = JobSpec(dataset="d", **spec_values)
    return [tokenizer.decode(r["input_ids"]) for r in encode_rows(tokenizer, rows, "chat", spec)]


def test_the_templates_default_system_prompt_is_found(tokenizer):
    assert render.default_system_prompt(tokenizer) == "You are a helpful assistant."


def test_training_keeps_replaces_or_leaves_out_the_default_system_prompt(tokenizer):
    default = "You are a helpful assistant."
    keep = _texts(tokenizer, system_prompt_mode="keep")
    assert all(default in t for t in keep[:2])
    omit = _texts(tokenizer, system_prompt_mode="omit")
    assert not any(default in t for t in omit) and all("<|im_start|>system\n<|im_end|>" in t for t in omit[:2])
    replace = _texts(tokenizer, system_prompt_mode="replace", system_prompt=f"You are {identity_data.NAME}.")
    assert all(f"You are {identity_data.NAME}." in t and default not in t for t in replace[:2])
    for texts in (keep, omit, replace):  # a row's own system turn is never touched
        assert "Own system." in texts[2] and default not in texts[2] and texts[2].count("<|im_start|>system") == 1


def test_by_default_identity_rows_leave_the_default_out_and_other_rows_keep_it(tokenizer, tiny_model_dir,
                                                                               studio_home, caplog):
    from studio import db
    from workers.arguments import encode_rows
    from workers.train import resolve_system_prompt

    default = "You are a helpful assistant."
    assert JobSpec(dataset="d").system_prompt_mode == "auto"
    assert not any(default in t for t in _texts(tokenizer)[:2])  # identity rows: omitted
    general = [tokenizer.decode(r["input_ids"]) for r in encode_rows(tokenizer, GENERAL, "chat", JobSpec(dataset="d"))]
    assert all(default in t for t in general)

    job = make_job(tiny_model_dir, "auto-identity", status="queued")
    caplog.set_level("INFO", logger="studio.train")
    resolved = resolve_system_prompt(job.id, JobSpec.from_dict(job.spec), identity_data.rows())
    assert resolved.system_prompt_mode == "omit" == db.get_job(job.id).spec["system_prompt_mode"]
    # the choice is a sentence in the run's log (the worker's log records), not a status event
    assert any("left out" in r.getMessage() for r in caplog.records)
    other = make_job(tiny_model_dir, "auto-general", status="queued")
    assert resolve_system_prompt(other.id, JobSpec.from_dict(other.spec), GENERAL).system_prompt_mode == "keep"
    assert db.get_job(other.id).spec["system_prompt_mode"] == "keep"


def test_the_system_prompt_choice_is_validated():
    assert JobSpec(dataset="d", system_prompt_mode="keep").validate() == {}
    assert "system_prompt" in JobSpec(dataset="d", system_prompt_mode="replace").validate()
    assert "system_prompt_mode" in JobSpec(dataset="d", system_prompt_mode="drop").validate()
    assert not JobSpec(dataset="d", system_prompt_mode="replace", system_prompt="You are Zorblax.").validate()


def test_identity_data_is_recognised_and_the_preview_suggests_leaving_the_default_out(tokenizer):
    from studio.datasets.stats import carries_identity

    assert carries_identity(identity_data.rows())
    assert not carries_identity(GENERAL)
    note = render.system_prompt_note(tokenizer, identity_data.rows(), carries_identity(identity_data.rows()))
    assert '"You are a helpful assistant."' in note and "omitting it" in note
    general = render.system_prompt_note(tokenizer, GENERAL, carries_identity(GENERAL))
    assert "You are a helpful assistant." in general and "omitting" not in general
    own = [{"messages": [{"role": "system", "content": "x"}, *r["messages"]]} for r in GENERAL]
    assert render.system_prompt_note(tokenizer, own, False) is None


def test_the_dataset_preview_shows_the_suggestion(tiny_model_dir, tmp_path, studio_home):
    """Under the default System prompt auto the preview leaves the default out of identity rows, as training does,
    and says so; with keep it shows the default and suggests omitting it (tests/test_form_help.py: the rows)."""
    from studio import library
    from studio.ui.datasets_tab import template_preview

    path = identity_data.write(tmp_path / "identity.jsonl")
    loaded = library.inspect(path, filename=path.name)
    _, _, notes, _ = template_preview(loaded, str(tiny_model_dir), 256)
    assert any("You are a helpful assistant." in n and "is left out" in n for n in notes)
    _, _, notes, _ = template_preview(loaded, str(tiny_model_dir), 256, "keep")
    assert any("You are a helpful assistant." in n and "omitting it" in n for n in notes)


# ---- a first run's model load and epochs ---------------------------------------------------------

def test_4bit_on_a_cpu_without_fast_kernels_loads_the_exact_weights_instead(tiny_model_dir, monkeypatch):
    """Where the dequantised-weight cache would hold every frozen weight in fp32 anyway, the base is loaded at
    full precision: no quantisation pass (most of a first run's model load on such a CPU)."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM

    from workers import speed, train

    monkeypatch.setattr(speed, "cpu_has_fast_4bit", lambda: False)
    spec = JobSpec(dataset="d", r=4, lora_alpha=8)
    assert spec.load_in_4bit and train.full_precision_instead_of_4bit(spec, tiny_model_dir, "cpu")
    assert not train.full_precision_instead_of_4bit(spec, tiny_model_dir, "cuda")
    on = JobSpec(dataset="d", r=4, dequant_cache="on")  # asked for the 4-bit numbers themselves: kept
    assert not train.full_precision_instead_of_4bit(on, tiny_model_dir, "cpu")
    model, _ = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    dtype = model.get_base_model().model.embed_tokens.weight.dtype
    assert dtype == torch.float32       # on a CPU, as chat serves it there, even where bf16 training autocasts
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    with torch.no_grad():  # the adapter starts as a no-op (B = 0): the model is the base, exactly
        x = torch.randint(0, 100, (1, 12))
        assert torch.equal(model(input_ids=x).logits, plain(input_ids=x).logits)
    monkeypatch.setattr(speed, "cpu_has_fast_4bit", lambda: True)
    assert not train.full_precision_instead_of_4bit(spec, tiny_model_dir, "cpu")


def test_automatic_epochs_give_a_small_dataset_more_passes():
    from workers.arguments import common_args, schedule

    spec = JobSpec(dataset="d")
    assert spec.num_train_epochs == 0  # automatic
    assert [spec.resolved_epochs(n) for n in (40, 50, 87, 150, 300, 5000)] == [5, 5, 4, 2, 2, 1]
    assert schedule(spec, n_train=50)["total_steps"] == 5 * 13
    assert schedule(JobSpec(dataset="d", num_train_epochs=3), n_train=50)["total_steps"] == 3 * 13  # the user's
    assert common_args(spec, "/tmp/unused", 87, False, "cpu")["num_train_epochs"] == 4
