"""Measure real peak memory of LoRA / QLoRA training steps on CPU and compare it with studio.memory.

    .venv/bin/python bench/memory.py                 # convert the bundled model once, run every configuration
    .venv/bin/python bench/memory.py --model DIR     # any local Hugging Face Llama folder instead
    .venv/bin/python bench/memory.py --audit         # check the per-layer activation formula tensor by tensor
    .venv/bin/python bench/memory.py --published     # estimates beside published GPU figures (arithmetic only)
    .venv/bin/python bench/memory.py --methods       # SFT, DPO, KTO, ORPO and GRPO through the worker's trainers
    .venv/bin/python bench/memory.py --methods grpo  # only the methods named
    .venv/bin/python bench/memory.py --adapters      # LoRA, IA3, prompt and prefix tuning; 8-bit AdamW
    python bench/memory.py --device cuda --model DIR # on a GPU: torch.cuda.max_memory_allocated, bf16 compute

Each configuration runs in its own subprocess so peaks never mix. The child imports the training stack,
reads its resident size (VmRSS: the python/torch baseline), loads the model, wraps it with peft, resets the
kernel's peak counter (``echo 5 > /proc/self/clear_refs``), runs a few forward + backward + AdamW steps the way
the HF Trainer does (the outputs object is dropped before backward; gradients are set to None after each
step) and reads the peak (VmHWM). Measured = peak - baseline; it is compared with the estimate minus the
import-baseline share of its framework-overhead term (CPU_IMPORTS_GIB), the part the baseline already holds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_CACHE = Path("/tmp/smollm2-cache")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (bits, r, seq_len, gradient_checkpointing): quantisation x rank x sequence length, plus checkpointing
CONFIGS = [
    (32, 8, 128, False), (32, 64, 128, False), (32, 64, 512, False), (32, 8, 512, True),
    (4, 8, 128, False), (4, 64, 128, False), (4, 64, 512, False),
]
# on a GPU: bf16 base (as hub checkpoints ship) or NF4 with bf16 compute, bf16 autocast as TRL runs it
CUDA_CONFIGS = [
    (16, 8, 512, False), (16, 64, 512, False), (16, 64, 2048, False), (16, 8, 2048, True),
    (4, 8, 512, False), (4, 64, 512, False), (4, 64, 2048, False), (4, 16, 2048, True),
]


def bundled_model_dir(cache: Path = DEFAULT_CACHE) -> Path:
    """A safetensors copy of the bundled GGUF model, converted once (about a minute) and reused."""
    if (cache / "config.json").exists() and any(cache.glob("*.safetensors")):
        return cache
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from studio.models import bundled_gguf

    gguf = bundled_gguf()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(cache, safe_serialization=True)
    return cache


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _lora_model(model_dir: str, bits: int, r: int, checkpointing: bool, dtype, device_map=None):
    """The measured model: base at ``dtype`` (or NF4 with bf16 compute), LoRA on all seven projections
    with bf16 adapters under 4-bit as TRL does. Returns (model, optimizer, trainable, vocab)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype, **({"device_map": device_map} if device_map else {})}
    if bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    if bits == 4:
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):  # the CPU inference layout breaks backward
                module.support_avx512bf16_for_cpu = False
        for param in model.parameters():  # as TRL does for QLoRA: bf16 adapters
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer, trainable, model.config.vocab_size


def measure_one_cuda(model_dir: str, bits: int, r: int, seq_len: int, checkpointing: bool, batch: int,
                     steps: int) -> dict:
    """One configuration on the GPU, in this process: the caching allocator's peak (the CUDA context and
    kernels are outside it). Returns sizes in bytes."""
    import peft
    import torch

    torch.manual_seed(0)
    model, optimizer, trainable, vocab = _lora_model(model_dir, bits, r, checkpointing, torch.bfloat16, {"": 0})
    torch.cuda.synchronize()
    loaded = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch, seq_len), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    torch.cuda.synchronize()
    return {"baseline": 0, "loaded": loaded, "peak": torch.cuda.max_memory_allocated(), "trainable": trainable,
            "seconds_per_step": (time.time() - t0) / steps, "peft": peft.__version__}


def measure_one(model_dir: str, bits: int, r: int, seq_len: int, checkpointing: bool, batch: int, steps: int,
                threads: int = 1) -> dict:
    """One configuration, in this process. Returns sizes in bytes."""
    import gc

    import bitsandbytes  # noqa: F401  (the baseline includes the whole training stack)
    import peft
    import torch
    import transformers  # noqa: F401

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    gc.collect()
    baseline = _rss_kib("VmRSS") * 1024
    model, optimizer, trainable, vocab = _lora_model(model_dir, bits, r, checkpointing, torch.float32)
    gc.collect()
    loaded = _rss_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: loading peaks are not training peaks
        f.write("5")
    t0 = time.time()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch, seq_len))
        loss = model(input_ids=ids, labels=ids).loss  # the outputs (and logits) go before backward
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    peak = _rss_kib("VmHWM") * 1024
    return {"baseline": baseline, "loaded": loaded, "peak": peak, "trainable": trainable,
            "seconds_per_step": (time.time() - t0) / steps, "peft": peft.__version__}


def run_child(model_dir: Path, cfg: tuple, batch: int, steps: int, threads: int, env: dict | None = None,
              device: str = "cpu") -> dict:
    bits, r, seq, ckpt = cfg
    cmd = [sys.executable, __file__, "--model", str(model_dir), "--device", device, "--one",
           json.dumps({"bits": bits, "r": r, "seq_len": seq, "checkpointing": ckpt, "batch": batch, "steps": steps,
                       "threads": threads})]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"measurement {cfg} failed:\n{out.stderr[-3000:]}")


def estimate_for(model_dir: Path, cfg: tuple, batch: int, device: str = "cpu"):
    from studio import catalog, memory

    bits, r, seq, ckpt = cfg
    config = catalog.read_local_config(model_dir)
    return memory.estimate(config, bits=bits, r=r, target_modules=TARGETS, batch_size=batch, seq_len=seq,
                           gradient_checkpointing=ckpt, compute_bytes=4 if device == "cpu" else 2, device=device,
                           lora_dropout=0.05)


def cuda_table(model_dir: Path, batch: int, steps: int, save: str | None = None) -> int:
    """estimate (without the CUDA context, which the allocator does not see) / torch.cuda.max_memory_allocated."""
    from studio import memory
    from studio.memory import GIB

    import torch

    print(f"model {model_dir.name} on {torch.cuda.get_device_name()}, batch {batch}, {steps} steps per configuration, "
          f"LoRA on all 7 linear layers, dropout 0.05, bf16 autocast; GiB (allocator peak, CUDA context excluded)")
    head = f"| {'config':<28} | {'trainable':>9} | {'estimate':>8} | {'measured':>8} | {'ratio':>5} | {'s/step':>6} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    ratios, rows = [], []
    for cfg in CUDA_CONFIGS:
        bits, r, seq, ckpt = cfg
        try:
            m = run_child(model_dir, cfg, batch, steps, 1, device="cuda")
        except RuntimeError as exc:
            print(f"| {str(cfg):<28} | failed: {str(exc).splitlines()[-1][:200]}", flush=True)
            continue
        est = estimate_for(model_dir, cfg, batch, "cuda")
        predicted = est.total_gb - memory.CUDA_CONTEXT_GIB
        measured = m["peak"] / GIB
        ratios.append(predicted / measured)
        rows.append({"config": list(cfg), "batch": batch, "estimate_gib": predicted, "measured_gib": measured,
                     "breakdown": est.breakdown, **m})
        name = f"{'bf16' if bits == 16 else 'nf4'} r={r} seq={seq}{' ckpt' if ckpt else ''}"
        print(f"| {name:<28} | {m['trainable'] / 1e6:8.2f}M | {predicted:8.3f} | {measured:8.3f} | "
              f"{predicted / measured:5.2f} | {m['seconds_per_step']:6.3f} |", flush=True)
    if ratios:
        print(f"ratio estimate/measured: min {min(ratios):.2f}, max {max(ratios):.2f}")
    if save:
        Path(save).write_text(json.dumps(rows, indent=1))
    return 0 if ratios and all(0.8 <= x <= 1.25 for x in ratios) else 1


def main_table(model_dir: Path, batch: int, steps: int, threads: int, only: str | None,
               fixed_threshold: bool, save: str | None = None) -> int:
    from studio import memory
    from studio.memory import GIB

    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_threshold else {}
    print(f"model {model_dir}, batch {batch}, {steps} steps per configuration, {threads} thread(s), LoRA on all 7 "
          f"linear layers, dropout 0.05, fp32 activations; GiB{'; MALLOC_MMAP_THRESHOLD_=131072' * fixed_threshold}")
    head = (f"| {'config':<28} | {'trainable':>9} | {'estimate':>8} | {'measured':>8} | {'ratio':>5} | "
            f"{'baseline':>8} | {'s/step':>6} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    ratios, rows = [], []
    for cfg in CONFIGS:
        bits, r, seq, ckpt = cfg
        if only and only != ("fp32" if bits == 32 else "nf4"):
            continue
        m = run_child(model_dir, cfg, batch, steps, threads, env)
        est = estimate_for(model_dir, cfg, batch)
        assert est.trainable_params == m["trainable"], (est.trainable_params, m["trainable"])
        predicted = est.total_gb - memory.CPU_IMPORTS_GIB  # the baseline is subtracted from the measurement
        if fixed_threshold:  # glibc then returns freed activations at once: no retention term
            predicted -= est.breakdown["framework overhead"] - memory.CPU_IMPORTS_GIB - memory.CPU_KERNELS_GIB
        measured = (m["peak"] - m["baseline"]) / GIB
        ratios.append(predicted / measured)
        rows.append({"config": list(cfg), "batch": batch, "estimate_gib": predicted, "measured_gib": measured, **m})
        name = f"{'fp32' if bits == 32 else 'nf4'} r={r} seq={seq}{' ckpt' if ckpt else ''}"
        print(f"| {name:<28} | {m['trainable'] / 1e6:8.2f}M | {predicted:8.3f} | {measured:8.3f} | "
              f"{predicted / measured:5.2f} | {m['baseline'] / GIB:8.3f} | {m['seconds_per_step']:6.1f} |",
              flush=True)
    print(f"ratio estimate/measured: min {min(ratios):.2f}, max {max(ratios):.2f}")
    if save:
        Path(save).write_text(json.dumps(rows, indent=1))
    return 0 if all(0.8 <= x <= 1.25 for x in ratios) else 1


# ---- training methods: the worker's own trainers ----------------------------------------------------------------

# method -> extra spec fields; every run: fp32, LoRA r=8 on all linear layers, batch 2, rows filling max length
METHOD_CONFIGS = {
    "sft": {}, "dpo": {}, "kto": {}, "orpo": {},
    "grpo": {"num_generations": 2, "max_completion_length": 64, "reward_length_target": 64},
}
METHOD_SEQ = 256


def method_spec(model_dir: Path, method: str, steps: int):
    from studio.spec import JobSpec

    return JobSpec(base_model=str(model_dir), dataset="bench", method=method, load_in_4bit=False, r=8,
                   lora_alpha=16, per_device_train_batch_size=2, max_length=METHOD_SEQ, max_steps=steps,
                   eval_split=0.0, save_steps=10**6, precision="fp32", padding_free="off", lora_dropout=0.05,
                   **METHOD_CONFIGS[method])


def method_rows(method: str, n: int) -> tuple[str, list[dict]]:
    """Rows of the method's kind whose prompt + reply fill about max length (GRPO: the prompt alone)."""
    words = " ".join(f"word{i}" for i in range(METHOD_SEQ))
    half = " ".join(words.split()[:METHOD_SEQ // 5])  # ~2.4 tokens a word: prompt and reply ~ half each
    prompt = [{"role": "user", "content": half}]
    reply = [{"role": "assistant", "content": half}]
    if method == "grpo":
        return "prompt_only", [{"prompt": [{"role": "user", "content": " ".join(words.split()[:METHOD_SEQ // 3])}]}
                               for _ in range(n)]
    if method == "kto":
        return "unpaired_preference", [{"prompt": prompt, "completion": reply, "label": i % 2 == 0} for i in range(n)]
    if method in ("dpo", "orpo"):
        return "preference", [{"prompt": prompt, "chosen": reply, "rejected": reply} for _ in range(n)]
    return "chat", [{"messages": prompt + reply} for _ in range(n)]


def measure_method(model_dir: str, method: str, steps: int, threads: int = 1, spec=None) -> dict:
    """One method (or ``spec``) through the worker's own path (load_model_for_training, build_trainer)."""
    import gc
    import tempfile

    import bitsandbytes  # noqa: F401
    import torch
    import trl  # noqa: F401
    from transformers import TrainerCallback

    from workers import train
    from workers.methods import TRAINERS, grpo

    torch.set_num_threads(threads)
    spec = spec or method_spec(Path(model_dir), method, steps)
    if method == "grpo":  # sample every completion to its full length, as the estimate assumes
        config = grpo.grpo_config
        grpo.grpo_config = lambda *a, **k: _full_length(config(*a, **k), spec.max_completion_length)
    gc.collect()
    baseline = _rss_kib("VmRSS") * 1024
    model, tokenizer = train.load_model_for_training(spec, Path(model_dir), "cpu")
    kind, rows = TRAINERS[method].prepare(spec, *method_rows(method, 2 * steps * 2))
    trainer = train.build_trainer(spec, kind, model, tokenizer, rows, [], Path(tempfile.mkdtemp()), TrainerCallback(),
                                  "cpu")
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.time()
    trainer.train()
    peak = _rss_kib("VmHWM") * 1024
    return {"baseline": baseline, "peak": peak, "seconds_per_step": (time.time() - t0) / steps}


def _full_length(config, tokens: int):
    config.generation_kwargs = {**(config.generation_kwargs or {}), "min_new_tokens": tokens}
    return config


def methods_table(model_dir: Path, steps: int, threads: int, only: list[str] | None = None) -> int:
    cases = [(method, ["--method", method], method_spec(model_dir, method, steps)) for method in METHOD_CONFIGS
             if not only or method in only]
    return ratio_table(model_dir, steps, threads, cases,
                       f"fp32, LoRA r=8 on all linear layers, batch 2, max length {METHOD_SEQ}; GRPO: 2 generations of "
                       f"{METHOD_CONFIGS['grpo']['max_completion_length']} tokens")


# ---- adapter types and optimizers: SFT through the worker's trainer -------------------------------------------

# (peft_type, optim); bitsandbytes' paged optimizers need a GPU, and IA3's vectors are too small for 8-bit states
ADAPTER_CONFIGS = [("lora", "adamw_torch"), ("lora", "adamw_8bit"), ("ia3", "adamw_torch"),
                   ("prompt_tuning", "adamw_torch"), ("prefix_tuning", "adamw_torch"), ("prefix_tuning", "adamw_8bit")]


def adapter_spec(model_dir: Path, peft_type: str, optim: str, steps: int):
    from studio.spec import JobSpec

    return JobSpec.from_dict({**method_spec(model_dir, "sft", steps).to_dict(), "peft_type": peft_type, "optim": optim})


def adapters_table(model_dir: Path, steps: int, threads: int) -> int:
    cases = [(f"{peft_type}, {optim}", ["--adapter", f"{peft_type}:{optim}"],
              adapter_spec(model_dir, peft_type, optim, steps)) for peft_type, optim in ADAPTER_CONFIGS]
    return ratio_table(model_dir, steps, threads, cases,
                       f"fp32, SFT, batch 2, max length {METHOD_SEQ} (LoRA r=8 and IA3 on all linear layers, "
                       f"20 virtual tokens)")


def ratio_table(model_dir: Path, steps: int, threads: int, cases: list[tuple], setup: str) -> int:
    """Each case (name, the child's flags, its JobSpec) measured in its own subprocess through the worker's
    trainers, beside ``estimate_for_spec``; exit 0 when every ratio estimate / measured is within 0.8-1.25."""
    from studio import catalog, memory
    from studio.memory import GIB

    config = catalog.read_local_config(model_dir)
    print(f"model {model_dir}, {setup}, {steps} steps through the worker's trainers; GiB")
    print(f"| {'configuration':<30} | {'trainable':>9} | {'estimate':>8} | {'measured':>8} | {'ratio':>5} | "
          f"{'s/step':>6} |")
    print("|--------------------------------|-----------|----------|----------|-------|--------|")
    ratios = []
    for name, flags, spec in cases:
        cmd = [sys.executable, __file__, "--model", str(model_dir), *flags, "--steps", str(steps),
               "--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in out.stdout.splitlines()[::-1] if ln.startswith("{")), None)
        if line is None:
            print(f"| {name:<30} | failed: {out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else ''}")
            ratios.append(0.0)
            continue
        m = json.loads(line)
        est = memory.estimate_for_spec(spec, config, "cpu", bf16=False)
        predicted = est.total_gb - memory.CPU_IMPORTS_GIB  # the baseline is subtracted from the measurement
        measured = (m["peak"] - m["baseline"]) / GIB
        ratios.append(predicted / measured)
        print(f"| {name:<30} | {est.trainable_params:9,} | {predicted:8.3f} | {measured:8.3f} | "
              f"{predicted / measured:5.2f} | {m['seconds_per_step']:6.1f} |", flush=True)
    print(f"ratio estimate/measured: min {min(ratios):.2f}, max {max(ratios):.2f}")
    return 0 if all(0.8 <= x <= 1.25 for x in ratios) else 1


# ---- published figures: pure arithmetic, no model ------------------------------------------------------------

PUBLISHED = [
    # model, bits, r, batch, seq, checkpointing, extra estimate() arguments, what was published
    ("huggyllama/llama-65b", 4, 64, 1, 512, True, {"optimizer_bytes": 4},
     "QLoRA paper (paged 32-bit AdamW): fine-tuned on one 48 GB GPU"),
    ("huggyllama/llama-65b", 4, 64, 1, 512, True, {}, "same, with torch AdamW (bf16 states, as TRL runs it)"),
    ("huggyllama/llama-65b", 16, 64, 1, 512, True, {}, "QLoRA paper: 16-bit needs several GPUs (weights alone 130 GB)"),
    ("huggyllama/llama-30b", 4, 64, 1, 512, True, {"optimizer_bytes": 4},
     "QLoRA paper: 33B on one 24 GB consumer GPU"),
    ("meta-llama/Meta-Llama-3-8B", 4, 16, 1, 512, True, {}, "QLoRA of an 8B model at short sequences: ~6-10 GB"),
    ("meta-llama/Meta-Llama-3-8B", 4, 16, 1, 256, False, {}, "QLoRA of an 8B model at short sequences: ~6-10 GB"),
    ("meta-llama/Meta-Llama-3-8B", 16, 16, 1, 512, False, {}, "LoRA (16-bit) of an 8B model: ~18-22 GB"),
    ("meta-llama/Meta-Llama-3-8B", 16, 16, 2, 1024, True, {}, "LoRA (16-bit) of an 8B model: ~18-22 GB"),
    ("meta-llama/Meta-Llama-3-70B", 4, 16, 1, 512, True, {},
     "QLoRA of a 70B model: one 48 GB GPU (axolotl: 2 x 21 GB with FSDP)"),
    ("meta-llama/Meta-Llama-3-70B", 16, 16, 1, 512, True, {},
     "LoRA (16-bit) of a 70B model: weights alone 141 GB, 2+ x 80 GB"),
]


def published() -> int:
    from studio import catalog, memory

    print("| model | method | r | batch x seq | checkpointing | estimate (GiB) | fits | published |")
    print("|---|---|---|---|---|---|---|---|")
    for model, bits, r, batch, seq, ckpt, extra, note in PUBLISHED:
        e = memory.estimate(catalog.config_for(model), bits=bits, r=r, target_modules=TARGETS, batch_size=batch,
                            seq_len=seq, gradient_checkpointing=ckpt, **extra)
        fits = [gb for gb, ok in e.fits().items() if ok]
        print(f"| {model} | {'QLoRA (nf4, double quant)' if bits == 4 else 'LoRA, bf16 weights'} | {r} | "
              f"{batch} x {seq} | {'yes' if ckpt else 'no'} | {e.total_gb:.1f} | "
              f"{f'>= {fits[0]} GB' if fits else 'none'} | {note} |")
    return 0


# ---- audit: the per-layer activation formula, tensor by tensor ----------------------------------------------

def audit() -> int:
    """Bytes kept for backward per token by one decoder layer (the difference of a 3- and a 2-layer random
    model of SmolLM2's shape), read with saved_tensors_hooks, against ``memory.estimate``'s activations."""
    import contextlib
    import gc
    import weakref

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from studio import catalog, memory

    base = dict(catalog.ARCHITECTURES[catalog.BUNDLED_MODEL], vocab_size=1000)
    b, s = 2, 64

    def kept(layers, mode, dropout, dora, targets, ckpt):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{**base, "num_hidden_layers": layers}))
        model = model.to(torch.float32 if mode == "fp32" else torch.bfloat16)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets,
                                                 use_dora=dora))
        if mode == "bf16 + bf16 adapters":
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        refs = []

        def pack(t):
            refs.append(weakref.ref(t))
            return t

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16 autocast" else contextlib.nullcontext()
        ids = torch.randint(0, base["vocab_size"], (b, s))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            out = model(input_ids=ids, labels=ids)
        gc.collect()
        storages = {}
        for ref in refs:  # only what is still kept when the forward pass ends
            t = ref()
            if t is not None and t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        del out
        return sum(storages.values())

    def predicted(layers, mode, dropout, dora, targets, ckpt):
        cb, ab = (4, 4) if mode == "fp32" else (2, 4) if mode == "bf16 autocast" else (2, 2)
        est = memory.estimate({**base, "num_hidden_layers": layers}, bits=8 * ab if cb == ab else 16, r=8,
                              target_modules=targets, batch_size=b, seq_len=s, gradient_checkpointing=ckpt,
                              compute_bytes=cb, device="cpu", use_dora=dora, lora_dropout=dropout, adapter_bytes=ab)
        # kept tensors: activations, plus the autocast copies of fp32 adapters (counted under LoRA weights)
        return (est.breakdown["activations"] + est.breakdown["LoRA weights"]) * memory.GIB - est.trainable_params * ab

    print(f"| {'dtypes':<22} | dropout | DoRA | targets | ckpt | measured B/token | estimate | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for mode in ("fp32", "bf16 autocast", "bf16 + bf16 adapters"):
        for dropout in (0.05, 0.0):
            for dora in (False, True):
                for targets in (TARGETS, ["q_proj", "v_proj"]):
                    for ckpt in ((False, True) if not dora else (False,)):
                        m = (kept(3, mode, dropout, dora, targets, ckpt) - kept(2, mode, dropout, dora, targets, ckpt))
                        e = (predicted(3, mode, dropout, dora, targets, ckpt)
                             - predicted(2, mode, dropout, dora, targets, ckpt))
                        worst = max(worst, abs(e / m - 1))
                        print(f"| {mode:<22} | {dropout:7} | {'yes' if dora else 'no':>4} | {len(targets):7} | "
                              f"{'yes' if ckpt else 'no':>4} | {m / (b * s):16.0f} | {e / (b * s):8.0f} | "
                              f"{e / m:5.3f} |", flush=True)
    print(f"largest relative difference: {worst:.1%}")
    return 0 if worst < 0.02 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help=f"local HF model folder (default: {DEFAULT_CACHE}, "
                                                             "converted from the bundled GGUF on first use)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement (the CPU is shared)")
    ap.add_argument("--only", choices=("fp32", "nf4"), help="run only these configurations")
    ap.add_argument("--fixed-mmap-threshold", action="store_true",
                    help="run the children with MALLOC_MMAP_THRESHOLD_=131072 (glibc returns freed memory at once) "
                         "and compare without the allocator-retention term")
    ap.add_argument("--save", help="also write the measurements as JSON to this file")
    ap.add_argument("--published", action="store_true", help="estimates beside published figures (no model)")
    ap.add_argument("--audit", action="store_true", help="check the activation formula with saved_tensors_hooks")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: one configuration as JSON
    ap.add_argument("--methods", nargs="*", metavar="METHOD", default=None,
                    help="each training method (SFT, DPO, KTO, ORPO, GRPO; or the ones named) through the worker's "
                         "own trainers")
    ap.add_argument("--method", help=argparse.SUPPRESS)  # child process: one method
    ap.add_argument("--adapters", action="store_true",
                    help="each adapter type (LoRA, IA3, prompt and prefix tuning) and 8-bit AdamW through SFT")
    ap.add_argument("--adapter", help=argparse.SUPPRESS)  # child process: one peft_type:optim
    args = ap.parse_args(argv)
    if args.audit:
        return audit()
    if args.published:
        return published()
    model_dir = args.model or bundled_model_dir()
    if args.method:
        print(json.dumps(measure_method(str(model_dir), args.method, args.steps, args.threads)))
        return 0
    if args.methods is not None:
        return methods_table(model_dir, args.steps, args.threads, args.methods)
    if args.adapter:
        peft_type, optim = args.adapter.split(":")
        spec = adapter_spec(model_dir, peft_type, optim, args.steps)
        print(json.dumps(measure_method(str(model_dir), "sft", args.steps, args.threads, spec=spec)))
        return 0
    if args.adapters:
        return adapters_table(model_dir, args.steps, args.threads)
    if args.one and args.device == "cuda":
        cfg = json.loads(args.one)
        print(json.dumps(measure_one_cuda(str(model_dir), cfg["bits"], cfg["r"], cfg["seq_len"], cfg["checkpointing"],
                                          cfg["batch"], cfg["steps"])))
        return 0
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(measure_one(str(model_dir), cfg["bits"], cfg["r"], cfg["seq_len"], cfg["checkpointing"],
                                     cfg["batch"], cfg["steps"], cfg.get("threads", 1))))
        return 0
    if args.device == "cuda":
        return cuda_table(model_dir, args.batch, args.steps, args.save)
    return main_table(model_dir, args.batch, args.steps, args.threads, args.only, args.fixed_mmap_threshold,
                      args.save)


if __name__ == "__main__":
    sys.exit(main())
