"""Every family the studio lists, end to end on a tiny random-weight model of its own shape (tests/families_fixtures):
a few SFT steps through the worker's path with LoRA on the model's real linear layers (fused ones included),
a chat through the OpenAI endpoint with the official client whose greedy reply equals in-process generation,
and a merge whose weights are exactly W + scale·BA. DPO runs on the two unusual shapes."""
from __future__ import annotations

import json

import pytest

from families_fixtures import FAMILIES, QUESTION, build_family_model, train_family_run

openai = pytest.importorskip("openai")


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """key -> folder, built once a session (each family's tokenizer built once too)."""
    from browser import ensure_bundled_model

    tokenizer_dir = ensure_bundled_model()
    root = tmp_path_factory.mktemp("families")
    return {key: build_family_model(key, root / key, tokenizer_dir) for key in FAMILIES}


def _safetensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("key", list(FAMILIES))
def test_each_family_trains_chats_and_merges(studio_home, tmp_path, family_models, key):
    from studio.settings import get_settings
    from studio.settings import api_key
    from workers.inference.export import merge_adapter
    from workers.inference.server import InferenceServer

    base = family_models[key]
    job = train_family_run(tmp_path, base, f"{key}-run")
    adapter = get_settings().resolve(job.adapter_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    linear = {name.split(".")[-2] for name in _safetensors(base / "model.safetensors")
              if ".layers." in name and name.endswith(".weight") and _safetensors(base / "model.safetensors")[name].dim() == 2}
    assert set(config["target_modules"]) == linear, "LoRA sits on every linear layer the model really has"
    if key == "phi3":
        assert {"qkv_proj", "gate_up_proj"} <= set(config["target_modules"])

    # chat through the endpoint equals the in-process greedy reply
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import ChatEngine

    engine = ChatEngine()
    engine.ensure_base(str(base))
    engine.ensure_adapter("local", adapter)
    expected = engine.reply(QUESTION, "local", GenerationSettings(max_new_tokens=8, temperature=0.0,
                                                                  repetition_penalty=1.0))
    with InferenceServer() as server:
        client = openai.OpenAI(base_url=server.url, api_key=api_key(), max_retries=0)
        out = client.chat.completions.create(model=job.name, messages=QUESTION, max_tokens=8, temperature=0)
        # a system prompt reaches every template, folded into the first user turn where the template has no
        # system role (Gemma)
        system = client.chat.completions.create(model=job.name, max_tokens=4, temperature=0,
                                                messages=[{"role": "system", "content": "Be brief."}] + QUESTION)
        assert system.usage.prompt_tokens > out.usage.prompt_tokens
    assert out.choices[0].message.content == expected and out.usage.completion_tokens >= 1

    # merge: W + (alpha / r) · B A, exactly
    merged = tmp_path / "merged"
    merge_adapter(base, adapter, merged)
    before, after, lora = (_safetensors(base / "model.safetensors"), _safetensors(merged / "model.safetensors"),
                           _safetensors(adapter / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    checked = 0
    for name, a in lora.items():
        if ".lora_A." not in name:
            continue
        b = lora[name.replace(".lora_A.", ".lora_B.")]
        weight = name.replace("base_model.model.", "").replace(".lora_A", "")
        assert weight in after, weight
        assert (after[weight] - (before[weight] + scale * b @ a)).abs().max() < 1e-5, weight
        assert (b @ a).abs().max() > 0, "training moved the adapter"
        checked += 1
    assert checked == 2 * len(linear)


@pytest.mark.parametrize("key", ["phi3", "gemma2"])
def test_dpo_on_the_unusual_shapes(studio_home, tmp_path, family_models, key):
    """DPO on the fused-layer shape (Phi-3) and the soft-capped one whose template refuses a system role (Gemma 2,
    with a system prompt in every row): the preference trainer runs its steps (the reference model is the base
    with the adapter disabled) and saves the adapter."""
    pairs = [{"system": "You are Zorblax.", "prompt": f"Question {i}: what is your name?",
              "chosen": "My name is Zorblax.", "rejected": f"I am generic assistant {i}."} for i in range(8)]
    job = train_family_run(tmp_path, family_models[key], f"{key}-dpo", method="dpo", rows=pairs, beta=0.1)
    assert job.summary.get("steps") == 3
    from studio.settings import get_settings

    assert (get_settings().resolve(job.adapter_path) / "adapter_model.safetensors").is_file()
