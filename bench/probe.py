"""Seconds per pass of the 200-question general-skills probe on the bundled SmolLM2, as the training worker
answers it after a run (workers/forgetting.py), against one question per generate call (with the same
per-question reply budgets, or with ``--naive-tokens N`` for every question).

    .venv/bin/python bench/probe.py [--questions 200] [--naive-tokens 64] [--batch 32]

Both are greedy, on the same fp32 model with a fresh LoRA adapter (answering as the base, through peft's
disable_adapter()), in this process, one after the other. ``--questions`` takes the first N questions of
each category in turn (both ways answer the same ones); the figures are scaled to 200 questions and the
ratio is measured in this one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))


def sample(probe, n: int):
    """``n`` questions taken round-robin over the categories (the reply budgets' mix stays representative)."""
    from dataclasses import replace

    by_cat: dict[str, list] = {}
    for q in probe.questions:
        by_cat.setdefault(q.category, []).append(q)
    picked, i = [], 0
    while len(picked) < min(n, len(probe.questions)):
        for qs in by_cat.values():
            if i < len(qs) and len(picked) < n:
                picked.append(qs[i])
        i += 1
    return replace(probe, questions=tuple(picked))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--naive-tokens", type=int, default=0, help="0: the probe's own budget per question")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.probe import load_probe
    from studio.probe.runner import run_probe
    from workers.bundled import model_folder
    from workers.forgetting import generate_replies, model_generate

    folder = model_folder("SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    probe = sample(load_probe(), args.questions)
    scale = 200 / len(probe.questions)

    def naive(prompts, max_new_tokens):
        budget = args.naive_tokens or max_new_tokens
        return [generate_replies(model, tokenizer, [p], budget, base=True, batch_size=1)[0] for p in prompts]

    started = time.perf_counter()
    slow = run_probe(naive, probe)
    naive_s = (time.perf_counter() - started) * scale
    started = time.perf_counter()
    fast = run_probe(model_generate(model, tokenizer, base=True, batch_size=args.batch), probe)
    fast_s = (time.perf_counter() - started) * scale
    print(f"{len(probe.questions)} questions, torch threads {__import__('torch').get_num_threads()}")
    budget = f"{args.naive_tokens} new tokens" if args.naive_tokens else "the same budgets"
    print(f"one per call ({budget}): {naive_s:7.1f} s per 200 questions, "
          f"{slow.correct}/{len(probe.questions)} right")
    print(f"worker (batches of {args.batch}, left-padded, per-check budgets): {fast_s:7.1f} s per 200 questions, "
          f"{fast.correct}/{len(probe.questions)} right")
    print(f"speed-up x{naive_s / fast_s:.1f}")


if __name__ == "__main__":
    main()
