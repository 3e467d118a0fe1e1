"""Training speed: a plain TRL SFTTrainer script (library defaults) vs the studio's worker path.

Both train the same LoRA/QLoRA adapter on the same data, model, hyperparameters, steps and seed, in
one process, alternating. Printed for each: real (non-pad) tokens/s, padded tokens/s, peak RSS growth,
final train loss, eval loss on a fixed held-out set; then the ratios studio/plain, the achieved FLOP/s
of the studio path against this machine's measured fp32 / bf16 matmul peaks, and a per-lever table.

    python bench/train_speed.py [--steps 12] [--quant 4bit|none] [--model bundled|random-smollm2|random-1b|DIR]

``random-*`` models are random-initialised Llama configs (throughput only; the loss still compares the two
paths from one identical start) built once beside the bench's output, with the bundled tokenizer or
``--tokenizer DIR``; they let the bench run where the bundled model cannot travel (a lent GPU).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STUDIO_HOME", str(Path.home() / ".cache" / "fine-tune-studio" / "bench-home"))
os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))

import torch  # noqa: E402

WORDS = ("model data train token layer weight answer question system user value paris france river mountain "
         "quick brown fox jumps over lazy dog learning rate batch memory speed adapter rank alpha").split()


def make_rows(n: int, seed: int, min_words: int = 12, max_words: int = 280) -> list[dict]:
    """Instruction rows with widely varying lengths (about 20-400 tokens)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "?"
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "."
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


RANDOM_CONFIGS = {
    # SmolLM2-135M's shape, and a ~1.2B Llama (Llama-3.2-1B's shape with SmolLM2's vocabulary)
    "random-smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "random-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
}


def random_model(name: str, tokenizer_dir: Path, out_root: Path, dtype: torch.dtype) -> Path:
    """A random-initialised Llama saved as a normal model folder (seeded: identical for every run)."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = out_root / f"{name}-{str(dtype).split('.')[-1]}"
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, rope_theta=100000.0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **RANDOM_CONFIGS[name])
    model = LlamaForCausalLM(config).to(dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def bench_model(name: str, tokenizer: Path | None, out: Path) -> Path:
    """--model: the bundled SmolLM2, a random-initialised Llama of RANDOM_CONFIGS (bf16 on a GPU), or a folder."""
    from workers.bundled import ensure_bundled

    if name == "bundled":
        return ensure_bundled()
    if name in RANDOM_CONFIGS:
        return random_model(name, tokenizer or ensure_bundled(), out / "models",
                            torch.bfloat16 if _cuda() else torch.float32)
    return Path(name)


def _cuda() -> bool:
    return torch.cuda.is_available()


class PeakRSS:
    """Peak memory growth over a block: resident memory sampled every 10 ms on CPU, the allocator's peak on a GPU."""

    def __init__(self):
        self.peak = self.base = self._rss()
        self._stop = threading.Event()
        if _cuda():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS"))

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        if _cuda():
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def grown_gb(self) -> float:
        return (self.peak - self.base) / 1e9


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    device = "cuda" if _cuda() else "cpu"
    n = 8192 if device == "cuda" else n
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3 if device == "cuda" else 1):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


class TokenCounter:
    """Counts real and padded tokens of every training batch (wraps a collator)."""

    def __init__(self, collator):
        self.collator, self.real, self.padded = collator, 0, 0
        self.per_batch: list[int] = []  # real tokens of each batch, in order (the loader collates one ahead)

    def __call__(self, examples):
        batch = self.collator(examples)
        self.per_batch.append(sum(len(e["input_ids"]) for e in examples))
        self.real += self.per_batch[-1]
        self.padded += int(batch["input_ids"].numel())
        return batch


def eval_loss(model, tokenizer, rows, spec) -> float:
    from workers.arguments import encode_rows

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for enc in encode_rows(tokenizer, rows, "chat", spec):
            ids = torch.tensor([enc["input_ids"]], device=model.device)
            labels = torch.tensor([[t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"])]],
                                  device=model.device)
            n = int((labels[0, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    model.train()
    return total / max(count, 1)


def plain_trl(model_dir, spec, train_rows, out, precision="fp32"):
    """What a user would write in 40 lines: SFTTrainer with library defaults, same LoRA/QLoRA settings.

    ``precision``: "fp32" (the issue's CPU baseline: fp32 weights, no autocast) or "default" (TRL's own
    default, bf16 autocast, and the checkpoint's dtype, as a GPU user would run it).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    half = precision == "default"
    kwargs = {} if half else {"dtype": torch.float32}
    if spec.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16 if half else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    args = SFTConfig(output_dir=str(out), max_steps=spec.max_steps, per_device_train_batch_size=spec.per_device_train_batch_size,
                     learning_rate=spec.learning_rate, lr_scheduler_type=spec.lr_scheduler_type, warmup_steps=0,
                     max_length=spec.max_length, assistant_only_loss=False, logging_steps=1, save_strategy="no",
                     report_to="none", seed=spec.seed, use_cpu=not _cuda(), disable_tqdm=True,
                     # TRL defaults to bf16 autocast everywhere; the CPU baseline is fp32
                     **({} if half else {"bf16": False}))
    lora = LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows), processing_class=tok,
                         peft_config=lora)
    if spec.load_in_4bit and not _cuda():  # without this, bitsandbytes' CPU repack stops input gradients
        for m in trainer.model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
    return trainer, tok


def studio_path(model_dir, spec, train_rows, out, precision=None):
    from workers import train

    model, tok = train.load_model_for_training(spec, model_dir, "cuda" if torch.cuda.is_available() else "cpu")

    from transformers import TrainerCallback

    class Null(TrainerCallback):  # the bench measures training, not the studio's database writes
        stop_reason = None

    trainer = train.build_trainer(spec, "chat", model, tok, train_rows, [], Path(out), Null(),
                                  "cuda" if torch.cuda.is_available() else "cpu")
    trainer.args.save_strategy = "no"
    return trainer, tok


def run_one(kind, model_dir, spec, train_rows, eval_rows, out, precision="fp32"):
    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()
    with PeakRSS() as mem:
        build = plain_trl if kind == "plain" else studio_path
        trainer, tok = build(model_dir, spec, train_rows, out, precision)
        counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"seconds": seconds, "real_tps": counter.real / seconds, "padded_tps": counter.padded / seconds,
              "real": counter.real, "padded": counter.padded, "peak_gb": mem.grown_gb, "train_loss": losses[-1],
              "eval_loss": eval_loss(trainer.model, tok, eval_rows, spec)}
    del trainer, tok
    gc.collect()
    return result


def main() -> None:
    from studio.spec import JobSpec

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--quant", choices=["4bit", "none"], default="4bit")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of plain/studio")
    p.add_argument("--levers", nargs="?", const="all", default=None,
                   help="also measure each studio lever on its own (all, or a comma list of: fp32, no-grouping, "
                        "padding-free, checkpointing, flex, chunked, logits, no-dequant-cache, dequant-cache, plain-other, "
                        "compile; all leaves compile out)")
    p.add_argument("--warmup", type=int, default=None,
                   help="steps of a discarded first run (default: 3 on a GPU, whose first run pays for CUDA "
                        "initialisation and kernel selection; 0 on CPU)")
    p.add_argument("--model", default="bundled", help="bundled, random-smollm2, random-1b or a model folder")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder for random-* models (default: the bundled one)")
    p.add_argument("--plain", choices=["auto", "fp32", "default"], default="auto",
                   help="the plain script's precision: fp32, TRL's default (bf16 autocast), or auto: fp32 on CPU "
                        "(the issue's baseline), TRL's default on a GPU")
    args = p.parse_args()
    torch.manual_seed(0)
    out = Path(os.environ["STUDIO_HOME"]) / "bench-out"
    model_dir = bench_model(args.model, args.tokenizer, out)
    plain_precision = args.plain if args.plain != "auto" else ("default" if _cuda() else "fp32")
    rows = make_rows(args.steps * args.batch, seed=1)
    eval_rows = make_rows(16, seed=2)
    spec = JobSpec(dataset="bench", load_in_4bit=args.quant == "4bit", max_steps=args.steps,
                   per_device_train_batch_size=args.batch, learning_rate=2e-4, lora_dropout=0.0, eval_split=0.0,
                   max_length=512, assistant_only_loss=False, warmup_ratio=0.0, lr_scheduler_type="linear")
    fp32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    where = torch.cuda.get_device_name() if _cuda() else f"{os.cpu_count()} cpus, threads {torch.get_num_threads()}"
    print(f"machine: {where}, torch {torch.__version__}; "
          f"matmul peak fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.1f} GFLOP/s")
    print(f"data: {len(rows)} train rows, {len(eval_rows)} eval rows; {args.steps} steps x batch {args.batch}; "
          f"quant {args.quant}; model {model_dir.name}; plain script precision {plain_precision}")
    warmup = args.warmup if args.warmup is not None else (3 if _cuda() else 0)
    if warmup:
        w = JobSpec(**{**spec.to_dict(), "max_steps": warmup})
        run_one("studio", model_dir, w, rows[:warmup * args.batch], eval_rows[:2], out / "warmup")
        run_one("plain", model_dir, w, rows[:warmup * args.batch], eval_rows[:2], out / "warmup", plain_precision)
        print(f"(warm-up: {warmup} steps of each path, discarded)")
    results = {"plain": [], "studio": []}
    for _ in range(args.rounds):
        for kind in ("plain", "studio"):
            r = run_one(kind, model_dir, spec, rows, eval_rows, out / kind, plain_precision)
            results[kind].append(r)
            print(f"{kind:>7}: {r['real_tps']:7.1f} real tok/s {r['padded_tps']:7.1f} padded tok/s "
                  f"({r['real']} real / {r['padded']} padded tokens in {r['seconds']:.1f} s) peak +{r['peak_gb']:.2f} GB "
                  f"train loss {r['train_loss']:.4f} eval loss {r['eval_loss']:.4f}", flush=True)
    a = {k: sum(r[k] for r in results["plain"]) / len(results["plain"]) for k in results["plain"][0]}
    b = {k: sum(r[k] for r in results["studio"]) / len(results["studio"]) for k in results["studio"][0]}
    from studio import catalog, memory

    n_params = memory.estimate(catalog.read_local_config(model_dir), bits=16, r=spec.r, target_modules=[],
                               batch_size=1, seq_len=1, gradient_checkpointing=False).total_params
    flops = 6 * n_params * b["real"] / b["seconds"] * 2 / 3  # frozen base: no weight-gradient matmuls
    print(f"ratio studio/plain: real tok/s x{b['real_tps'] / a['real_tps']:.2f}, "
          f"eval loss {100 * (b['eval_loss'] - a['eval_loss']) / a['eval_loss']:+.1f}%, "
          f"peak memory x{b['peak_gb'] / max(a['peak_gb'], 1e-9):.2f}")
    print(f"studio achieved ~{flops / 1e9:.1f} GFLOP/s = {100 * flops / fp32:.0f}% of fp32 matmul peak, "
          f"{100 * flops / bf16:.0f}% of bf16 peak")
    if args.levers:
        print("\nper lever (studio path, one lever changed from the studio default):")
        levers = [("studio defaults", {}, "defaults"), ("fp32 (no bf16)", {"precision": "fp32"}, "fp32"),
                  ("no length grouping", {"padding_free": "off"}, "no-grouping"),
                  ("padding-free", {"padding_free": "on"}, "padding-free"),
                  ("checkpointing on", {"gradient_checkpointing": True}, "checkpointing"),
                  ("flex attention", {"padding_free": "on", "attn_implementation": "flex_attention"}, "flex"),
                  ("TRL's chunked loss", {"chunked_loss": "on"}, "chunked"),
                  ("logits loss", {"chunked_loss": "off"}, "logits"),
                  ("torch.compile", {"torch_compile": True}, "compile")]  # named only: minutes of compiling
        if args.quant == "4bit":
            levers.insert(2, ("no dequant cache", {"dequant_cache": "off"}, "no-dequant-cache"))
            levers.insert(3, ("dequant cache on", {"dequant_cache": "on"}, "dequant-cache"))
        wanted = None if args.levers == "all" else set(args.levers.split(","))
        for label, change, key in levers:
            if (wanted is None and key == "compile") or (wanted is not None and key not in wanted):
                continue
            s2 = JobSpec(**{**spec.to_dict(), **change})
            r = run_one("studio", model_dir, s2, rows, eval_rows, out / "lever")
            print(f"  {label:<20} {r['real_tps']:7.1f} real tok/s  x{r['real_tps'] / a['real_tps']:.2f} vs plain  "
                  f"eval loss {r['eval_loss']:.4f}  peak +{r['peak_gb']:.2f} GB", flush=True)
        other = "default" if plain_precision == "fp32" else "fp32"
        if wanted is not None and "plain-other" not in wanted:
            return
        r = run_one("plain", model_dir, spec, rows, eval_rows, out / "plain2", other)
        print(f"  {'plain, ' + other:<20} {r['real_tps']:7.1f} real tok/s  x{r['real_tps'] / a['real_tps']:.2f} vs plain  "
              f"eval loss {r['eval_loss']:.4f}  peak +{r['peak_gb']:.2f} GB  (the plain script at the other precision)",
              flush=True)


if __name__ == "__main__":
    main()
