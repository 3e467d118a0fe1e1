"""Chat and export figures on the bundled SmolLM2: adapter attach and switch times, time to first token of
the base vs an adapter, generation speed, merge and GGUF (F16, Q8_0, Q4_K_M through llama.cpp's converter) export
times, sizes and drift checked in llama.cpp.

    .venv/bin/python bench/chat_export.py [--no-export]

Three LoRA adapters (r=16, all linear layers, small random B so replies stay fluent but differ from the
base) are written to a temporary folder; everything runs through the studio's own ChatEngine and export
functions, on whatever device this machine has.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))

PROMPTS = ["What is the capital of France?", "Give me three tips for staying focused.",
           "Explain what a neural network is in one sentence."]


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.0005)
    peft_model.save_pretrained(out)
    return out


def ttft(engine, adapter, settings) -> tuple[float, float, int]:
    """(seconds to the first streamed text, total seconds, new tokens) for one greedy reply."""
    messages = [{"role": "user", "content": PROMPTS[0]}]
    t0 = time.perf_counter()
    first, reply = None, ""
    for reply in engine.stream(messages, adapter, settings):
        if first is None and reply:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return first or total, total, len(engine.tokenizer(reply, add_special_tokens=False)["input_ids"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import torch

    from workers.inference import export
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import ChatEngine
    from workers.bundled import ensure_bundled

    base_dir = ensure_bundled()
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    adapters = {n: make_adapter(base_dir, tmp / n, i) for i, n in enumerate(("A", "B", "C"))}
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {base_dir.name} on {where}, torch {torch.__version__}")

    engine = ChatEngine()
    t0 = time.perf_counter()
    engine.ensure_base("SmolLM2-135M-Instruct")
    print(f"base load: {time.perf_counter() - t0:.2f} s")
    for name, folder in adapters.items():
        t0 = time.perf_counter()
        engine.ensure_adapter(name, folder)
        print(f"attach adapter {name}: {time.perf_counter() - t0:.3f} s")
    switches = []
    for i in range(60):
        name = "ABC"[i % 3]
        t0 = time.perf_counter()
        with engine.adapter_context(name):
            pass
        switches.append(time.perf_counter() - t0)
    base_switches = []
    for _ in range(20):
        t0 = time.perf_counter()
        with engine.adapter_context(None):
            base_switches.append(time.perf_counter() - t0)
    print(f"switch between attached adapters: median {1e3 * statistics.median(switches):.3f} ms "
          f"(max {1e3 * max(switches):.3f} ms); to the base (disable_adapter): median "
          f"{1e3 * statistics.median(base_switches):.3f} ms; base loads so far: {engine.base_loads}")

    settings = GenerationSettings(max_new_tokens=64, temperature=0.0)
    ttft(engine, None, settings)  # warm-up
    print(f"| {'pane':<8} | {'TTFT median s':>13} | {'reply s':>8} | {'new tokens/s':>12} |")
    print("|----------|---------------|----------|--------------|")
    for label, adapter in (("base", None), ("adapter", "A")):
        runs = [ttft(engine, adapter, settings) for _ in range(args.runs)]
        first = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        rate = statistics.median(r[2] / r[1] for r in runs)
        print(f"| {label:<8} | {first:13.3f} | {total:8.2f} | {rate:12.1f} |", flush=True)
    print(f"base loads after switching and chatting: {engine.base_loads}")

    if args.no_export:
        return 0
    merged = tmp / "merged"
    r = export.merge_adapter(base_dir, adapters["A"], merged)
    print(f"\nmerge: {r['seconds']:.1f} s, {r['bytes'] / 1e6:.1f} MB (float32 safetensors + tokenizer)")
    from studio.serving import drift_sentence

    for quant in ("f16", "q8_0", "q4_k_m"):
        out = tmp / f"merged-{quant}.gguf"
        w = export.write_gguf(merged, out, quant)
        in_llama_cpp = export.check_in_llama_cpp(out, PROMPTS, max_new_tokens=32)
        d = export.drift_check(merged, in_llama_cpp, PROMPTS, max_new_tokens=32)
        print(f"GGUF {quant}: written in {w['seconds']:.1f} s, {w['bytes'] / 1e6:.1f} MB; drift check {d['seconds']:.0f} s: "
              f"{drift_sentence({'quant': quant, **d})} Mean |logit diff| {d['mean_abs_logit_diff']:.4f}.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
