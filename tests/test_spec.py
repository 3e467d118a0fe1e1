"""JobSpec: defaults, validation messages, YAML round trip, translations to library configs."""
import pytest

from studio.spec import BUNDLED_MODEL, JobSpec, SpecError

LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_defaults_are_valid_for_the_bundled_model():
    spec = JobSpec(dataset="d")
    assert spec.base_model == BUNDLED_MODEL
    assert spec.load_in_4bit and spec.assistant_only_loss
    assert spec.validate(linear_names=LINEAR, dataset_kind="chat") == {}


@pytest.mark.parametrize("field,value,fragment", [
    ("r", 0, "between 1 and 1024"),
    ("r", 2048, "between 1 and 1024"),
    ("lora_alpha", 0, "greater than 0"),
    ("learning_rate", 1.5, "between 0 and 1"),
    ("learning_rate", 0.0, "between 0 and 1"),
    ("per_device_train_batch_size", 0, "at least 1"),
    ("max_length", 8, "too small"),
    ("lora_dropout", 0.9, "between 0 and 0.5"),
    ("eval_split", 0.95, "between 0 and 0.9"),
])
def test_impossible_values_get_a_field_message(field, value, fragment):
    spec = JobSpec(dataset="d", **{field: value})
    errors = spec.validate(linear_names=LINEAR)
    assert field in errors
    assert fragment in errors[field] or fragment == "too small" and "32" in errors[field]


def test_unknown_target_module_names_the_real_layers():
    errors = JobSpec(dataset="d", target_modules=["q_proj", "qkv"]).validate(linear_names=LINEAR)
    assert "'qkv'" in errors["target_modules"] and "q_proj" in errors["target_modules"]


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
    assert "learning_rat" in str(exc.value) and "learning_rate" in str(exc.value)


def test_wrong_types_are_reported_not_crashed():
    with pytest.raises(SpecError) as exc:
        JobSpec.from_dict({"r": "sixteen", "load_in_4bit": "maybe"})
    assert "r must be a whole number" in str(exc.value)
    assert "load_in_4bit must be true or false" in str(exc.value)


def test_translations_to_library_configs():
    import torch

    from workers import train

    spec = JobSpec(dataset="d", r=8, lora_alpha=16, target_modules=["attention"], bnb_4bit_compute_dtype="float32")
    q = train.quantization_config(spec, "cpu")
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32
    lc = train.lora_config(spec, LINEAR)
    assert lc.r == 8 and lc.lora_alpha == 16 and set(lc.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert train.quantization_config(JobSpec(load_in_4bit=False), "cpu") is None
    sched = train.schedule(JobSpec(num_train_epochs=2, per_device_train_batch_size=4), n_train=40)
    assert sched["total_steps"] == 20 and sched["eval_steps"] == 4
    cfg = train.sft_config(spec, __import__("pathlib").Path("/tmp/x"), 40, True, "cpu")
    assert cfg.max_length == spec.max_length and cfg.eval_strategy == "steps" and cfg.learning_rate == spec.learning_rate
    dcfg = train.dpo_config(JobSpec(method="dpo", beta=0.2), __import__("pathlib").Path("/tmp/x"), 10, False, "cpu")
    assert dcfg.beta == 0.2
    assert not cfg.torch_compile and not dcfg.torch_compile  # minutes of compiling: only when asked
    compiled = JobSpec.from_yaml("dataset: d\ntorch_compile: true\n")
    assert train.sft_config(compiled, __import__("pathlib").Path("/tmp/x"), 40, True, "cpu").torch_compile
    assert train.dpo_config(JobSpec(**{**compiled.to_dict(), "method": "dpo"}), __import__("pathlib").Path("/tmp/x"),
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
