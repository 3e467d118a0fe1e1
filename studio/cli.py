"""`studio` command line: the same code paths as the UI.

Exit codes: 0 success, 2 bad input (the one-sentence reason on stderr), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- serve / worker -----------------------------------------------------------------------------

def cmd_serve(args) -> int:
    if args.auth:
        os.environ["STUDIO_AUTH"] = args.auth
    from .settings import get_settings, reset_settings

    reset_settings()
    try:
        settings = get_settings()
    except ValueError as exc:
        return _fail(str(exc))
    worker = None
    if not args.no_worker:
        worker = subprocess.Popen([sys.executable, "-m", "studio.cli", "worker"], env=os.environ.copy())
    try:
        import gradio as gr

        from .ui import STATIC, build_ui, launch_kwargs

        gr.set_static_paths([STATIC])
        demo = build_ui()
        demo.queue(default_concurrency_limit=8)
        print(f"Fine-Tune Studio: http://{args.host}:{args.port}  (data in {settings.home})", flush=True)
        demo.launch(server_name=args.host, server_port=args.port, auth=settings.auth, show_error=False,
                    quiet=True, footer_links=["api"], allowed_paths=[str(STATIC)],
                    max_file_size=settings.upload_limit_bytes, **launch_kwargs())
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=120)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def cmd_worker(args) -> int:
    from workers.consumer import run_worker

    run_worker(gpus=args.gpus, prepare=not args.no_prepare)
    return 0


# ---- datasets -------------------------------------------------------------------------------------

def cmd_dataset_check(args) -> int:
    from . import library
    from .datasets import DatasetError

    try:
        data = library.inspect(Path(args.path), format=args.format, drop_bad=args.drop_bad)
    except DatasetError as exc:
        return _fail(str(exc))
    report = {"format": data.format, "kind": data.kind, "rows": len(data.rows), "dropped": data.dropped,
              "stats": data.stats(), "mapping": data.mapping}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"format: {data.format} ({data.kind})\nrows: {len(data.rows)}")
        for reason in data.dropped[:20]:
            print(f"dropped: {reason}")
    return 0


def cmd_dataset_add(args) -> int:
    from . import library
    from .datasets import DatasetError
    from .settings import UnsafePath

    try:
        rec, created = library.add(Path(args.path), name=args.name, format=args.format, drop_bad=args.drop_bad)
    except (DatasetError, UnsafePath) as exc:
        return _fail(str(exc))
    print(f"{'added' if created else 'already present'}: {rec.name} ({rec.format}, {rec.rows} rows)")
    return 0


def cmd_dataset_list(args) -> int:
    from . import db

    for d in db.list_datasets():
        print(f"{d.name}\t{d.format}\t{d.rows} rows\t{d.filename}")
    return 0


# ---- jobs -----------------------------------------------------------------------------------------

def _load_spec(path: str):
    from .spec import JobSpec

    return JobSpec.from_yaml(Path(path).read_text(encoding="utf-8"))


def cmd_train(args) -> int:
    from . import jobs
    from .spec import SpecError

    try:
        spec = _load_spec(args.config)
        job = jobs.submit(spec)
    except SpecError as exc:
        return _fail(str(exc))
    except FileNotFoundError:
        return _fail(f"the file '{args.config}' does not exist")
    print(f"queued {job.name} ({job.id})")
    return follow(job.id) if args.follow else 0


def follow(job_id: str) -> int:
    from . import db

    last_id, width = 0, 30
    while True:
        job = db.get_job(job_id)
        new = db.metrics_since(job_id, last_id)
        if new:
            last_id = new[-1].id
        loss = next((m.loss for m in reversed(new) if m.loss is not None), None)
        total = job.total_steps or 0
        done = int(width * job.current_step / total) if total else 0
        bar = "#" * done + "-" * (width - done)
        line = f"\r[{bar}] {job.current_step}/{total or '?'} {job.status}"
        if loss is not None:
            line += f" loss {loss:.4f}"
        print(line, end="", flush=True)
        if job.status not in db.ACTIVE:
            print()
            if job.error:
                print(job.error, file=sys.stderr)
            return 0 if job.status == "completed" else 1
        time.sleep(1)


def cmd_jobs(args) -> int:
    from . import db

    for j in db.list_jobs():
        print(f"{j.id}\t{j.name}\t{j.status}\t{j.current_step}/{j.total_steps or '?'}\t{j.worker_host or ''}\t"
              f"{j.device or ''}\t{j.error or ''}")
    return 0


def cmd_cancel(args) -> int:
    from . import jobs

    try:
        job = jobs.cancel(args.job)
    except KeyError:
        return _fail(f"there is no job '{args.job}'")
    print(f"{job.name}: {'cancel requested' if job.status == 'running' else job.status}")
    return 0


def cmd_resume(args) -> int:
    from . import db, jobs

    job = db.get_job(args.job)
    if job is None:
        return _fail(f"there is no job '{args.job}'")
    try:
        job = jobs.resume(job.id)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"queued {job.name} to resume")
    return follow(job.id) if args.follow else 0


def cmd_estimate(args) -> int:
    from . import catalog, memory
    from .models import cached_dir
    from .spec import SpecError

    try:
        spec = _load_spec(args.config)
    except SpecError as exc:
        return _fail(str(exc))
    except FileNotFoundError:
        return _fail(f"the file '{args.config}' does not exist")
    d = cached_dir(spec.base_model)
    config = catalog.config_for(spec.base_model, str(d) if d else None)
    if config is None:
        return _fail(f"no configuration is known for '{spec.base_model}': give a local model folder or a model "
                     f"from the table ({', '.join(sorted(catalog.ARCHITECTURES)[:6])}, …)")
    warnings: list[str] = []
    if args.device == "workers":
        from .jobs import estimate_for_workers

        est, where, warnings = estimate_for_workers(spec, config)
    else:
        est = memory.estimate_for_spec(spec, config, args.device)
        where = f"estimated for a {'CUDA GPU' if args.device == 'cuda' else 'CPU'}"
    if args.json:
        print(json.dumps({"total_params": est.total_params, "trainable_params": est.trainable_params,
                          "total_gb": est.total_gb, "breakdown": est.breakdown,
                          "fits": {str(k): v for k, v in est.fits().items()}, "device": where,
                          "warnings": warnings}, indent=2))
    else:
        for k, v in est.breakdown.items():
            print(f"{k:>24}: {v:8.2f} GB")
        print(f"{'total':>24}: {est.total_gb:8.2f} GB\ntrainable: {est.trainable_text()}\n{where}")
        for w in warnings:
            print(f"warning: {w}")
    return 0


def cmd_chat(args) -> int:
    from .adapters import cli_chat

    return cli_chat(args)


def cmd_export(args) -> int:
    from .adapters import cli_export

    return cli_export(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="Fine-Tune Studio")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the web UI and one worker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", "7860")))
    s.add_argument("--auth", default=None, help="user:password (or STUDIO_AUTH)")
    s.add_argument("--no-worker", action="store_true", help="UI only")
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="start one queue consumer")
    w.add_argument("--gpus", default=None, help="pin to devices, e.g. 0,1")
    w.add_argument("--no-prepare", action="store_true", help="do not convert the bundled model at start")
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("dataset", help="check, add and list datasets")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    c = dsub.add_parser("check")
    c.add_argument("path")
    c.add_argument("--format", default=None)
    c.add_argument("--drop-bad", action="store_true")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_dataset_check)
    a = dsub.add_parser("add")
    a.add_argument("path")
    a.add_argument("--name", default=None)
    a.add_argument("--format", default=None)
    a.add_argument("--drop-bad", action="store_true")
    a.set_defaults(func=cmd_dataset_add)
    dsub.add_parser("list").set_defaults(func=cmd_dataset_list)

    t = sub.add_parser("train", help="queue a job from a YAML file")
    t.add_argument("config")
    t.add_argument("--follow", action="store_true")
    t.set_defaults(func=cmd_train)
    sub.add_parser("jobs", help="list jobs").set_defaults(func=cmd_jobs)
    cn = sub.add_parser("cancel", help="cancel a job")
    cn.add_argument("job")
    cn.set_defaults(func=cmd_cancel)
    r = sub.add_parser("resume", help="resume an interrupted or cancelled job from its last checkpoint")
    r.add_argument("job")
    r.add_argument("--follow", action="store_true")
    r.set_defaults(func=cmd_resume)
    e = sub.add_parser("estimate", help="estimate peak training memory of a job YAML")
    e.add_argument("config")
    e.add_argument("--json", action="store_true")
    e.add_argument("--device", choices=["cuda", "cpu", "workers"], default="cuda",
                   help="estimate for a CUDA GPU (default), a CPU, or the devices of the running workers (with a "
                        "warning for each one it would not fit)")
    e.set_defaults(func=cmd_estimate)

    ch = sub.add_parser("chat", help="ask a finished run (or a checkpoint, or an imported adapter) one question")
    ch.add_argument("run", help="run name or id, RUN_ID/checkpoint-N, or imported/NAME")
    ch.add_argument("--prompt", required=True)
    ch.add_argument("--compare", action="store_true", help="print the base model's reply first")
    ch.add_argument("--system", default="", help="system prompt")
    ch.add_argument("--max-new-tokens", type=int, default=128)
    ch.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ch.add_argument("--seed", type=int, default=0)
    ch.set_defaults(func=cmd_chat)
    x = sub.add_parser("export", help="merge an adapter into its base and/or write a GGUF + Ollama Modelfile")
    x.add_argument("run", help="run name or id, RUN_ID/checkpoint-N, or imported/NAME")
    x.add_argument("--merge", metavar="OUT", default=None, help="write the merged model to this new folder")
    x.add_argument("--gguf", metavar="OUT", default=None, help="a .gguf file, or a folder for <name>-<quant>.gguf")
    x.add_argument("--quant", default="q8_0", choices=["q8_0", "f16", "f32"])
    x.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights")
    x.add_argument("--no-drift-check", action="store_true", help="skip loading the GGUF back to compare")
    x.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
