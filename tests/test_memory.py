"""studio.memory and studio.catalog: published figures, monotonicity, exact parameter counts, header reading."""
from __future__ import annotations

import json
import struct

import pytest

from studio import catalog, memory
from studio.catalog import ARCHITECTURES, BUNDLED_MODEL, config_for, linear_layer_names
from studio.memory import Estimate, estimate, estimate_for_spec
from studio.spec import JobSpec

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def est(model: str, **kw) -> Estimate:
    args = dict(bits=4, r=16, target_modules=ALL, batch_size=1, seq_len=512, gradient_checkpointing=True)
    return estimate(config_for(model), **{**args, **kw})


# ---- published figures ------------------------------------------------------------------------------------

def test_qlora_paper_65b_fits_a_48gb_gpu():
    # QLoRA paper: LLaMA-65B fine-tuned on one 48 GB GPU (NF4 + double quant, r=64 on all linear layers,
    # batch 1, ~512 tokens, gradient checkpointing, bf16 adapters, paged 32-bit AdamW)
    e = est("huggyllama/llama-65b", r=64, optimizer_bytes=4)
    assert 40 < e.total_gb < 48
    assert e.fits()[48] and not e.fits()[40]
    # the 4-bit weights alone are about 0.5 byte per parameter
    assert 30 < e.breakdown["base weights"] < 32.5
    # with torch AdamW (bf16 states) or with fp32 adapters (peft's default) it stays under 48 GB too
    assert est("huggyllama/llama-65b", r=64).total_gb < 48
    assert est("huggyllama/llama-65b", r=64, adapter_bytes=4).total_gb < 48


def test_qlora_paper_33b_fits_a_24gb_gpu():
    assert est("huggyllama/llama-30b", r=64, optimizer_bytes=4).fits()[24]


def test_adapter_and_optimizer_dtypes():
    bf16 = est("meta-llama/Meta-Llama-3-8B", gradient_checkpointing=False)  # quantised: bf16 adapters and states
    fp32 = est("meta-llama/Meta-Llama-3-8B", gradient_checkpointing=False, adapter_bytes=4, optimizer_bytes=4)
    assert fp32.breakdown["LoRA gradients"] == pytest.approx(2 * bf16.breakdown["LoRA gradients"])
    assert fp32.breakdown["optimizer states"] == pytest.approx(2 * bf16.breakdown["optimizer states"])
    # under autocast fp32 adapters also keep a bf16 copy for backward: 4 + 2 bytes per parameter ...
    assert fp32.breakdown["LoRA weights"] == pytest.approx(3 * bf16.breakdown["LoRA weights"])
    # ... of every layer, or of the one layer being recomputed under gradient checkpointing
    ckpt = est("meta-llama/Meta-Llama-3-8B", adapter_bytes=4)
    assert ckpt.breakdown["LoRA weights"] == pytest.approx(bf16.breakdown["LoRA weights"] * (2 + 1 / 32))


def test_double_quantization_saves_about_0_37_bit_per_parameter():
    # QLoRA paper section 3: constants cost 32/64 = 0.5 bit per weight, 0.127 bit with double quantisation
    cfg = config_for("huggyllama/llama-65b")
    a = estimate(cfg, bits=4, r=8, target_modules=["q_proj"], batch_size=1, seq_len=64,
                 gradient_checkpointing=True, double_quant=False)
    b = estimate(cfg, bits=4, r=8, target_modules=["q_proj"], batch_size=1, seq_len=64,
                 gradient_checkpointing=True, double_quant=True)
    linear = 80 * (4 * 8192 * 8192 + 3 * 8192 * 22016)
    assert a.breakdown["quantization constants"] * memory.GIB * 8 / linear == pytest.approx(0.5)
    assert b.breakdown["quantization constants"] * memory.GIB * 8 / linear == pytest.approx(0.127, abs=0.001)


@pytest.mark.parametrize("kw", [dict(seq_len=512, gradient_checkpointing=True),
                                dict(seq_len=256, gradient_checkpointing=False),
                                dict(seq_len=1024, gradient_checkpointing=True)])
def test_llama3_8b_qlora_needs_6_to_10_gb_at_short_sequences(kw):
    assert 6 <= est("meta-llama/Meta-Llama-3-8B", bits=4, **kw).total_gb <= 10


@pytest.mark.parametrize("kw", [dict(batch_size=1, seq_len=512, gradient_checkpointing=False),
                                dict(batch_size=2, seq_len=1024, gradient_checkpointing=True)])
def test_llama3_8b_lora_16bit_needs_18_to_22_gb(kw):
    e = est("meta-llama/Meta-Llama-3-8B", bits=16, **kw)
    assert 18 <= e.total_gb <= 22
    assert e.fits()[24] and not e.fits()[16]


def test_llama3_70b_qlora_needs_a_48gb_gpu():
    e = est("meta-llama/Meta-Llama-3-70B", bits=4)
    assert e.fits()[48] and not e.fits()[40]
    assert not est("meta-llama/Meta-Llama-3-70B", bits=16).fits()[80]


@pytest.mark.parametrize("model,count", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008), ("Qwen/Qwen2.5-0.5B", 494_032_768),
    ("Qwen/Qwen2.5-7B", 7_615_616_512), ("meta-llama/Llama-2-7b-hf", 6_738_415_616),
    ("meta-llama/Llama-2-13b-hf", 13_015_864_320), ("mistralai/Mistral-7B-v0.1", 7_241_732_096),
    ("meta-llama/Meta-Llama-3-8B", 8_030_261_248), ("meta-llama/Meta-Llama-3-70B", 70_553_706_496),
    ("huggyllama/llama-65b", 65_285_660_672)])
def test_base_parameter_counts_match_the_published_models(model, count):
    e = est(model)
    assert e.total_params - e.trainable_params == count


# ---- monotonicity --------------------------------------------------------------------------------------

BASE = dict(bits=4, r=16, target_modules=ALL, batch_size=2, seq_len=512, gradient_checkpointing=False)


def total(**kw) -> float:
    return estimate(config_for("meta-llama/Meta-Llama-3-8B"), **{**BASE, **kw}).total_gb


def test_memory_grows_with_rank_sequence_and_batch():
    assert total(r=8) < total(r=16) < total(r=64) < total(r=256)
    assert total(seq_len=256) < total(seq_len=512) < total(seq_len=2048)
    assert total(batch_size=1) < total(batch_size=2) < total(batch_size=8)


def test_gradient_checkpointing_saves_memory():
    assert total(gradient_checkpointing=True) < total(gradient_checkpointing=False)
    with_ckpt = estimate(config_for("meta-llama/Meta-Llama-3-8B"), **{**BASE, "gradient_checkpointing": True})
    without = estimate(config_for("meta-llama/Meta-Llama-3-8B"), **BASE)
    assert with_ckpt.breakdown["activations"] < without.breakdown["activations"] / 5
    assert with_ckpt.breakdown["logits"] == without.breakdown["logits"]


def test_fewer_bits_use_less_memory():
    assert total(bits=4) < total(bits=8) < total(bits=16) < total(bits=32)
    assert total(bits=4, double_quant=True) < total(bits=4, double_quant=False)


def test_more_target_modules_use_more_memory_and_dora_more_still():
    assert total(target_modules=["q_proj", "v_proj"]) < total(target_modules=ALL) < total(use_dora=True)


def test_breakdown_sums_to_total_in_term_order():
    e = estimate(config_for(BUNDLED_MODEL), **BASE)
    assert list(e.breakdown) == list(memory.TERMS)
    assert e.total_gb == pytest.approx(sum(e.breakdown.values()))
    assert all(v >= 0 for v in e.breakdown.values())


def test_cpu_branch_has_no_cuda_context_but_the_python_baseline():
    cpu = estimate(config_for(BUNDLED_MODEL), **{**BASE, "device": "cpu"})
    cuda = estimate(config_for(BUNDLED_MODEL), **BASE)
    assert cuda.breakdown["framework overhead"] == pytest.approx(memory.CUDA_CONTEXT_GIB)
    assert cpu.breakdown["framework overhead"] > memory.CPU_IMPORTS_GIB


def test_presets_resolve_and_unknown_names_are_refused():
    cfg = config_for(BUNDLED_MODEL)
    a = estimate(cfg, **{**BASE, "target_modules": ["all-linear"]})
    b = estimate(cfg, **BASE)
    assert a.trainable_params == b.trainable_params
    with pytest.raises(ValueError, match="no linear layer named 'qkv'"):
        estimate(cfg, **{**BASE, "target_modules": ["qkv"]})
    with pytest.raises(ValueError, match="bits"):
        estimate(cfg, **{**BASE, "bits": 3})


# ---- the exact parameter count, against peft ----------------------------------------------------------------

@pytest.mark.parametrize("r,targets,dora", [(8, ALL, False), (16, ["q_proj", "v_proj"], False),
                                            (4, ["gate_proj", "down_proj", "o_proj"], True)])
def test_trainable_parameters_equal_peft_count(tiny_model_dir, r, targets, dora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_model_dir / "config.json").read_text())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, use_dora=dora))
    trainable, everything = model.get_nb_trainable_parameters()
    e = estimate(config, bits=32, r=r, target_modules=targets, batch_size=1, seq_len=32,
                 gradient_checkpointing=False, device="cpu", use_dora=dora)
    assert e.trainable_params == trainable
    assert e.total_params == everything


def test_activation_formula_matches_the_tensors_autograd_keeps():
    """One decoder layer's saved tensors (3-layer minus 2-layer model), read with saved_tensors_hooks."""
    import gc
    import weakref

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=160, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=256)
    b, s = 2, 32

    def kept(layers: int, dropout: float) -> int:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"},
                                             num_hidden_layers=layers))
        model = get_peft_model(model, LoraConfig(r=4, lora_dropout=dropout, target_modules=ALL)).train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        refs = []
        ids = torch.randint(0, 300, (b, s))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: refs.append(weakref.ref(t)) or t, lambda t: t):
            out = model(input_ids=ids, labels=ids)
        gc.collect()
        alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (w() for w in refs)
                 if t is not None and t.untyped_storage().data_ptr() not in params}
        del out
        return sum(alive.values())

    def predicted(layers: int, dropout: float) -> float:
        e = estimate({**cfg, "num_hidden_layers": layers}, bits=32, r=4, target_modules=ALL, batch_size=b,
                     seq_len=s, gradient_checkpointing=False, compute_bytes=4, device="cpu", lora_dropout=dropout)
        return e.breakdown["activations"] * memory.GIB

    for dropout in (0.05, 0.0):
        measured = kept(3, dropout) - kept(2, dropout)
        assert predicted(3, dropout) - predicted(2, dropout) == pytest.approx(measured, rel=0.01)


# ---- Estimate ---------------------------------------------------------------------------------------------

def test_trainable_text_for_the_bundled_model():
    e = estimate(config_for(BUNDLED_MODEL), bits=4, r=16, target_modules=["all-linear"], batch_size=1,
                 seq_len=512, gradient_checkpointing=False)
    assert e.trainable_params == 4_884_480
    assert e.trainable_text() == "4.9M of 139M, 3.5%"


def test_trainable_text_units_and_small_shares():
    assert Estimate(total_params=65_285_660_672 + 799_539_200, trainable_params=799_539_200).trainable_text() \
        == "800M of 66.1B, 1.2%"
    assert Estimate(total_params=8_030_261_248, trainable_params=3_407_872).trainable_text() \
        == "3.4M of 8.0B, 0.042%"
    assert Estimate(total_params=1500, trainable_params=12).trainable_text() == "12 of 1.5K, 0.8%"
    assert Estimate(total_params=99_960_000, trainable_params=999_950).trainable_text() == "1.0M of 100M, 1.0%"


def test_fits_lists_common_device_sizes():
    e = Estimate(total_params=1, trainable_params=1, breakdown={}, total_gb=20.5)
    assert e.fits() == {8: False, 12: False, 16: False, 24: True, 40: True, 48: True, 80: True}


def test_estimate_for_spec_follows_the_spec():
    cfg = config_for(BUNDLED_MODEL)
    spec = JobSpec(dataset="d")
    qlora = estimate_for_spec(spec, cfg)
    lora = estimate_for_spec(JobSpec(dataset="d", load_in_4bit=False), cfg)
    assert qlora.breakdown["quantization constants"] > 0 and lora.breakdown["quantization constants"] == 0
    assert qlora.breakdown["base weights"] < lora.breakdown["base weights"]
    assert qlora.trainable_params == 4_884_480  # r=16, all-linear
    # DPO runs chosen and rejected together: twice the logits
    dpo = estimate_for_spec(JobSpec(dataset="d", method="dpo"), cfg)
    assert dpo.breakdown["logits"] == pytest.approx(2 * qlora.breakdown["logits"])
    # on CPU precision auto means fp32 activations
    cpu = estimate_for_spec(spec, cfg, device="cpu")
    assert cpu.breakdown["logits"] == qlora.breakdown["logits"]  # 12 bytes per logit either way
    assert cpu.breakdown["activations"] > qlora.breakdown["activations"]


# ---- catalog ---------------------------------------------------------------------------------------------

def test_table_lookups_by_hub_id_case_and_tail():
    llama3 = ARCHITECTURES["meta-llama/Meta-Llama-3-8B"]
    assert config_for("meta-llama/Meta-Llama-3-8B") == llama3
    assert config_for("META-LLAMA/meta-llama-3-8b") == llama3
    assert config_for("Meta-Llama-3-8B") == llama3
    assert config_for("someone/Meta-Llama-3-8B") == llama3
    assert config_for(BUNDLED_MODEL)["hidden_size"] == 576
    assert ARCHITECTURES["SmolLM2-135M-Instruct"] is ARCHITECTURES["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert config_for("nobody/unknown-model") is None and config_for("") is None


def test_table_values():
    smol = ARCHITECTURES[BUNDLED_MODEL]
    assert (smol["hidden_size"], smol["intermediate_size"], smol["num_hidden_layers"], smol["num_attention_heads"],
            smol["num_key_value_heads"], smol["vocab_size"], smol["tie_word_embeddings"]) == \
        (576, 1536, 30, 9, 3, 49152, True)
    assert ARCHITECTURES["meta-llama/Meta-Llama-3-70B"]["num_key_value_heads"] == 8
    assert ARCHITECTURES["Qwen/Qwen2.5-7B"]["head_dim"] == 128
    for config in ARCHITECTURES.values():  # Llama projection names, except the fused Phi-3 layout
        assert linear_layer_names(config) == (FUSED if config["model_type"] == "phi3" else ALL)


def test_local_folder_config_comes_first(tiny_model_dir, tmp_path):
    local = config_for(BUNDLED_MODEL, str(tiny_model_dir))
    assert local["hidden_size"] == 64 and local["num_hidden_layers"] == 2
    assert config_for(str(tiny_model_dir))["hidden_size"] == 64
    assert catalog.read_local_config(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    assert catalog.read_local_config(tmp_path) is None
    assert config_for(BUNDLED_MODEL, str(tmp_path))["hidden_size"] == 576  # unreadable folder: the table
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {
        "model_type": "llama", "hidden_size": 32}}))
    assert catalog.read_local_config(tmp_path)["hidden_size"] == 32


def test_linear_layer_names_for_unknown_architectures_is_empty():
    assert linear_layer_names({"model_type": "gpt2"}) == []
    assert linear_layer_names({"model_type": "mistral"}) == ALL


def test_fused_layers_count_as_their_parts():
    """Phi-3's qkv_proj is q, k and v side by side, gate_up_proj gate and up: the same weights, adapters on fewer,
    wider layers."""
    phi3 = config_for("microsoft/Phi-3-mini-4k-instruct")
    shape = memory.ModelShape.from_config(phi3)
    assert shape.linears() == {"qkv_proj": (3072, 3 * 3072), "o_proj": (3072, 3072),
                               "gate_up_proj": (3072, 2 * 8192), "down_proj": (8192, 3072)}
    unfused = memory.ModelShape.from_config({**phi3, "model_type": "llama"})
    assert shape.linear_weights() == unfused.linear_weights()
    fused = estimate(phi3, bits=16, r=8, target_modules=["all-linear"], batch_size=1, seq_len=256,
                     gradient_checkpointing=False)
    split = estimate({**phi3, "model_type": "llama"}, bits=16, r=8, target_modules=["all-linear"], batch_size=1,
                     seq_len=256, gradient_checkpointing=False)
    assert fused.total_params - fused.trainable_params == split.total_params - split.trainable_params
    # LoRA on qkv_proj: r x (3072 + 9216) per layer, against r x 3 x (3072 + 3072) on q, k and v apart
    assert fused.trainable_params == 32 * 8 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072))
    assert fused.trainable_params < split.trainable_params
    assert estimate(phi3, bits=4, r=8, target_modules=["qkv_proj", "gate_up_proj"], batch_size=1, seq_len=256,
                    gradient_checkpointing=True).total_gb > 0
    with pytest.raises(ValueError, match="no linear layer named 'q_proj'; it has qkv_proj, o_proj, gate_up_proj"):
        estimate(phi3, bits=4, r=8, target_modules=["q_proj"], batch_size=1, seq_len=256, gradient_checkpointing=True)


def test_every_listed_model_has_an_estimate_that_counts_its_published_parameters():
    """The shapes transcribed into the table reproduce each model card's parameter count (within 1.5%; an
    image-text checkpoint's vision tower is left out, and said so)."""
    from studio.families import published_models

    for family, model in published_models():
        config = config_for(model.hub_id)
        e = estimate_for_spec(JobSpec(dataset="d", base_model=model.hub_id), config)
        base = (e.total_params - e.trainable_params) / 1e9
        assert base == pytest.approx(model.params - model.extra_params, rel=0.015), model.hub_id
        assert 0 < e.total_gb < 80 and e.trainable_params > 0, model.hub_id


def test_safetensors_header_of_the_tiny_model(tiny_model_dir):
    layers = catalog.linear_layers_from_safetensors(tiny_model_dir)
    assert sorted(layers) == sorted(ALL)
    # (out_features, in_features): hidden 64, 4 heads of 16, 2 kv heads, intermediate 128
    assert layers["q_proj"] == (64, 64) and layers["k_proj"] == (32, 64) and layers["v_proj"] == (32, 64)
    assert layers["gate_proj"] == (128, 64) and layers["down_proj"] == (64, 128)


def test_safetensors_header_reader_is_pure_and_careful(tmp_path):
    header = {"__metadata__": {"format": "pt"},
              "model.embed_tokens.weight": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [0, 80]},
              "model.layers.0.self_attn.qkv_proj.weight": {"dtype": "BF16", "shape": [12, 4], "data_offsets": [0, 1]},
              "model.layers.0.input_layernorm.weight": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 1]},
              "model.layers.1.mlp.fc1.weight": {"dtype": "BF16", "shape": [16, 4], "data_offsets": [0, 1]},
              "model.layers.1.mlp.fc1.bias": {"dtype": "BF16", "shape": [16], "data_offsets": [0, 1]},
              "lm_head.weight": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [0, 1]}}
    raw = json.dumps(header).encode()
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\xff" * 16)  # garbage: skipped
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert catalog.linear_layers_from_safetensors(tmp_path) == {"qkv_proj": (12, 4), "fc1": (16, 4)}
    assert catalog.linear_layers_from_safetensors(tmp_path / "missing") == {}


def test_catalog_and_memory_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import studio.catalog, studio.memory; "
            "sys.exit(1 if any(m in sys.modules for m in ('torch', 'transformers')) else 0)")
    root = str(catalog.__file__).rsplit("/studio/", 1)[0]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_estimate_follows_the_workers_device_precision_and_dequant_cache():
    """What the worker will do decides the estimate: native bf16 halves activations, and an unquantised
    frozen base on a GPU (a CPU keeps it in fp32, as chat serves it there); the CPU dequantisation cache of a 4-bit
    run is its own term."""
    cfg = config_for(BUNDLED_MODEL)
    lora = JobSpec(dataset="d", load_in_4bit=False)
    fp32 = estimate_for_spec(lora, cfg, "cpu", bf16=False)
    bf16 = estimate_for_spec(lora, cfg, "cpu", bf16=True)
    assert bf16.breakdown["base weights"] == pytest.approx(fp32.breakdown["base weights"])
    assert bf16.breakdown["activations"] < fp32.breakdown["activations"]
    gpu_fp32 = estimate_for_spec(JobSpec(dataset="d", load_in_4bit=False, precision="fp32"), cfg, "cuda", bf16=True)
    gpu_bf16 = estimate_for_spec(lora, cfg, "cuda", bf16=True)
    assert gpu_bf16.breakdown["base weights"] == pytest.approx(gpu_fp32.breakdown["base weights"] / 2)
    qlora = JobSpec(dataset="d")
    cached = estimate_for_spec(qlora, cfg, "cpu", bf16=False, memory_gb=24)
    linear = 30 * 576 * (576 + 192 + 192 + 576 + 3 * 1536)  # SmolLM2: 30 layers of q, k, v, o, gate, up, down
    assert cached.breakdown[memory.DEQUANT_TERM] == pytest.approx(linear * 4 / memory.GIB)
    assert cached.total_gb == pytest.approx(sum(cached.breakdown.values()))
    fast = estimate_for_spec(qlora, cfg, "cpu", bf16=True, memory_gb=24, fast_4bit=True)
    assert memory.DEQUANT_TERM not in fast.breakdown  # AVX-512: bitsandbytes' own kernels, no cache
    off = estimate_for_spec(JobSpec(dataset="d", dequant_cache="off"), cfg, "cpu", bf16=False, memory_gb=24)
    assert memory.DEQUANT_TERM not in off.breakdown
    assert memory.DEQUANT_TERM not in estimate_for_spec(qlora, cfg, "cpu", memory_gb=0.1).breakdown  # too small
    assert memory.DEQUANT_TERM not in estimate_for_spec(qlora, cfg, "cuda", memory_gb=80).breakdown
    on_gpu = estimate_for_spec(JobSpec(dataset="d", dequant_cache="on"), cfg, "cuda", memory_gb=80)
    assert on_gpu.breakdown[memory.DEQUANT_TERM] == pytest.approx(linear * 2 / memory.GIB)  # bf16 copies


def test_grpo_counts_the_completions_it_samples_and_trains():
    """GRPO samples batch x gradient accumulation completions (a KV cache of prompt + completion each), then
    trains each prompt followed by its completion: longer completions cost both, more accumulation only the cache."""
    config = config_for(BUNDLED_MODEL)
    base = dict(dataset="d", method="grpo", load_in_4bit=False, per_device_train_batch_size=4, max_length=256,
                num_generations=4, reward_answer="boxed")

    def grpo(**kw):
        return estimate_for_spec(JobSpec(**{**base, **kw}), config, "cpu")

    short, long_, accumulated = grpo(max_completion_length=64), grpo(max_completion_length=384), grpo(
        max_completion_length=64, gradient_accumulation_steps=2)
    sft = estimate_for_spec(JobSpec(**{**base, "method": "sft", "max_length": 256 + 64}), config, "cpu")
    assert short.breakdown["activations"] == pytest.approx(sft.breakdown["activations"])  # prompt + completion
    # the cache: 2 (key, value) x 30 layers x 192 (3 KV heads x 64) x 4 bytes x 4 sequences x 320 tokens
    assert short.breakdown[memory.GENERATION_TERM] == pytest.approx(2 * 30 * 192 * 4 * 4 * 320 / memory.GIB)
    assert long_.breakdown[memory.GENERATION_TERM] == pytest.approx(2 * short.breakdown[memory.GENERATION_TERM])
    assert long_.breakdown["activations"] > 1.9 * short.breakdown["activations"]
    assert accumulated.breakdown[memory.GENERATION_TERM] == pytest.approx(2 * short.breakdown[memory.GENERATION_TERM])
    assert accumulated.breakdown["activations"] == short.breakdown["activations"]
