"""The inference endpoint under mixed load: short chats answered while long replies run.

    .venv/bin/python bench/endpoint_load.py [--seconds 60] [--clients 4] [--long 1] [--long-tokens 4000]

A real `studio infer` process serves the bundled SmolLM2 on a free loopback port (a throwaway data directory).
``--long`` clients each hold one streamed request of ``--long-tokens`` tokens (vLLM's ``min_tokens`` keeps the
end of turn away) for the whole time; ``--clients`` others send short questions (16 tokens) one after another,
with the official `openai` client. At the end it prints the short requests' p50/p99 latency, the errors, the
long replies' tokens, and the server's memory before and after. Target: short p99 under 5 s.
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))
os.environ["STUDIO_HOME"] = tempfile.mkdtemp(prefix="endpoint-load-")
os.environ["STUDIO_API_KEY"] = secrets.token_urlsafe(16)

BASE = "SmolLM2-135M-Instruct"
SHORT = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}]


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--long", type=int, default=1)
    parser.add_argument("--long-tokens", type=int, default=4000)
    args = parser.parse_args()

    import httpx
    import openai

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "workers.cli", "infer", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=url, api_key=os.environ["STUDIO_API_KEY"], max_retries=0, timeout=300)
        client.chat.completions.create(model=BASE, messages=SHORT, max_tokens=4, temperature=0)   # load the base
        before = rss_mb(server.pid)
        stop = threading.Event()
        latencies: list[float] = []
        errors: list[str] = []
        long_tokens: list[int] = [0] * args.long

        def long_client(i: int) -> None:
            try:
                with client.chat.completions.create(model=BASE, messages=LONG, max_tokens=args.long_tokens,
                                                    temperature=0.7, seed=i, stream=True,
                                                    extra_body={"min_tokens": args.long_tokens}) as stream:
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            long_tokens[i] += 1
                        if stop.is_set():
                            break
            except Exception as exc:  # reported below
                errors.append(f"long: {exc}")

        def short_client() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    client.chat.completions.create(model=BASE, messages=SHORT, max_tokens=16, temperature=0)
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:
                    errors.append(f"short: {exc}")

        threads = [threading.Thread(target=long_client, args=(i,)) for i in range(args.long)]
        for t in threads:
            t.start()
        time.sleep(2.0)   # the long replies are under way before the short ones start
        threads += [threading.Thread(target=short_client) for _ in range(args.clients)]
        for t in threads[args.long:]:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(300)
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)

    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    print(f"{args.seconds:.0f} s, {args.long} long client(s) of {args.long_tokens} tokens, {args.clients} short clients "
          f"(16 tokens each), CPU threads {os.cpu_count()}")
    print(f"short requests: {len(latencies)} answered, p50 {p(0.5):.2f} s, p99 {p(0.99):.2f} s, "
          f"mean {statistics.fmean(latencies) if latencies else float('nan'):.2f} s (target p99 < 5 s)")
    print(f"long replies: {long_tokens} pieces streamed while the short ones ran")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"server memory: {before:.0f} MB before, {after:.0f} MB after")


if __name__ == "__main__":
    main()
