"""Training while another process keeps one core busy: how much slower than alone, per thread policy.

A user's machine always runs something else (the browser with the Runs tab at least). On two cores, torch's
OpenMP threads split every operation in halves and wait for each other at its end: when one core is taken, the
thread that lands there gets a share of it and every operation waits for that share. This bench trains the
bundled model on the first run's identity rows (short rows: many small operations) through the studio's own
trainer, each policy in a fresh process (OpenMP reads its environment once), alone and beside a busy loop:

    default   torch's thread count and OpenMP's own waiting (what a run did before the thread governor)
    passive   the same threads with OMP_WAIT_POLICY=passive (waiting threads sleep instead of spinning)
    governed  the studio's default: STUDIO_TRAIN_THREADS=auto (workers/threads.py)
    one       one thread throughout (STUDIO_TRAIN_THREADS=1)

    python bench/busy_core.py [--steps 24] [--policies default,passive,governed] [--duty 1.0]

``--duty`` makes the other process busy only that share of each 100 ms (a page redrawing now and then), which
is where running one thread fewer stops paying (workers/threads.py's SLACK).

Printed per policy: real tokens/s alone and busy, the slowdown (the target is at most about 2x: half the cores),
and the spread of step times while busy. Nothing else should run on the machine; `uptime` is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

POLICIES = {
    "default": {"STUDIO_TRAIN_THREADS": "all"},
    "passive": {"STUDIO_TRAIN_THREADS": "all", "OMP_WAIT_POLICY": "passive"},
    "governed": {"STUDIO_TRAIN_THREADS": "auto"},
    "one": {"STUDIO_TRAIN_THREADS": "1"},
}
# the other process: busy for ``duty`` of every 100 ms (1.0: all the time), as a page redrawing now and then
BUSY_LOOP = """import sys, time
duty = float(sys.argv[1])
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < 0.1 * duty:
        sum(range(1000))
    time.sleep(0.1 * (1 - duty))
"""


def one(steps: int) -> dict:
    """In the child: ``steps`` steps of the form's defaults on the identity rows; tokens/s and step times."""
    import identity_data
    import torch
    from transformers import TrainerCallback

    from bench import train_speed
    from studio.datasets import load_file
    from studio.spec import JobSpec

    out = Path(tempfile.mkdtemp(prefix="busy-core-"))
    data = out / "identity.jsonl"  # read as the Datasets tab reads it: the rows the first run trains on
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                            for r in identity_data.alpaca_rows(identity_data.NAME, identity_data.MAKER)))
    rows = load_file(data).rows
    spec = JobSpec(dataset="bench", max_steps=steps, eval_split=0.0)
    times: list[float] = []
    counts: list[int] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            counts.append(torch.get_num_threads())

    original = train_speed.studio_path

    def with_times(*a, **kw):
        trainer, tok = original(*a, **kw)
        trainer.add_callback(StepTimes())
        return trainer, tok

    train_speed.studio_path = with_times
    result = train_speed.run_one("studio", train_speed.bench_model("bundled", None, out), spec, rows, rows[:2], out)
    return {"real_tps": result["real_tps"], "seconds": result["seconds"], "step_times": times,
            "threads": counts}


def run_child(policy: str, steps: int, busy: bool, duty: float = 1.0) -> dict:
    env = {**os.environ, **POLICIES[policy]}
    loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(duty)]) if busy else None
    try:
        if loop:
            time.sleep(1.0)
        done = subprocess.run([sys.executable, __file__, "--one", "--steps", str(steps)], env=env, cwd=ROOT,
                              capture_output=True, text=True)
    finally:
        if loop:
            loop.kill()
            loop.wait()
    if done.returncode:
        sys.exit(f"{policy} (busy={busy}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--policies", default="default,passive,governed")
    p.add_argument("--duty", type=float, default=1.0, help="the share of a core the other process takes (0-1]")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.steps)))
        return
    os.environ.setdefault("STUDIO_HOME", tempfile.mkdtemp(prefix="busy-core-home-"))
    os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {len(os.sched_getaffinity(0))} cores; {args.steps} steps of the form's defaults on the "
          f"identity rows (bundled SmolLM2); the other process busy {args.duty:.0%} of the time")
    print(f"before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    for policy in args.policies.split(","):
        alone = run_child(policy, args.steps, busy=False)
        busy = run_child(policy, args.steps, busy=True, duty=args.duty)
        steps = sorted(busy["step_times"][2:])
        fewer = lambda run: sum(n < max(run["threads"]) for n in run["threads"])  # noqa: E731
        print(f"{policy:<9} alone {alone['real_tps']:7.1f} tok/s  beside a busy core {busy['real_tps']:7.1f} tok/s  "
              f"slowdown x{alone['real_tps'] / busy['real_tps']:.2f}  (busy step times: median "
              f"{statistics.median(steps):.2f} s, max {steps[-1]:.2f} s; steps on fewer threads: alone "
              f"{fewer(alone)}/{args.steps}, busy {fewer(busy)}/{args.steps})", flush=True)
    print(f"after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
