"""JobSpec: defaults, validation messages, YAML round trip, translations to library configs."""
import math
from dataclasses import fields

import pytest

from studio.spec import BUNDLED_MODEL, JobSpec, SpecError, field_help, quote

LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_defaults_are_valid_for_the_bundled_model():
    spec = JobSpec(dataset="d")
    assert spec.base_model == BUNDLED_MODEL
    assert spec.load_in_4bit and spec.assistant_only_loss
    assert spec.validate(linear_names=LINEAR, dataset_kind="chat") == {}


@pytest.mark.parametrize("field,value,message", [
    ("r", 0, "LoRA rank must be between 1 and 1024, got 0"),
    ("r", 2048, "LoRA rank must be between 1 and 1024, got 2048"),
    ("lora_alpha", 0, "LoRA alpha must be greater than 0 and at most 16384, got 0"),
    ("learning_rate", 1.5, "learning rate must be between 0 and 1 (exclusive), got 1.5"),
    ("learning_rate", 0.0, "learning rate must be between 0 and 1 (exclusive), got 0.0"),
    ("per_device_train_batch_size", 0, "batch size must be between 1 and 4096, got 0"),
    ("per_device_train_batch_size", 5000, "batch size must be between 1 and 4096, got 5000"),
    ("max_length", 8, "max sequence length must be between 32 (room for the chat template) and 131072 tokens, got 8"),
    ("lora_dropout", 0.9, "LoRA dropout must be between 0 and 0.5, got 0.9"),
    ("eval_split", 0.95, "eval split must be between 0 and 0.9, got 0.95"),
    ("seed", -1, "seed must be between 0 and 4,294,967,295, got -1"),
    ("seed", 2**40, "seed must be between 0 and 4,294,967,295, got 1099511627776"),
    ("max_steps", 10**30, "max steps must be 0 (use epochs) or a positive number up to 10,000,000, got " + str(10**30)),
    ("num_gpus", 1000, "a job needs between 1 and 64 devices, got 1000"),
    ("num_gpus", 0, "a job needs between 1 and 64 devices, got 0"),
    ("beta", 0.0, "DPO beta must be greater than 0 and less than 100, got 0.0"),
    ("weight_decay", -0.1, "weight decay must be between 0 and 10, got -0.1"),
    ("num_train_epochs", -1.0, "epochs must be between 0 (automatic) and 1000, got -1.0"),
])
def test_impossible_values_get_a_field_message(field, value, message):
    errors = JobSpec(dataset="d", **{field: value}).validate(linear_names=LINEAR)
    assert errors == {field: message}


NUMBERS = [f.name for f in fields(JobSpec) if f.type in ("int", "float")]


def test_every_number_field_has_finite_bounds_shared_with_the_form():
    meta = field_help()
    assert {"r", "learning_rate", "seed", "num_gpus", "beta", "weight_decay"} <= set(NUMBERS)
    for name in NUMBERS:
        lo, hi = meta[name]["bounds"]
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, name


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_for_every_field(name, bad):
    with pytest.raises(SpecError) as exc:
        JobSpec.from_dict({"dataset": "d", name: bad})
    assert exc.value.errors == {name: f"{name} must be a finite number"}
    built = JobSpec(dataset="d", **{name: bad})  # built in code, past from_dict: validate still refuses it
    assert built.validate(linear_names=LINEAR) == {name: f"{name} must be a finite number"}


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN", "nan", "inf"])
def test_non_finite_numbers_are_refused_from_yaml(name, text):
    with pytest.raises(SpecError) as exc:
        JobSpec.from_yaml(f"dataset: d\n{name}: {text}\n")
    assert exc.value.errors == {name: f"{name} must be a finite number"}


@pytest.mark.parametrize("name", NUMBERS)
def test_numbers_outside_their_bounds_are_refused_naming_the_field(name):
    lo, hi = field_help()[name]["bounds"]
    kind = int if dict((f.name, f.type) for f in fields(JobSpec))[name] == "int" else float
    for value in (kind(lo - 1), kind(hi * 2 + 1)):
        errors = JobSpec.from_dict({"dataset": "d", name: value}).validate(linear_names=LINEAR)
        assert list(errors) == [name], (value, errors)
        assert errors[name].endswith(f", got {value!r}"), errors[name]
    inside = (lo + hi) / 2 if kind is float else (lo + hi) // 2
    assert name not in JobSpec(dataset="d", **{name: kind(inside)}).validate(linear_names=LINEAR)


def _laughs() -> str:
    """Six levels of ten aliases: under 400 bytes that expand to a million values."""
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    return "\n".join(levels) + "\nr: *a5\n"


def test_billion_laughs_yaml_is_refused_at_the_first_alias():
    text = _laughs()
    assert len(text) < 400
    with pytest.raises(SpecError) as exc:
        JobSpec.from_yaml(text)
    assert str(exc.value) == "config: YAML aliases (*a0 on line 2) are not allowed in a job file; write the value out"


def test_oversized_deep_or_unreadable_yaml_gets_one_short_sentence():
    cases = {
        "dataset: d\n# " + "x" * (300 * 1024): "config: a job file may be at most 256 KB; this one is 301 KB",
        "r: " + "[" * 50_000 + "]" * 50_000: "config: line 1 nests values deeper than a job file allows: it maps "
                                              "field names to values or to lists of values",
        "r: 1" + "0" * 5000: "config: the file has a value that cannot be read: Exceeds the limit (4300 digits) for "
                             "integer string conversion: value has 5001 digits",
    }
    for text, message in cases.items():
        with pytest.raises(SpecError) as exc:
            JobSpec.from_yaml(text)
        assert str(exc.value) == message


def test_studio_estimate_and_train_refuse_what_submission_refuses(studio_home, tmp_path, capsys):
    from studio import cli, db

    job = tmp_path / "job.yaml"
    job.write_text("r: 0\nload_in_4bit: false\n")
    assert cli.main(["estimate", str(job), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "error: r: LoRA rank must be between 1 and 1024, got 0\n"
    job.write_text("target_modules: [qkv]\nload_in_4bit: false\n")
    assert cli.main(["estimate", str(job), "--device", "cpu"]) == 2
    assert "the model has no linear layer named 'qkv'; it has down_proj" in capsys.readouterr().err
    job.write_text(_laughs())
    for command in ("estimate", "train"):
        assert cli.main([command, str(job)]) == 2
        assert capsys.readouterr().err == ("error: config: YAML aliases (*a0 on line 2) are not allowed in a job file; "
                                           "write the value out\n")
    assert db.list_jobs() == []
    job.write_text("load_in_4bit: false\n")  # no dataset: an estimate needs none
    assert cli.main(["estimate", str(job), "--device", "cpu"]) == 0
    assert "total" in capsys.readouterr().out


def test_messages_quote_at_most_80_characters_of_a_value():
    long = "x" * 100_000
    for data in ({"r": long}, {long: 1}, {"target_modules": [long] * 1000, "dataset": "d"}):
        try:
            errors = JobSpec.from_dict(data).validate(linear_names=LINEAR)
        except SpecError as exc:
            errors = exc.errors
        assert errors and all(len(k) <= 80 and len(v) < 300 for k, v in errors.items()), errors
    assert quote(long) == "'" + "x" * 37 + "..." + "x" * 38 + "'"
    assert quote(10**5000) == "a number too long to print"
    many = {f"key{i}": 1 for i in range(10_000)}
    with pytest.raises(SpecError) as exc:
        JobSpec.from_dict(many)
    assert len(exc.value.errors) == 6 and exc.value.errors["config"] == "9995 more unknown keys"


def _start_through_gradio(tmp_path, tiny_model_dir, **chosen) -> tuple[str, str | None]:
    """The Start button's registered handler, called as gradio's API calls it (its own pre- and post-processing)
    with the form's defaults and ``chosen`` values, on the tiny model and an identity dataset: (message, job id)."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    from identity_data import write
    from studio import db, library
    from studio.ui import train_tab

    if db.get_dataset("identity") is None:
        library.add(write(tmp_path / "identity.jsonl"), name="identity")
    with gr.Blocks() as demo:
        with gr.Tabs():
            built = train_tab.build()
    names = list(built["components"])
    values = [c.value for c in built["inputs"]]
    for name, value in {"base_model": str(tiny_model_dir), "dataset": "identity", "load_in_4bit": False,
                        **chosen}.items():
        values[names.index(name)] = value
    start = demo.fns[built["start_event"]["id"]]
    out = asyncio.run(demo.process_api(block_fn=start, inputs=values, state=SessionState(demo), request=None))
    return tuple(out["data"])


def test_a_nan_from_the_train_form_is_refused_and_nothing_is_queued(studio_home, tmp_path, tiny_model_dir):
    from studio import db

    message, job_id = _start_through_gradio(tmp_path, tiny_model_dir, weight_decay=math.nan)
    assert message == ("**The run was not queued. Please fix:**\n"
                       "- **Weight decay**: weight_decay must be a finite number")
    assert job_id is None and db.list_jobs() == []


@pytest.mark.parametrize("value,sentence", [
    (True, "r must be a whole number, got True"),
    (math.nan, "r must be a finite number"),
    (math.inf, "r must be a finite number"),
    ("abc", "r must be a whole number, got 'abc'"),
    (2.5, "r must be a whole number, got 2.5"),
])
def test_whole_number_fields_sent_through_gradios_api_refuse_booleans_nan_and_text(studio_home, tmp_path,
                                                                                   tiny_model_dir, value, sentence):
    """gradio's raw API of the Start button: a field sent true is not taken as 1, and NaN or text get one sentence
    naming the field instead of a bare "Error"."""
    from studio import db

    message, job_id = _start_through_gradio(tmp_path, tiny_model_dir, r=value)
    assert message == f"**The run was not queued. Please fix:**\n- **LoRA rank (r)**: {sentence}"
    assert job_id is None and db.list_jobs() == []
    with pytest.raises(SpecError) as exc:  # a job file says the same
        JobSpec.from_yaml(f"dataset: d\nr: {'true' if value is True else value}\n")
    assert exc.value.errors == {"r": sentence}


TWO_MB = 2 * 1024 * 1024


def test_a_two_megabyte_golden_prompt_is_refused_before_anything_is_queued(studio_home, tmp_path, tiny_model_dir,
                                                                            capsys):
    from studio import cli, db

    sentence = "golden prompt 2 is 2,097,152 characters long; a golden prompt may be at most 8,000 characters"
    huge = "x" * TWO_MB
    assert JobSpec(dataset="d", golden_prompts=["Hi?", huge]).validate() == {"golden_prompts": sentence}
    message, job_id = _start_through_gradio(tmp_path, tiny_model_dir, golden_prompts=f"Hi?\n{huge}\n")
    assert message == f"**The run was not queued. Please fix:**\n- **Golden prompts**: {sentence}"
    assert job_id is None
    job = tmp_path / "job.yaml"
    job.write_text(JobSpec(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False,
                           golden_prompts=["Hi?", huge]).to_yaml())
    assert cli.main(["train", str(job)]) == 2
    assert capsys.readouterr().err.startswith("error: config: a job file may be at most 256 KB; this one is 2,0")
    job.write_text(JobSpec(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False,
                           golden_prompts=["Hi?", "y" * 100_000]).to_yaml())  # a job file under its own limit
    assert cli.main(["train", str(job)]) == 2
    assert capsys.readouterr().err == ("error: golden_prompts: golden prompt 2 is 100,000 characters long; a golden "
                                       "prompt may be at most 8,000 characters\n")
    many = JobSpec(dataset="d", golden_prompts=[f"Question {i}?" for i in range(51)])
    assert many.validate() == {"golden_prompts": "a run may have at most 50 golden prompts; this one has 51"}
    assert db.list_jobs() == []
    assert JobSpec(dataset="d", golden_prompts=["z" * 8_000] * 50).validate(linear_names=LINEAR) == {}


def test_unknown_target_module_names_the_real_layers():
    errors = JobSpec(dataset="d", target_modules=["q_proj", "qkv"]).validate(linear_names=LINEAR)
    assert errors == {"target_modules": "the model has no linear layer named 'qkv'; it has down_proj, gate_proj, "
                                        "k_proj, o_proj, q_proj, up_proj, v_proj"}


def test_dpo_needs_preference_data_and_sft_refuses_it():
    assert "preference" in JobSpec(dataset="d", method="dpo").validate(dataset_kind="chat")["method"]
    assert "DPO" in JobSpec(dataset="d").validate(dataset_kind="preference")["method"]


def test_quantisation_refused_where_bitsandbytes_cannot_run():
    errors = JobSpec(dataset="d").validate(quantization_available=False)
    assert "bitsandbytes" in errors["load_in_4bit"]
    assert "not both" in JobSpec(dataset="d", load_in_8bit=True).validate()["load_in_8bit"]


def test_presets_expand_against_the_model():
    spec = JobSpec(target_modules=["attention"])
    assert spec.resolved_target_modules(LINEAR + ["lm_head"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert JobSpec(target_modules=["all-linear"]).resolved_target_modules(LINEAR + ["lm_head"]) == sorted(LINEAR)
    assert JobSpec(target_modules=["mlp"]).resolved_target_modules(LINEAR) == ["down_proj", "gate_proj", "up_proj"]


def test_yaml_round_trip_keeps_every_field():
    spec = JobSpec(dataset="d", r=8, target_modules=["q_proj", "v_proj"], golden_prompts=["hi"], learning_rate=1e-4)
    again = JobSpec.from_yaml(spec.to_yaml())
    assert again == spec


def test_unknown_yaml_key_names_the_closest_known_one():
    with pytest.raises(SpecError) as exc:
        JobSpec.from_yaml("dataset: d\nlearning_rat: 0.001\n")
    assert exc.value.errors == {"learning_rat": "unknown key 'learning_rat'; did you mean 'learning_rate'?"}


def test_wrong_types_are_reported_not_crashed():
    with pytest.raises(SpecError) as exc:
        JobSpec.from_dict({"r": "sixteen", "load_in_4bit": "maybe"})
    assert exc.value.errors == {"r": "r must be a whole number, got 'sixteen'",
                                "load_in_4bit": "load_in_4bit must be true or false, got 'maybe'"}


def test_translations_to_library_configs():
    import torch

    from workers import adapters, arguments
    from workers.methods import TRAINERS
    from workers.methods.sft import sft_config

    dpo_config = TRAINERS["dpo"].config
    spec = JobSpec(dataset="d", r=8, lora_alpha=16, target_modules=["attention"], bnb_4bit_compute_dtype="float32")
    q = arguments.quantization_config(spec, "cpu")
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32
    lc = adapters.peft_config(spec, LINEAR, None)
    assert lc.r == 8 and lc.lora_alpha == 16 and set(lc.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert arguments.quantization_config(JobSpec(load_in_4bit=False), "cpu") is None
    sched = arguments.schedule(JobSpec(num_train_epochs=2, per_device_train_batch_size=4), n_train=40)
    assert sched["total_steps"] == 20 and sched["eval_steps"] == 10  # a short run evaluates twice
    cfg = sft_config(spec, __import__("pathlib").Path("/tmp/x"), 40, True, "cpu")
    assert cfg.max_length == spec.max_length and cfg.eval_strategy == "steps" and cfg.learning_rate == spec.learning_rate
    dcfg = dpo_config(JobSpec(method="dpo", beta=0.2), __import__("pathlib").Path("/tmp/x"), 10, False, "cpu")
    assert dcfg.beta == 0.2
    assert not cfg.torch_compile and not dcfg.torch_compile  # minutes of compiling: only when asked
    compiled = JobSpec.from_yaml("dataset: d\ntorch_compile: true\n")
    assert sft_config(compiled, __import__("pathlib").Path("/tmp/x"), 40, True, "cpu").torch_compile
    assert dpo_config(JobSpec(**{**compiled.to_dict(), "method": "dpo"}), __import__("pathlib").Path("/tmp/x"),
                            10, False, "cpu").torch_compile


def test_auto_settings_resolve_per_device():
    from studio.spec import PACKED_ROW_LIMIT, JobSpec

    spec = JobSpec(dataset="d")
    assert spec.resolved_precision(True) == "bf16" and spec.resolved_precision(False) == "fp32"
    assert JobSpec(dataset="d", precision="fp32").resolved_precision(True) == "fp32"
    assert spec.batching() == "padding_free"
    long_rows = JobSpec(dataset="d", per_device_train_batch_size=8, max_length=PACKED_ROW_LIMIT // 4)
    assert long_rows.batching() == "grouped"


def test_out_of_memory_message_gives_the_estimate_for_this_device():
    import torch

    from studio.spec import JobSpec
    from workers.train import human_error

    text = human_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 7,
                       JobSpec(dataset="d"))
    assert text.startswith("ran out of memory at step 7 (estimated peak ")
    assert "GB, device " in text and "gradient checkpointing" in text and "Traceback" not in text


def test_the_forgetting_check_is_on_by_default_and_a_deployment_can_turn_the_default_off(monkeypatch):
    monkeypatch.delenv("STUDIO_FORGETTING_CHECK", raising=False)
    assert JobSpec().forgetting_check is True
    for off in ("off", "0", "false", "No"):
        monkeypatch.setenv("STUDIO_FORGETTING_CHECK", off)
        assert JobSpec().forgetting_check is False
        assert JobSpec(forgetting_check=True).forgetting_check is True  # a job's own choice wins
    monkeypatch.setenv("STUDIO_FORGETTING_CHECK", "on")
    assert JobSpec().forgetting_check is True
