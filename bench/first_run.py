"""A new user's first run, end to end: the ~100-row identity set (tests/identity_data.py: alpaca rows teaching a
name and a maker, in English and some Chinese) trained with the form's defaults through `studio dataset add` and
`studio train --follow` on a real `studio worker`, then the time split and what the adapter learned.

Printed: Start to "completed", and how it splits into queue pick-up, model load, dataset encoding, steps,
evaluations, checkpoints, golden prompts, final save and the rest; then the whole run's tokens/s against the
steady-state tokens/s of bench/train_speed.py's studio path on the same spec and rows, measured afterwards in
this process (the target is at least 80%); then the adapter's answers to 10 held-out paraphrased identity
questions (the target: the name or the maker in at least 9) and to general questions, beside the base's,
asked as the Chat tab asks them (workers/inference/chat_engine.py's ChatEngine, with the run's system-prompt
choice).

    python bench/first_run.py [--rows 0] [--name Zorblax --author "Quintar Labs"] [--max-steps 0] [--speed-steps 30]
                              [--cold] [--data FILE [--fill BLANK=VALUE ...]]

The clock starts once the worker is done preparing the bundled model (converted, and its answers for general
replay made, which a newcomer's page shows in its header while they upload the data); ``--cold`` starts it with
``--no-prepare`` instead, so the run makes those answers itself.

``--data`` runs another identity-style file instead (any format the Datasets tab takes), added as a user adds it
(``--fill`` fills its template blanks, e.g. ``--fill NAME=Zorblax --fill "AUTHOR=Quintar Labs"``); give the name
and maker it teaches with ``--name`` and ``--author`` so the held-out questions are scored against them.

``--rows 0`` takes the whole set (97 rows); fewer takes the first N. ``--max-steps 0`` keeps the form's defaults
(automatic epochs); a small number makes a smoke run. The split is read from the job's row (created / started /
finished) and the "timing" lines the worker writes to train.log. Other processes on the machine slow every part
alike: `uptime` is printed before and after, and the ratios are what to compare between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import identity_data  # noqa: E402  (the acceptance data: a made-up name and maker, paraphrased questions)

TIMING = re.compile(r"timing (\S+) ([0-9.]+) s at step (\S+)")
PARTS = ("queue pick-up", "model load", "general replay", "dataset encoding", "steps", "evaluations", "checkpoints",
         "golden prompts", "final save", "other")


def environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    env.update({"STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "STUDIO_MODELS_DIR": os.environ.get("STUDIO_MODELS_DIR",
                                                    str(Path.home() / ".cache" / "fine-tune-studio" / "models"))})
    return env


def studio(env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, **kw)


KEYS = {"model-load": "model load", "replay": "general replay", "dataset-encoding": "dataset encoding",
        "evaluation": "evaluations", "checkpoint": "checkpoints", "golden-prompts": "golden prompts",
        "final-save": "final save"}


def time_split(job, log_text: str) -> dict[str, float]:
    """Seconds of each part of a finished job, from its row and the "timing" lines of its train.log (in order:
    golden answers logged before a "training-loop" line ran inside that loop, the final one after it)."""
    spent = {part: 0.0 for part in PARTS}
    spent["queue pick-up"] = job.started_at - job.created_at
    loop = inside = 0.0
    for what, seconds, _step in TIMING.findall(log_text):
        if what == "training-loop":
            loop, inside = loop + float(seconds) - inside, 0.0
            continue
        spent[KEYS[what]] += float(seconds)
        inside += float(seconds) if what == "golden-prompts" else 0.0
    spent["steps"] = max(0.0, loop - spent["evaluations"] - spent["checkpoints"])
    spent["other"] = max(0.0, (job.finished_at - job.created_at) - sum(spent.values()))
    return spent


def steady_tokens_per_second(spec_dict: dict, steps: int, out: Path) -> float:
    """bench/train_speed.py's studio path on the same spec and the dataset's rows as the run read them, without
    evaluations or checkpoints."""
    from bench import train_speed
    from studio import library
    from studio.datasets import sft_rows
    from studio.spec import JobSpec
    from workers.bundled import model_folder

    spec = JobSpec(**{**spec_dict, "max_steps": steps, "eval_split": 0.0})
    data = library.load(spec.dataset)
    chat = [{"messages": r["messages"]} for r in sft_rows(data.kind, data.rows)[0]]
    return train_speed.run_one("studio", model_folder(spec.base_model), spec, chat, chat[:2], out)["real_tps"]


def what_it_learned(job, name: str, author: str) -> dict:
    """The adapter's and the base's greedy replies to the held-out paraphrases and the general questions, through
    the Chat tab's engine (the run's system-prompt choice applied to the adapter)."""
    from studio import adapter_library
    from workers.inference.chat_engine import ChatEngine

    ref = adapter_library.resolve(job.id)
    engine = ChatEngine()
    engine.ensure_base(ref.base_model)
    engine.ensure_adapter(ref.key, ref.folder)
    return identity_data.what_it_learned(engine, ref.key, name, author)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=0, help="0 = the whole identity set")
    p.add_argument("--name", default=identity_data.NAME)
    p.add_argument("--author", default=identity_data.MAKER)
    p.add_argument("--max-steps", type=int, default=0, help="0 = the form's defaults (epochs)")
    p.add_argument("--speed-steps", type=int, default=30,
                   help="steps of the steady-state measurement (10 varied by a fifth between runs)")
    p.add_argument("--home", type=Path, default=None, help="studio data folder (default: a new temporary one)")
    p.add_argument("--cold", action="store_true",
                   help="start the worker with --no-prepare (the bundled model must be converted already): the run "
                        "makes its own general-replay answers, as when Start is pressed the moment the worker starts")
    p.add_argument("--data", type=Path, default=None, help="another identity-style dataset file (default: the "
                   "built-in ~100-row set); give --name and --author as it teaches them")
    p.add_argument("--fill", action="append", default=[], metavar="BLANK=VALUE",
                   help="fill a template blank of --data as `studio dataset add --fill` does")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # stop the worker too, in ``finally``

    home = args.home or Path(tempfile.mkdtemp(prefix="first-run-"))
    env = environment(home)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("STUDIO_", "HF_"))})
    print(f"before: {uptime()}", flush=True)
    home.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = args.data.resolve()
    else:
        rows = identity_data.alpaca_rows(args.name, args.author)[:args.rows or None]
        data = home / "identity.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    added = studio(env, "dataset", "add", str(data), "--name", "identity", *[f"--fill={f}" for f in args.fill])
    if added.returncode:
        sys.exit(f"studio dataset add failed: {added.stderr.strip() or added.stdout.strip()}")
    config = {"dataset": "identity"}
    if args.max_steps:
        config["max_steps"] = args.max_steps
    (home / "job.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))

    worker_log = open(home / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--no-infer", "--parent", str(os.getpid()),
                               *["--no-prepare"] * args.cold],
                              cwd=ROOT, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # the clock starts where a newcomer presses Start: with the worker `make run` started already waiting, and
        # done preparing the bundled model (converted, its general-replay answers made; the header says so)
        launched = deadline = time.time()
        deadline += 600
        while (b"worker ready" if args.cold else b"worker prepared") not in (home / "worker.log").read_bytes():
            if worker.poll() is not None or time.time() > deadline:
                sys.exit(f"the worker did not start: {(home / 'worker.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        prepared = time.time() - launched
        started = time.time()
        run = studio(env, "train", str(home / "job.yaml"), "--follow")
        wall = time.time() - started
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
    found = re.search(r"queued \S+ \((\S+)\)", run.stdout)
    if run.returncode or not found:
        sys.exit(f"the run did not complete: {run.stderr.strip()[-2000:] or run.stdout.strip()[-2000:]}")

    from studio import db
    from studio.settings import get_settings

    job = db.get_job(found.group(1))
    log_text = (get_settings().resolve(job.output_dir) / "train.log").read_text()
    summary = job.summary
    split = time_split(job, log_text)
    total = job.finished_at - job.created_at
    print(f"worker start to prepared (before Start; a newcomer's first minute in the page): {prepared:.1f} s")
    print(f"dataset: {data.name}: {added.stdout.strip()}")
    print(f"first run: {db.get_dataset('identity').rows} rows, {summary.get('steps')} steps, Start to completed {total:.1f} s "
          f"(`studio train --follow` returned after {wall:.1f} s)")
    for part in PARTS:
        print(f"  {part:<17} {split[part]:7.1f} s  {100 * split[part] / total:5.1f}%")
    tokens = summary.get("tokens") or 0
    whole = tokens / total if total else 0.0
    steady = steady_tokens_per_second(job.spec, args.speed_steps, home / "speed")
    print(f"tokens/s: whole run {whole:.1f} ({tokens:.0f} tokens), steady state (bench/train_speed.py studio path, "
          f"{args.speed_steps} steps) {steady:.1f}: {100 * whole / steady:.0f}% (target at least 80%)")
    spec = job.spec
    print(f"spec as run: epochs {spec['num_train_epochs'] or 'auto'}, lr {spec['learning_rate']} "
          f"{spec['lr_scheduler_type']}, r {spec['r']}, targets {spec['target_modules']}, "
          f"system prompt {spec['system_prompt_mode']}, general replay {spec.get('general_replay', 0)}, "
          f"4-bit {spec['load_in_4bit']}")
    learned = what_it_learned(job, args.name, args.author)
    n = len(identity_data.HELD_OUT_PARAPHRASES)
    print(f"held-out identity paraphrases answered with {args.name!r} or {args.author!r}: adapter {learned['hits']}/{n}, "
          f"base {learned['hits_base']}/{n} (target at least 9)")
    for q, a in zip(identity_data.HELD_OUT_PARAPHRASES, learned["held_out"]):
        print(f"  {q} -> {a[:120]!r}")
    kept = sum(a and b for a, b in zip(learned["general_right"], learned["general_right_base"]))
    print(f"general questions the base answers right, still right after training: {kept}/"
          f"{sum(learned['general_right_base'])}")
    for (q, _), a, b in zip(identity_data.GENERAL_QUESTIONS, learned["general"], learned["general_base"]):
        print(f"  {q} -> adapter {a[:80]!r} | base {b[:80]!r}")
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()
