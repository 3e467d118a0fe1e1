"""What a small identity run learns and what it forgets, on the bundled SmolLM2: the ~100-row identity set trained
through the worker's own ``run_job`` with the form's defaults (or ``--set key=value`` overrides), then

- the held-out identity paraphrases answered with the new name or maker (target: at least 9 of 10);
- the general-skills probe, base against adapter, as the forgetting check runs it after every SFT run
  (target: not flagged, i.e. at most ``forgetting_threshold`` points lost);
- the run's wall time from start to completed, and its steps.

    .venv/bin/python bench/forgetting.py [--set learning_rate=2e-4 --set general_replay=0 ...]
    .venv/bin/python bench/forgetting.py --data acceptance --set load_in_4bit=false

``--data``: ``first-run`` (default), the 97-row alpaca identity set of a newcomer's first run; ``acceptance``,
the 40-row set of the forgetting check's acceptance test (20 questions asked twice, trained 5 times over).

Runs in this process, one after the other when several ``--variant`` lists are given (each a comma-separated
list of key=value), so their figures are measured on the same machine in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "STUDIO_FORGETTING_CHECK": "on"}.items():
    os.environ[key] = value
os.environ.setdefault("STUDIO_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))

import identity_data  # noqa: E402  (the acceptance data: a made-up name and maker, paraphrased questions)


DATA = {"first-run": identity_data.write_alpaca, "acceptance": identity_data.write}


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def one_run(name: str, dataset: str, overrides: dict) -> dict:
    from bench.first_run import what_it_learned
    from studio import db
    from studio.spec import JobSpec
    from workers import train

    spec = JobSpec(dataset=dataset, name=name, **overrides)
    problems = spec.validate()
    if problems:
        sys.exit(f"{name}: {problems}")
    job = db.Job(name=name, spec_json=spec.to_json(), output_dir=f"jobs/{name}")
    with db.session() as s:
        s.add(job)
        s.commit()
    started = time.perf_counter()
    status = train.run_job(job.id)
    job = db.get_job(job.id)
    if status != "completed":
        sys.exit(f"{name}: {status}: {job.error}")
    forgetting = job.summary.get("forgetting", {})
    learned = what_it_learned(job, identity_data.NAME, identity_data.MAKER)
    kept = sum(a and b for a, b in zip(learned["general_right"], learned["general_right_base"]))
    return {"name": name, "overrides": overrides, "steps": job.summary.get("steps"),
            "train_seconds": round(job.finished_at - job.started_at, 1),
            "with_check_seconds": round(time.perf_counter() - started, 1),
            "hits": learned["hits"], "hits_base": learned["hits_base"],
            "general_kept": f"{kept}/{sum(learned['general_right_base'])}",
            "probe": forgetting.get("summary"), "drop_points": forgetting.get("drop_points"),
            "flagged": forgetting.get("flagged"), "held_out": learned["held_out"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", action="append", default=[],
                   help="comma-separated key=value overrides of the form's defaults; repeat for several runs")
    p.add_argument("--set", action="append", default=[], help="one key=value override (a single run)")
    p.add_argument("--data", choices=sorted(DATA), default="first-run", help="which identity set to train on")
    p.add_argument("--home", type=Path, default=None,
                   help="a data folder to reuse (its cached base answers to the probe and the replay prompts)")
    args = p.parse_args()
    variants = [v.split(",") for v in args.variant] or [args.set]

    home = args.home or Path(tempfile.mkdtemp(prefix="forgetting-"))
    os.environ["STUDIO_HOME"] = str(home)
    from studio import db, library, settings

    settings.reset_settings()
    dataset = f"identity-{args.data}"
    if db.get_dataset(dataset) is None:
        library.add(DATA[args.data](home / f"{dataset}.jsonl"), name=dataset)
    first = len(db.list_jobs())  # run names go on from an earlier call on the same folder
    results = []
    for i, items in enumerate(variants, start=first):
        result = one_run(f"run{i}", dataset, parse_overrides([x for x in items if x]))
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "held_out"}), flush=True)
    n = len(identity_data.HELD_OUT_PARAPHRASES)
    print(f"\n{'overrides':<46} {'steps':>5} {'train s':>8} {'identity':>8} {'general':>7}  probe")
    for r in results:
        flag = " FLAGGED" if r["flagged"] else ""
        print(f"{json.dumps(r['overrides']) or '{}':<46} {r['steps']:>5} {r['train_seconds']:>8} "
              f"{r['hits']:>5}/{n} {r['general_kept']:>7}  {r['probe']} (-{r['drop_points']} points){flag}")


if __name__ == "__main__":
    main()
