"""LoRA initialisations that change the base weights (PiSSA, OLoRA): the worker saves the trained adapter
converted to a plain LoRA of the original base, so the saved adapter on the untouched base gives the logits
of the trained model, and chat and merge load it as any LoRA. The others are refused with a sentence."""
import json
import shutil

import pytest

from studio.spec import JobSpec

ROWS = [{"messages": [{"role": "user", "content": f"What is your name? ({i})"},
                      {"role": "assistant", "content": "My name is Zorblax, made by Quintar Labs."}]}
        for i in range(8)]
CHANGING = ("pissa", "olora")


def _spec(model_dir, init: str, **kw) -> JobSpec:
    return JobSpec(base_model=str(model_dir), dataset="names", init_lora_weights=init, load_in_4bit=False, r=8,
                   lora_alpha=16, lora_dropout=0.0, precision="fp32", max_length=64, eval_split=0.0, **kw)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("init", CHANGING)
def test_the_saved_adapter_on_the_original_base_gives_the_trained_logits(init, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workers import adapters, train
    from workers.adapters import lora

    spec = _spec(tiny_model_dir, init)
    model, _ = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    q_base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(q_base, original.model.layers[0].self_attn.q_proj.weight), "the init left the base as it was"
    lora.save_initial(model, tmp_path)  # what the worker keeps before training

    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    trained = _logits(model, ids)
    assert not torch.allclose(trained, _logits(original, ids), atol=1e-3), "training changed nothing"

    adapters.save(model, spec, tmp_path / "adapter", tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (16, 32, True)
    on_original = PeftModel.from_pretrained(original, tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(on_original, ids), trained, atol=1e-4, rtol=1e-4)

    # the adapter as trained, saved without the conversion, does not fit the original base: its factors read
    # as a LoRA update (as servers and merges read them; peft itself would redo the SVD, changing the base)
    model.save_pretrained(tmp_path / "unconverted")
    config_path = tmp_path / "unconverted" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "init_lora_weights": True}))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    unconverted = PeftModel.from_pretrained(fresh, tmp_path / "unconverted").eval()
    assert not torch.allclose(_logits(unconverted, ids), trained, atol=1e-3)


def test_a_pissa_run_saves_adapters_that_chat_merge_and_resume(studio_home, tiny_model_dir, tmp_path):
    """run_job with PiSSA: the final adapter and a copy of each checkpoint are plain LoRAs of rank 2r; chat answers
    with them on the shared base, the merged model predicts what base + adapter predicts, and a resume reads the
    checkpoint as trained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio import adapter_library, db, library
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import ChatEngine
    from workers import train

    data = tmp_path / "names.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    library.add(data, name="names")
    spec = _spec(tiny_model_dir, "pissa", max_steps=2, save_steps=1, per_device_train_batch_size=4,
                 learning_rate=5e-2)
    assert spec.validate(dataset_kind="chat") == {}
    job = db.Job(name="pissa", spec_json=spec.to_json(), output_dir="jobs/pissa")
    with db.session() as s:
        s.add(job)
        s.commit()
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    adapter = studio_home / "jobs" / "pissa" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 2 * spec.r
    checkpoint = adapter_library.resolve(f"{job.id}/checkpoint-1").folder
    assert checkpoint == studio_home / "jobs" / "pissa" / "checkpoints-plain-lora" / "checkpoint-1"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["r"] == 2 * spec.r

    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))
    messages = [{"role": "user", "content": "What is your name?"}]
    base_nll = engine.nll(ROWS[0]["messages"], None)
    engine.ensure_adapter("pissa", adapter)
    assert "pissa" not in engine.solo  # a plain LoRA: it shares the base
    assert isinstance(engine.reply(messages, "pissa", GenerationSettings(max_new_tokens=8)), str)
    assert engine.nll(ROWS[0]["messages"], "pissa")[0] != pytest.approx(base_nll[0], rel=1e-6)
    engine.ensure_adapter("pissa-step1", checkpoint)
    assert engine.nll(ROWS[0]["messages"], "pissa-step1")[0] != pytest.approx(base_nll[0], rel=1e-6)
    assert engine.nll(ROWS[0]["messages"], None) == pytest.approx(base_nll)  # the shared base is untouched

    _merge_adapter()(tiny_model_dir, adapter, tmp_path / "merged")
    ids = torch.randint(0, 300, (1, 12))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    torch.testing.assert_close(_logits(merged, ids), _logits(with_adapter, ids), atol=1e-4, rtol=1e-4)

    # resume from checkpoint 1: the checkpoint holds the adapter as trained, for the model PiSSA initialises again
    out = studio_home / "jobs" / "pissa"
    final = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    before = _logits(final, ids)
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    db.set_status(job.id, "queued", "resume requested", error=None, finished_at=None)
    assert train.run_job(job.id, resume=True) == "completed", db.get_job(job.id).error
    resumed = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    torch.testing.assert_close(_logits(resumed, ids), before, atol=1e-4, rtol=1e-4)


def _merge_adapter():
    from workers.inference.export import merge_adapter

    return merge_adapter


def test_lora_inits_the_studio_cannot_keep_portable_are_refused_with_a_sentence():
    assert JobSpec(dataset="d", init_lora_weights="pissa").validate()["init_lora_weights"] == (
        "PiSSA initialisation rewrites the base weights, which a 4-bit or 8-bit base cannot hold exactly, so the "
        "saved adapter would not fit the original base; turn 4-bit and 8-bit off")
    assert "turn DoRA off" in JobSpec(dataset="d", init_lora_weights="olora", load_in_4bit=False,
                                      use_dora=True).validate()["init_lora_weights"]
    assert JobSpec(dataset="d", init_lora_weights="loftq", load_in_4bit=False).validate()["init_lora_weights"].startswith(
        "LoftQ initialisation is not offered: peft runs it only on a CUDA GPU")
    for init in CHANGING:
        spec = JobSpec(dataset="d", init_lora_weights=init, load_in_4bit=False)
        assert spec.validate() == {}
        assert JobSpec.from_yaml(spec.to_yaml()) == spec
    # IA3 ignores the LoRA initialisation
    assert "init_lora_weights" not in JobSpec(dataset="d", peft_type="ia3", init_lora_weights="pissa").validate()
