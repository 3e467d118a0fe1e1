"""Where a training step's time goes: torch.profiler over a few steady-state steps of the studio path (or the
plain TRL script), printing wall time per step, how much of it the device was busy, and the top operators.

    .venv/bin/python bench/profile_step.py --quant 4bit                       # bundled SmolLM2, CPU
    python3 bench/profile_step.py --model random-1b --quant 4bit --tokenizer .gpu/tok   # a lent GPU

On a GPU the question it answers is whether a step is bound by the GPU's arithmetic or by the host
(Python, kernel launches, synchronisations): "device busy" far below the step's wall time means the host.
Same data, spec and models as bench/train_speed.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed as ts  # noqa: E402  (sets up paths and the environment)

import torch  # noqa: E402


def main() -> None:
    from transformers import TrainerCallback

    from studio.spec import JobSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quant", choices=["4bit", "none"], default="4bit")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--skip", type=int, default=3, help="steps before profiling starts (warm-up)")
    p.add_argument("--profile", type=int, default=3, help="steps profiled")
    p.add_argument("--path", choices=["studio", "plain"], default="studio")
    p.add_argument("--model", default="bundled", help="bundled, random-smollm2, random-1b or a model folder")
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a spec field of the studio path, e.g. --set attn_implementation=flex_attention")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    out = Path(os.environ["STUDIO_HOME"]) / "bench-out"
    model_dir = ts.bench_model(args.model, args.tokenizer, out)
    steps = args.skip + args.profile
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = {"true": True, "false": False}.get(value.lower(), value)
    spec = JobSpec(dataset="bench", load_in_4bit=args.quant == "4bit", max_steps=steps,
                   per_device_train_batch_size=args.batch, learning_rate=2e-4, lora_dropout=0.0, eval_split=0.0,
                   max_length=512, assistant_only_loss=False, warmup_ratio=0.0, lr_scheduler_type="linear",
                   **changes)
    rows = ts.make_rows(steps * args.batch, seed=1)
    build = ts.plain_trl if args.path == "plain" else ts.studio_path
    trainer, _ = build(model_dir, spec, rows, out / "profile", "default" if cuda else "fp32")
    counter = ts.TokenCounter(trainer.data_collator)
    trainer.data_collator = counter

    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities)

    class Window(TrainerCallback):
        """Profiles steps skip+1 .. skip+profile, timing them from the end of the last skipped step."""
        started = 0.0

        def on_step_end(self, _args, state, *_a, **_k):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == args.skip:
                prof.start()
                Window.started = time.perf_counter()
            elif state.global_step == steps:
                Window.seconds = time.perf_counter() - Window.started
                prof.stop()

    trainer.add_callback(Window())
    trainer.train()
    tokens = sum(counter.per_batch[args.skip:steps])  # the profiled steps' batches
    events = prof.key_averages()
    wall = Window.seconds / args.profile
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.path} path, {model_dir.name}, {args.quant}, batch {args.batch}, {where}; spec changes {changes or '-'}")
    print(f"steady state: {wall * 1e3:.1f} ms per step, {tokens / Window.seconds:.1f} real tok/s "
          f"(steps {args.skip + 1}-{steps}, profiler on)")
    if cuda:
        busy = sum(e.self_device_time_total for e in events) / 1e6 / args.profile  # us -> s
        print(f"device busy {busy * 1e3:.1f} ms per step = {100 * busy / wall:.0f}% of the step's wall time")
        launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
        syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "aten::item"
                    or e.key == "aten::_local_scalar_dense")
        print(f"kernel launches {launches // args.profile} per step; host syncs (item/synchronize) "
              f"{syncs // args.profile} per step")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
