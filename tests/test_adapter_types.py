"""Adapter types (LoRA, IA3, prompt tuning, prefix tuning) and optimizers as plug-ins: each type trains on
the tiny model through the worker's run_job, saves in PEFT format, reloads through peft and chats; types
that cannot be merged say why before anything is written; the estimate counts each type's parameters and
8-bit optimizer states; CPU workers refuse paged optimizers."""
import json
import os
import socket

import pytest

from studio.adapter_types import ADAPTER_TYPES, OPTIM_CHOICES, PEFT_TYPES
from studio.spec import JobSpec

ROWS = [{"messages": [{"role": "user", "content": f"What is your name? ({i})"},
                      {"role": "assistant", "content": "My name is Zorblax, made by Quintar Labs."}]}
        for i in range(8)]
GOLDEN = ["What is your name?"]


def _use_home(home):
    from studio import db, settings

    os.environ["STUDIO_HOME"] = str(home)
    settings.reset_settings()
    db.dispose_engines()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """Each adapter type trained 2 steps by the worker's run_job, with golden prompts: {type: (job, adapter dir)}."""
    from studio import db, library
    from workers import train

    root = tmp_path_factory.mktemp("adapter-types")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("STUDIO_DATABASE_URL", "STUDIO_QUEUE_URL", "STUDIO_AUTH"):
            mp.delenv(var, raising=False)
        mp.setenv("STUDIO_HOME", str(root / "home"))
        _use_home(root / "home")
        data = root / "names.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in ROWS))
        library.add(data, name="names")
        out = {}
        for kind in PEFT_TYPES:
            spec = JobSpec(base_model=str(tiny_model_dir), dataset="names", name=kind, peft_type=kind,
                           load_in_4bit=False, max_steps=2, per_device_train_batch_size=4, eval_split=0.0,
                           max_length=64, learning_rate=5e-2, golden_prompts=GOLDEN)
            assert spec.validate(dataset_kind="chat") == {}
            job = db.Job(name=kind, spec_json=spec.to_json(), output_dir=f"jobs/{kind}")
            with db.session() as s:
                s.add(job)
                s.commit()
            assert train.run_job(job.id) == "completed", (kind, db.get_job(job.id).error)
            out[kind] = (db.get_job(job.id), root / "home" / "jobs" / kind / "adapter")
        yield root / "home", out
    _use_home(os.environ.get("STUDIO_HOME", root / "home"))


def test_each_type_trains_reports_and_saves_peft_format(trained):
    from studio import db, golden_prompts

    home, runs = trained
    _use_home(home)
    for kind, (job, adapter) in runs.items():
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["peft_type"] == ADAPTER_TYPES[kind].peft_type
        assert (adapter / "adapter_model.safetensors").stat().st_size > 0
        assert [m.loss for m in db.metrics_since(job.id) if m.loss is not None], f"{kind}: no live loss points"
        golden = golden_prompts.read_golden(job)
        assert [g["step"] for g in golden][:1] == ["base"] and len(golden) >= 2, kind


def test_each_type_reloads_through_peft_and_chats(trained, tiny_model_dir):
    """One engine: LoRA on the shared base, the other types on their own copies; the base reply is the
    same before and after, and each adapter changes what the model predicts."""
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import ChatEngine

    _, runs = trained
    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))
    messages = [{"role": "user", "content": "What is your name?"}]
    settings = GenerationSettings(max_new_tokens=8)
    base_reply = engine.reply(messages, None, settings)
    base_nll = engine.nll(ROWS[0]["messages"], None)
    for kind, (_, adapter) in runs.items():
        engine.ensure_adapter(kind, adapter)
    assert set(engine.solo) == {"ia3", "prompt_tuning", "prefix_tuning"}
    for kind in PEFT_TYPES:
        assert isinstance(engine.reply(messages, kind, settings), str)
        assert engine.nll(ROWS[0]["messages"], kind)[0] != pytest.approx(base_nll[0], rel=1e-6), kind
        assert engine.generate_batch([messages], kind, settings)
    assert engine.reply(messages, None, settings) == base_reply
    assert engine.nll(ROWS[0]["messages"], None) == pytest.approx(base_nll)


def test_prompt_and_prefix_tuning_resume_from_a_checkpoint(trained):
    from studio import db
    from workers import train

    home, runs = trained
    _use_home(home)
    for kind in ("prompt_tuning", "prefix_tuning"):
        job, _ = runs[kind]
        spec = JobSpec.from_dict({**job.spec, "max_steps": 3})
        db.update_job(job.id, status="queued", spec_json=spec.to_json())
        assert train.run_job(job.id, resume=True) == "completed", db.get_job(job.id).error
        assert db.get_job(job.id).current_step == 3


def test_merge_and_gguf_refuse_prompt_and_prefix_tuning_with_the_reason(trained, tmp_path):
    from studio import adapter_library
    from studio.settings import get_settings
    from workers.inference import export

    home, runs = trained
    _use_home(home)
    for kind, why in (("prompt_tuning", "adds virtual tokens, not weight deltas"),
                      ("prefix_tuning", "key/value prefixes")):
        job, _ = runs[kind]
        with pytest.raises(adapter_library.AdapterError, match=f"cannot be merged or exported as GGUF: .*{why}"):
            export.merge(job.id)
        with pytest.raises(adapter_library.AdapterError, match="nothing to merge"):
            export.export_gguf(job.id)
        with pytest.raises(ValueError, match="nothing to merge"):
            export.merge_adapter(job.spec["base_model"], runs[kind][1], tmp_path / kind)
        assert not (tmp_path / kind).exists()
    exports = get_settings().exports_dir
    assert not exports.exists() or not any(exports.iterdir())


def test_ia3_merges_into_the_base(trained, tmp_path):
    from workers.inference import export

    _, runs = trained
    job, adapter = runs["ia3"]
    export.merge_adapter(job.spec["base_model"], adapter, tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").exists()


def test_estimate_counts_what_peft_trains(trained):
    """The estimate's trainable parameters for every type equal what peft reported in the run summary."""
    from studio import catalog, memory

    _, runs = trained
    for kind, (job, _) in runs.items():
        spec = JobSpec.from_dict(job.spec)
        config = catalog.read_local_config(spec.base_model)
        assert memory.estimate_for_spec(spec, config, "cpu").trainable_params == job.summary["trainable_params"], kind


def test_eight_bit_optimizers_estimate_lower_optimizer_memory():
    from studio import catalog, memory

    config = catalog.config_for("SmolLM2-135M-Instruct")
    def states(**kw):
        return {o: memory.estimate_for_spec(JobSpec(dataset="d", optim=o, **kw), config).breakdown["optimizer states"]
                for o in OPTIM_CHOICES}

    qlora, lora = states(), states(load_in_4bit=False)
    # QLoRA adapters are bf16, so torch's AdamW keeps 2 x 2 bytes per parameter; LoRA's are fp32: 2 x 4 bytes
    assert qlora["paged_adamw_8bit"] == qlora["adamw_8bit"] < qlora["adamw_torch"] / 1.6
    assert qlora["paged_adamw_32bit"] == lora["paged_adamw_32bit"] == lora["adamw_torch"] > qlora["adamw_torch"]
    assert lora["paged_adamw_8bit"] < lora["adamw_torch"] / 3  # k/v lora_B (192 x 16) stay 32-bit
    ia3 = {o: memory.estimate_for_spec(JobSpec(dataset="d", peft_type="ia3", optim=o), config) for o in OPTIM_CHOICES}
    # IA3's vectors are under bitsandbytes' 4096-element threshold: they keep 32-bit states
    assert ia3["adamw_8bit"].breakdown["optimizer states"] == 8 * ia3["adamw_8bit"].trainable_params / memory.GIB


def test_optimizers_a_cpu_worker_cannot_run_are_refused_before_queueing(studio_home):
    from studio import db, jobs

    spec = JobSpec(dataset="d", optim="paged_adamw_8bit", load_in_4bit=False)
    assert "optim" not in spec.validate()  # the device is not known: not refused
    assert "optim" not in spec.validate(worker_devices=["cuda"])
    assert spec.validate(worker_devices=["cuda", "cpu"])["optim"] == (
        "paged_adamw_8bit pages its optimizer states between GPU and host memory, which needs a CUDA GPU, and a "
        "worker here trains on CPU; choose adamw_8bit (the same 8-bit states, unpaged)")
    assert "optim" in JobSpec(dataset="d", optim="paged_adamw_32bit").validate(worker_devices=["cpu"])
    for optim in ("adamw_torch", "adamw_8bit"):  # bitsandbytes' 8-bit AdamW runs on CPU
        assert "optim" not in JobSpec(dataset="d", optim=optim).validate(worker_devices=["cpu"])
    db.register_worker(id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid(),
                       device="cpu", device_name="CPU", memory_gb=8.0, gpu_count=0, bf16=False)
    assert "CUDA GPU" in jobs.validate_spec(spec)["optim"]


def test_the_worker_refuses_a_paged_optimizer_on_cpu_rather_than_run_it_unpaged():
    from workers.arguments import optimizer

    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        optimizer(JobSpec(optim="paged_adamw_32bit"), "cpu")
    assert optimizer(JobSpec(optim="paged_adamw_32bit"), "cuda") == "paged_adamw_32bit"
    assert optimizer(JobSpec(optim="adamw_8bit"), "cpu") == "adamw_8bit"


def test_adapter_type_choices_are_validated_with_sentences():
    assert JobSpec(dataset="d", peft_type="loha").validate()["peft_type"].startswith("peft_type must be one of lora")
    assert "padding_free" in JobSpec(dataset="d", peft_type="prompt_tuning", padding_free="on").validate()
    assert JobSpec(dataset="d", peft_type="prefix_tuning", per_device_train_batch_size=1).batching() != "padding_free"
    assert "prompt_tuning_init_text" in JobSpec(dataset="d", peft_type="prompt_tuning",
                                                prompt_tuning_init="text").validate()
    assert "num_virtual_tokens" in JobSpec(dataset="d", num_virtual_tokens=0).validate()
    assert "init_lora_weights" in JobSpec(dataset="d", init_lora_weights="orthogonal", r=7).validate()
    # prompt and prefix tuning touch no layer: target modules do not matter to them
    assert JobSpec(dataset="d", peft_type="prompt_tuning", target_modules=["nope"]).validate(linear_names=["q_proj"]) == {}


def test_yaml_round_trip_of_every_type_and_optimizer():
    for kind in PEFT_TYPES:
        for optim in OPTIM_CHOICES:
            spec = JobSpec(dataset="d", peft_type=kind, optim=optim, num_virtual_tokens=12,
                           prompt_tuning_init="text", prompt_tuning_init_text="Answer as Zorblax.")
            assert JobSpec.from_yaml(spec.to_yaml()) == spec


def test_cli_estimate_accepts_every_type_and_optimizer(tmp_path, capsys):
    from studio import cli

    results = {}
    for kind in PEFT_TYPES:
        for optim in OPTIM_CHOICES:
            path = tmp_path / f"{kind}-{optim}.yaml"
            path.write_text(JobSpec(peft_type=kind, optim=optim).to_yaml())
            assert cli.main(["estimate", str(path), "--json"]) == 0, capsys.readouterr().err
            results[kind, optim] = json.loads(capsys.readouterr().out)
    states = {key: r["breakdown"]["optimizer states"] for key, r in results.items()}
    for kind in ("lora", "prompt_tuning", "prefix_tuning"):
        assert states[kind, "paged_adamw_8bit"] < states[kind, "adamw_torch"], kind
    # IA3's vectors are under bitsandbytes' 4096-element threshold: 32-bit states, as fp32 AdamW's
    assert states["ia3", "paged_adamw_8bit"] == states["ia3", "paged_adamw_32bit"]
    trainable = {k: results[k, "adamw_torch"]["trainable_params"] for k in PEFT_TYPES}
    assert trainable["prompt_tuning"] < trainable["ia3"] < trainable["prefix_tuning"] < trainable["lora"]


def test_cli_train_queues_every_type_and_optimizer(studio_home, tmp_path, tiny_model_dir, capsys):
    from studio import cli, db, library

    data = tmp_path / "names.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    library.add(data, name="names")
    for kind in PEFT_TYPES:
        for optim in OPTIM_CHOICES:
            path = tmp_path / f"{kind}-{optim}.yaml"
            path.write_text(JobSpec(base_model=str(tiny_model_dir), dataset="names", peft_type=kind, optim=optim,
                                    load_in_4bit=False).to_yaml())
            assert cli.main(["train", str(path)]) == 0, capsys.readouterr().err
    queued = [JobSpec.from_dict(j.spec) for j in db.list_jobs()]
    assert {(s.peft_type, s.optim) for s in queued} == {(k, o) for k in PEFT_TYPES for o in OPTIM_CHOICES}


def test_the_estimate_reads_an_adapter_types_memory_terms_from_its_record(monkeypatch):
    """memory.estimate has no branch per adapter type: a type registered with its own AdapterMemory (one vector
    of hidden size, three virtual tokens) is estimated from those terms alone."""
    from dataclasses import replace

    from studio import adapter_types, catalog, memory

    class OneVector(adapter_types.AdapterMemory):
        def tensors(self, shape, a):
            return [shape.hidden]

        def virtual_tokens(self, a):
            return 3

    monkeypatch.setitem(adapter_types.ADAPTER_TYPES, "vector",
                        replace(adapter_types.PROMPT_TUNING, name="vector", memory=OneVector()))
    config = catalog.config_for("SmolLM2-135M-Instruct")
    args = dict(bits=16, r=8, target_modules=["all-linear"], batch_size=2, seq_len=64, gradient_checkpointing=False)
    vector = memory.estimate(config, peft_type="vector", **args)
    prompt = memory.estimate(config, peft_type="prompt_tuning", num_virtual_tokens=3, **args)
    assert vector.trainable_params == config["hidden_size"] == prompt.trainable_params / 3
    assert vector.breakdown["activations"] == prompt.breakdown["activations"]  # 67 tokens a row, nothing in a layer
    assert vector.breakdown["logits"] == prompt.breakdown["logits"]
