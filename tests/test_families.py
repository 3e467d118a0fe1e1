"""studio.families: one row per model family. Every row's lookup, its layer names against the real transformers
modules (fused ones included), the Train tab's picker and the memory estimate of every listed model."""
from __future__ import annotations

import json
import struct

import pytest

from studio import catalog, families
from studio.families import FAMILIES, family_of, gguf_problem, published, published_models
from studio.spec import BUNDLED_MODEL, JobSpec

# every row, by name: adding a family is one row in studio/families.py and its line here
ROWS = {
    "Llama 3.x": ("llama", "meta-llama/Llama-3.2-1B-Instruct"),
    "Qwen2.5": ("qwen2", "Qwen/Qwen2.5-0.5B-Instruct"),
    "Qwen3": ("qwen3", "Qwen/Qwen3-0.6B"),
    "Mistral/Ministral": ("mistral", "mistralai/Mistral-7B-Instruct-v0.3"),
    "Gemma 2": ("gemma2", "google/gemma-2-2b-it"),
    "Gemma 3": ("gemma3_text", "google/gemma-3-1b-it"),
    "Phi-3/Phi-4": ("phi3", "microsoft/Phi-3-mini-4k-instruct"),
    "OLMo 2": ("olmo2", "allenai/OLMo-2-0425-1B-Instruct"),
    "Granite 3": ("granite", "ibm-granite/granite-3.1-2b-instruct"),
    "SmolLM2/SmolLM3": ("smollm3", "HuggingFaceTB/SmolLM3-3B"),
}
LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3 = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def test_every_row_is_found_by_model_type_architecture_config_and_hub_id():
    assert [f.name for f in FAMILIES] == list(ROWS)
    for family in FAMILIES:
        model_type, hub_id = ROWS[family.name]
        assert family_of(model_type) is family
        assert family_of(model_type.upper()) is family
        for architecture in family.architectures:
            assert family_of(architecture) is family or family_of(architecture).model_types[0] == "llama"
            assert family_of({"architectures": [architecture]}) is not None
        assert published(hub_id)[0] is family
        assert family.models and family.licence and family.template
        for model in family.models:
            assert published(model.hub_id) == (family, model)
            assert family_of(catalog.ARCHITECTURES[model.hub_id]) is family, model.hub_id
            assert catalog.config_for(model.hub_id) == model.config
            assert model.config["model_type"] in family.model_types
            assert model.size and model.licence and model.params > 0
    # llama is shared: Llama 3.x and SmolLM2 (the bundled model) told apart by their vocabulary
    assert family_of("llama").name == "Llama 3.x"
    assert family_of(catalog.config_for(BUNDLED_MODEL)).name == "SmolLM2/SmolLM3"
    assert family_of(catalog.config_for("meta-llama/Llama-2-7b-hf")).name == "Llama 3.x"  # same layers
    # a transformers config, an image-text config.json and a hub id's tail
    from transformers import Phi3Config, Qwen3Config

    assert family_of(Qwen3Config()).name == "Qwen3" and family_of(Phi3Config()).name == "Phi-3/Phi-4"
    gemma3 = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": {"model_type": "gemma3_text", "vocab_size": 262208}}
    assert family_of(gemma3).name == "Gemma 3"
    assert published("Qwen3-4B")[1].hub_id == "Qwen/Qwen3-4B"


def test_what_the_table_does_not_know():
    for unknown in (None, "", "gpt2", {"model_type": "gpt_neox"}, {}, {"architectures": ["MambaForCausalLM"]}):
        assert family_of(unknown) is None
    assert published("nobody/unknown-model") is None and published("") is None
    assert catalog.linear_layer_names({"model_type": "gpt2"}) == []


def test_template_quirks_and_export_support():
    by_name = {f.name: f for f in FAMILIES}
    assert [f.name for f in FAMILIES if not f.system_role] == ["Gemma 2", "Gemma 3"]
    assert by_name["Qwen3"].thinking and not by_name["Qwen2.5"].thinking
    assert by_name["Mistral/Ministral"].gguf == "llama"
    assert gguf_problem({"model_type": "ministral"}).endswith(  # transformers' layout, not the published config
        "llama.cpp's converter does not take 'ministral' checkpoints of Mistral/Ministral (the merged model can "
        "still be exported as safetensors)")
    smol = by_name["SmolLM2/SmolLM3"]
    assert smol.gguf_arch("llama") == "llama" and smol.gguf_arch("smollm3") == "smollm3"
    for family in FAMILIES:
        assert gguf_problem(family.models[0].config) is None, family.name
    sentence = gguf_problem({"model_type": "gpt2"})
    assert sentence.startswith("GGUF export supports these families: Llama 3.x, Qwen2.5, Qwen3,")
    assert "'gpt2' is not one of them" in sentence
    assert by_name["Phi-3/Phi-4"].fused_layers == {"qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}
    assert by_name["Qwen3"].fused_layers == {}
    for family in FAMILIES:  # every layer computes known roles, each role once
        parts = [p for layer in family.linear_layers for p in layer.parts]
        assert sorted(parts) == sorted(families.ROLES), family.name


def test_the_rows_layer_names_are_the_real_modules_of_each_architecture():
    """A tiny random model of each model_type: the linear layers of its first decoder layer are the row's, with the
    (in, out) features the memory estimate gives them (a fused layer as wide as its parts)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from studio.memory import ModelShape

    for family in FAMILIES:
        for model_type in family.model_types:
            if model_type == "gemma3":  # the image-text checkpoint: its text decoder is gemma3_text's
                continue
            config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128,
                                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
            model = AutoModelForCausalLM.from_config(config)
            assert type(model).__name__ in family.architectures
            found = {}
            for name, module in model.named_modules():
                parts = name.split(".")
                in_first = "layers" in parts and parts[parts.index("layers") + 1:][:1] == ["0"]
                if isinstance(module, torch.nn.Linear) and in_first:
                    found[parts[-1]] = (module.in_features, module.out_features)
            assert sorted(found) == sorted(family.linear_names), (family.name, model_type)
            assert ModelShape.from_config(config.to_dict()).linears() == found, (family.name, model_type)


def test_target_modules_of_a_phi3_shaped_config_are_its_fused_layers(studio_home):
    from studio import models
    from studio.ui import train_tab

    phi3 = catalog.config_for("microsoft/Phi-4-mini-instruct")
    assert catalog.linear_layer_names(phi3) == PHI3
    # the Train form's choices for the (not downloaded) hub model: the real, fused names
    assert models.linear_layer_names("microsoft/Phi-4-mini-instruct") == sorted(PHI3)
    assert train_tab.module_choices("microsoft/Phi-4-mini-instruct") == sorted(PHI3)
    assert train_tab.module_choices("Qwen/Qwen3-0.6B") == sorted(LLAMA)
    # presets expand against them
    assert JobSpec(target_modules=["attention"]).resolved_target_modules(PHI3) == ["o_proj", "qkv_proj"]
    assert JobSpec(target_modules=["mlp"]).resolved_target_modules(PHI3) == ["down_proj", "gate_up_proj"]
    assert train_tab.preset("microsoft/Phi-4-mini-instruct", "attention")["value"] == ["o_proj", "qkv_proj"]
    # validation accepts them and names them when a Llama name is asked for
    assert "target_modules" not in JobSpec(dataset="d", target_modules=["qkv_proj"]).validate(linear_names=PHI3)
    error = JobSpec(dataset="d", target_modules=["q_proj"]).validate(linear_names=PHI3)["target_modules"]
    assert error == "the model has no linear layer named 'q_proj'; it has down_proj, gate_up_proj, o_proj, qkv_proj"


def _safetensors(path, tensors: dict[str, list[int]]) -> None:
    header = {name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]} for name, shape in tensors.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_a_local_folder_of_an_unknown_architecture_gets_its_real_linear_layers(studio_home, tmp_path):
    from studio import models
    from studio.ui import train_tab

    folder = tmp_path / "neox-like"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
                                                    "hidden_size": 16, "num_hidden_layers": 2}))
    _safetensors(folder / "model.safetensors", {
        "gpt_neox.embed_in.weight": [64, 16],
        **{f"gpt_neox.layers.{i}.attention.query_key_value.weight": [48, 16] for i in range(2)},
        **{f"gpt_neox.layers.{i}.attention.dense.weight": [16, 16] for i in range(2)},
        **{f"gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight": [64, 16] for i in range(2)},
        **{f"gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight": [16, 64] for i in range(2)},
        "gpt_neox.layers.0.input_layernorm.weight": [16],
        "embed_out.weight": [64, 16]})
    assert family_of(catalog.read_local_config(folder)) is None
    real = ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    assert models.linear_layer_names(str(folder)) == real
    assert train_tab.module_choices(str(folder)) == real
    assert gguf_problem(catalog.read_local_config(folder)).startswith("GGUF export supports these families:")


def test_the_picker_lists_every_family_with_size_and_licence():
    from studio.ui.train_tab import base_model_choices

    choices = base_model_choices()
    assert choices[0] == ("SmolLM2-135M-Instruct · SmolLM2/SmolLM3 · 135M · Apache-2.0 · bundled", BUNDLED_MODEL)
    assert ("Qwen2.5-0.5B-Instruct · Qwen2.5 · 0.5B · Apache-2.0", "Qwen/Qwen2.5-0.5B-Instruct") in choices
    assert ("gemma-2-2b-it · Gemma 2 · 2B · Gemma Terms of Use", "google/gemma-2-2b-it") in choices
    assert ("Ministral-8B-Instruct-2410 · Mistral/Ministral · 8B · Mistral Research License",
            "mistralai/Ministral-8B-Instruct-2410") in choices
    values = [value for _, value in choices]
    assert len(values) == len(set(values)) == len(published_models())  # the bundled model listed once
    listed = {published(v)[0].name for v in values}
    assert listed == set(ROWS)
    # grouped: each family's models together, in the table's order (the bundled model first)
    order = [published(v)[0].name for v in values[1:]]
    assert order == sorted(order, key=list(ROWS).index)


def test_the_memory_estimate_answers_for_every_listed_model_without_a_download(studio_home):
    from studio.ui.train_tab import base_model_choices, estimate_markdown

    for _, value in base_model_choices():
        text = estimate_markdown(JobSpec(dataset="d", base_model=value))
        assert text.startswith("**Estimated peak memory: "), (value, text)
    gemma3 = estimate_markdown(JobSpec(dataset="d", base_model="google/gemma-3-4b-it"))
    assert "not the 0.4B vision tower" in gemma3
    phi = estimate_markdown(JobSpec(dataset="d", base_model="microsoft/phi-4", target_modules=["qkv_proj"]))
    assert phi.startswith("**Estimated peak memory: ")


def test_families_stays_free_of_the_training_stack():
    import subprocess
    import sys

    code = ("import sys, studio.families; "
            "sys.exit(1 if any(m in sys.modules for m in ('torch', 'transformers', 'gradio')) else 0)")
    root = str(families.__file__).rsplit("/studio/", 1)[0]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
