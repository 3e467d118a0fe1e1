"""The OpenAI-compatible endpoint against in-process generation on the bundled SmolLM2: time to first
token, tokens/s, adapter switch time, and memory per loaded base.

    .venv/bin/python bench/inference.py [--runs 3] [--max-tokens 64]

A throwaway data directory gets two imported LoRA adapters (bench/chat_export.py's: r=16, all linear
layers); a real `studio infer` process serves them on a free loopback port, read by the official
`openai` client with streaming; the in-process figures come from workers/inference/chat_engine.py's ChatEngine
in this process.
Greedy replies, the same prompt and settings on both paths.
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))
os.environ["STUDIO_HOME"] = tempfile.mkdtemp(prefix="infer-bench-")
os.environ["STUDIO_API_KEY"] = secrets.token_urlsafe(16)

BASE = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def in_process(engine, adapter, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first text, seconds in all, tokens generated) for one greedy reply."""
    from studio.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0)
    t0, first, reply = time.perf_counter(), None, ""
    for reply in engine.stream(MESSAGES, adapter, settings):
        first = first or (time.perf_counter() - t0 if reply else None)
    total = time.perf_counter() - t0
    return first or total, total, len(engine.tokenizer(reply, add_special_tokens=False)["input_ids"])


def endpoint(client, model: str, max_tokens: int) -> tuple[float, float, int]:
    t0, first, tokens = time.perf_counter(), None, 0
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=max_tokens,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return first or total, total, tokens


def row(label: str, runs: list[tuple[float, float, int]]) -> str:
    first = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[2] / r[1] for r in runs)
    return f"| {label:<28} | {1e3 * first:10.0f} | {rate:12.1f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    import openai
    import psutil
    import torch
    from chat_export import make_adapter

    from studio import adapter_import, adapter_library
    from workers.inference.chat_engine import ChatEngine
    from workers.bundled import ensure_bundled

    base_dir = ensure_bundled()
    tmp = Path(os.environ["STUDIO_HOME"]).parent
    for i, name in enumerate(("A", "B")):
        adapter_import.import_adapter(make_adapter(base_dir, tmp / f"adapter-{name}-{os.getpid()}", i), name, BASE)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"{BASE} on {where}, {args.max_tokens} new tokens, greedy, median of {args.runs}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "workers.cli", "infer", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=os.environ["STUDIO_API_KEY"],
                               max_retries=0)
        deadline = time.time() + 300
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the inference server did not start")
                time.sleep(0.5)
        idle = rss_mb(server.pid)
        t0 = time.perf_counter()
        endpoint(client, BASE, 1)
        print(f"endpoint: first request (loads the base) {time.perf_counter() - t0:.2f} s; server RSS "
              f"{idle:.0f} MB idle -> {rss_mb(server.pid):.0f} MB with {BASE} loaded "
              f"(+{rss_mb(server.pid) - idle:.0f} MB)")
        t0 = time.perf_counter()
        endpoint(client, "imported/A", 1)
        print(f"endpoint: first request to an adapter (attaches it) {time.perf_counter() - t0:.2f} s")
        endpoint(client, "imported/B", 1)

        from studio import db
        from workers.inference.engine import footprint

        reported = [b for s in db.list_inference_servers() for b in s.loaded_bases or []]
        print(f"endpoint: the server reports {reported} (weights and buffers, get_memory_footprint)")
        engine = ChatEngine()  # (this process's RSS says little: make_adapter held the same weights before)
        engine.ensure_base(BASE)
        print(f"in-process: weights and buffers {footprint(engine) / 1e6:.0f} MB")
        for name in ("A", "B"):
            engine.ensure_adapter(name, adapter_library.resolve(f"imported/{name}").folder)
        in_process(engine, None, 4)  # warm-up

        print(f"| {'path':<28} | {'TTFT ms':>10} | {'tokens/s':>12} |\n|{'-' * 30}|{'-' * 12}|{'-' * 14}|")
        for label, model, adapter in (("base", BASE, None), ("adapter A", "imported/A", "A")):
            print(row(f"{label}, in-process", [in_process(engine, adapter, args.max_tokens) for _ in range(args.runs)]))
            print(row(f"{label}, endpoint", [endpoint(client, model, args.max_tokens) for _ in range(args.runs)]),
                  flush=True)
        alternating = [endpoint(client, f"imported/{'AB'[i % 2]}", args.max_tokens) for i in range(2 * args.runs)]
        print(row("A/B alternating, endpoint", alternating))
        switches = []
        for i in range(40):
            t0 = time.perf_counter()
            with engine.adapter_context("AB"[i % 2]):
                pass
            switches.append(time.perf_counter() - t0)
        print(f"adapter switch (set_adapter) in-process: median {1e3 * statistics.median(switches):.3f} ms")
        print(f"server RSS at the end: {rss_mb(server.pid):.0f} MB; machine has {psutil.virtual_memory().total / 1e9:.0f} GB")
    finally:
        server.terminate()
        server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
