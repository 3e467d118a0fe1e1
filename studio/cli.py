"""`studio` command line: the same code paths as the UI.

This module holds the commands that need no model (serve, auth, backup, dataset, train, jobs, cancel, resume,
estimate, chat, sweep) and the parser; workers/cli.py adds the ones that run models on this machine (worker, infer,
export, evaluate) and is the ``studio`` console script. ``python -m studio.cli`` has this module's commands only.

Exit codes: 0 success, 2 bad input (the one-sentence reason on stderr), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- argument types: a bad value is argparse's one-line error (exit 2), never a traceback --------------

WHOLE = re.compile(r"[+-]?[0-9]{1,30}")


def port_arg(text: str) -> int:
    if not WHOLE.fullmatch(text.strip()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got '{text[:40]}'")
    return int(text)


def any_port_arg(text: str) -> int:
    return 0 if text.strip() == "0" else port_arg(text)


def temperature_arg(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more (0 = greedy), got '{text[:40]}'")
    return value


def seed_arg(text: str) -> int:
    from .limits import SEED_RANGE

    low, high = SEED_RANGE
    value = int(text) if WHOLE.fullmatch(text.strip()) else None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got '{text[:40]}'")
    return value


# ---- serve: the UI, and a worker beside it ------------------------------------------------------

AUTH_ON_COMMAND_LINE = ("--auth is refused because every local user can read a command line (`ps`): store the "
                        "password with `studio auth add USER --file PATH` and start with "
                        "`studio serve --auth-file PATH`")
AUTH_VARS = ("STUDIO_AUTH", "STUDIO_AUTH_FILE")  # the UI's login: never handed to the worker


def _login(auth_file: str | None, settings):
    """gradio's auth for serve: the auth file's checker, STUDIO_AUTH's (user, password), or None."""
    from . import auth

    path = Path(auth_file).expanduser().resolve() if auth_file else settings.auth_file
    if path is None:
        return settings.auth
    if settings.auth:
        raise ValueError("STUDIO_AUTH and an auth file are both set: unset STUDIO_AUTH and keep the auth file")
    auth.load(path)
    if path.stat().st_mode & 0o077:
        print(f"warning: other users can read the auth file {path}: chmod 600 it", file=sys.stderr)
    return auth.checker(path)


def cmd_serve(args) -> int:
    if args.auth:
        return fail(AUTH_ON_COMMAND_LINE)
    from .settings import child_env, get_settings, reset_settings

    reset_settings()
    try:
        settings = get_settings()
        login = _login(args.auth_file, settings)
    except ValueError as exc:
        return fail(str(exc))
    from . import db
    from .liveness import Supervisor

    supervisor = None
    if not args.no_worker:
        argv = [sys.executable, "-m", "workers.cli", "worker", "--parent", str(os.getpid())]
        env = child_env(drop=AUTH_VARS)
        supervisor = Supervisor(argv, env, _worker_exited, grace=WORKER_STOP_GRACE).start()
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the UI and the worker as Ctrl-C does
    try:
        import gradio as gr

        from .ui import STATIC, build_ui, launch_kwargs

        gr.set_static_paths([STATIC])
        demo = build_ui()
        demo.queue(default_concurrency_limit=8)
        port = settings.ui_port if args.port is None else args.port
        print(f"Fine-Tune Studio: http://{args.host}:{port}  (data in {settings.home})", flush=True)
        demo.launch(server_name=args.host, server_port=port, auth=login, show_error=False,
                    quiet=True, footer_links=["api"], **launch_kwargs())
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor is not None:
            # the worker stops at the end of its step and checkpoints; a second signal makes it stop now
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, _frame: supervisor.signal(signum))
            print("stopping the worker (its running job is checkpointed and can be resumed)", flush=True)
            supervisor.stop()
        db.checkpoint()
    return 0


WORKER_STOP_GRACE = 120.0  # seconds serve waits for its worker to checkpoint and exit before killing it


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _worker_exited(pid: int, code: int) -> None:
    """serve's worker died: its running job becomes interrupted now, and its row goes."""
    from . import jobs

    for job_id in jobs.mark_lost_jobs():
        print(f"worker {pid} exited ({code}); job {job_id} is interrupted and can be resumed", file=sys.stderr,
              flush=True)
    jobs.live_workers()


def pg_dump_advice(url: str) -> str:
    """The one sentence `studio backup` answers for a server database: the pg_dump line for its URL
    (libpq's form: no SQLAlchemy driver suffix, no password)."""
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)
    plain = URL.create(u.get_backend_name(), u.username, None, u.host, u.port, u.database, u.query)
    return (f"the database is PostgreSQL, which `studio backup` does not copy: run "
            f"`pg_dump \"{plain.render_as_string()}\" > studio-backup.sql` instead")


def cmd_backup(args) -> int:
    from . import db
    from .settings import get_settings

    try:
        url = get_settings().database_url
    except ValueError as exc:
        return fail(str(exc))
    if not url.startswith("sqlite"):
        return fail(pg_dump_advice(url))
    target = Path(args.path).expanduser()
    if target.exists():
        return fail(f"'{target}' already exists; give the name of a new file")
    if not target.parent.is_dir():
        return fail(f"the folder '{target.parent}' does not exist")
    source = db.backup(target)
    print(f"backed up {source} to {target}")
    return 0


# ---- auth -----------------------------------------------------------------------------------------

def _read_password() -> str | None:
    """From the terminal (asked twice), or the first line of stdin when it is not a terminal; None when
    the two typed passwords differ."""
    import getpass

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    return first if getpass.getpass("Password again: ") == first else None


def cmd_auth_add(args) -> int:
    from . import auth
    from .settings import load_settings

    path = args.file or load_settings().auth_file
    if not path:
        return fail("give the auth file with --file PATH (or set STUDIO_AUTH_FILE)")
    try:
        user = auth.check_user(args.user)
        password = _read_password()
        if password is None:
            return fail("the two passwords differ; nothing was written")
        new = auth.set_password(Path(path).expanduser(), user, password)
    except auth.AuthFileError as exc:
        return fail(str(exc))
    print(f"{'added' if new else 'changed the password of'} {user} in {path}")
    return 0


# ---- datasets -------------------------------------------------------------------------------------

def cmd_dataset_check(args) -> int:
    from . import library
    from .datasets import DatasetError

    from .datasets.stats import parse_fill, token_stats, tokenizer_for, tool_stats, tools_sentence
    from .spec import BUNDLED_MODEL

    args.base_model = args.base_model or BUNDLED_MODEL
    try:
        data = library.inspect(Path(args.path), format=args.format, drop_bad=args.drop_bad,
                               fill=parse_fill(args.fill))
    except DatasetError as exc:
        return fail(str(exc))
    tokenizer = tokenizer_for(args.base_model)
    tokens = token_stats(tokenizer, data.rows, data.kind, args.max_length) if tokenizer is not None else {}
    warnings = list(data.notes) + ([] if tokenizer is not None else
                                   [f"the model '{args.base_model}' is not on disk, so tokens were not counted"])
    if tokens.get("truncated_share", 0) > 0.05:
        warnings.append(f"{tokens['truncated_share']:.0%} of the trained tokens are past max length "
                        f"{args.max_length} and would be cut ({tokens['overlong_rows']} rows)")
    tools = tool_stats(data.rows, data.kind, tokenizer)
    report = {"format": data.format, "kind": data.kind, "rows": len(data.rows),
              **{k: tokens.get(k) for k in ("trained_tokens", "masked_tokens", "truncated_tokens", "overlong_rows")},
              "tools": tools, "warnings": warnings, "dropped": data.dropped, "stats": data.stats(),
              "mapping": data.mapping}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"format: {data.format} ({data.kind})\nrows: {len(data.rows)}")
        if tokens:
            print(f"tokens: {tokens['trained_tokens']} trained, {tokens['masked_tokens']} masked, "
                  f"{tokens['truncated_tokens']} cut at max length {args.max_length}")
        if tools:
            print(tools_sentence(tools))
        for line in warnings:
            print(f"warning: {line}")
        for reason in data.dropped[:20]:
            print(f"dropped: {reason}")
    return 0


def cmd_dataset_add(args) -> int:
    from . import library
    from .datasets import DatasetError
    from .datasets.stats import parse_fill
    from .settings import UnsafePath

    notes: list[str] = []
    try:
        rec, created = library.add(Path(args.path), name=args.name, format=args.format, drop_bad=args.drop_bad,
                                   fill=parse_fill(args.fill), notes=notes)
    except (DatasetError, UnsafePath) as exc:
        return fail(str(exc))
    print(f"{'added' if created else 'already present'}: {rec.name} ({rec.format}, {rec.rows} rows)")
    for note in notes:
        print(f"note: {note}")
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
        return fail(str(exc))
    except FileNotFoundError:
        return fail(f"the file '{args.config}' does not exist")
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

    for j in db.list_jobs(kind=None):  # training runs and tasks (merge, gguf, evaluate): the kind is the name's prefix
        print(f"{j.id}\t{j.name}\t{j.status}\t{j.current_step}/{j.total_steps or '?'}\t{j.worker_host or ''}\t"
              f"{j.device or ''}\t{j.error or ''}")
    return 0


def cmd_cancel(args) -> int:
    from . import jobs

    try:
        job = jobs.cancel(args.job)
    except KeyError:
        return fail(f"there is no job '{args.job}'")
    print(f"{job.name}: {'cancel requested' if job.status == 'running' else job.status}")
    return 0


def cmd_resume(args) -> int:
    from . import db, jobs

    job = db.get_job(args.job)
    if job is None:
        return fail(f"there is no job '{args.job}'")
    try:
        job = jobs.resume(job.id)
    except ValueError as exc:
        return fail(str(exc))
    print(f"queued {job.name} to resume")
    return follow(job.id) if args.follow else 0


def cmd_estimate(args) -> int:
    from . import catalog, memory
    from .models import ModelError, cached_dir, linear_layer_names
    from .spec import SpecError

    try:
        spec = _load_spec(args.config)
    except SpecError as exc:
        return fail(str(exc))
    except FileNotFoundError:
        return fail(f"the file '{args.config}' does not exist")
    try:
        linear = linear_layer_names(spec.base_model)
    except ModelError:
        linear = None
    errors = spec.validate(linear_names=linear)  # what `studio train` refuses, except that an estimate needs no data
    errors.pop("dataset", None)
    if errors:
        return fail(str(SpecError(errors)))
    d = cached_dir(spec.base_model)
    config = catalog.config_for(spec.base_model, str(d) if d else None)
    if config is None:
        return fail(f"no configuration is known for '{spec.base_model}': give a local model folder or a model "
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
    """`studio chat RUN --prompt TEXT [--compare]`: the adapter's reply (and the base's, with --compare),
    streamed from a running inference server."""
    from . import inference_client
    from .adapter_library import AdapterError, resolve
    from .chat import NO_SERVER, GenerationSettings, served_name
    from .models import shown_model
    from .settings import UnsafePath

    try:
        ref = resolve(args.run)
    except (AdapterError, UnsafePath) as exc:
        return fail(str(exc))
    if not (args.prompt or "").strip():
        return fail("give a prompt with --prompt")
    settings = GenerationSettings(max_new_tokens=getattr(args, "max_new_tokens", 128),
                                  temperature=getattr(args, "temperature", 0.0), seed=getattr(args, "seed", 0))
    messages = ([{"role": "system", "content": args.system}] if getattr(args, "system", "") else []) + [
        {"role": "user", "content": args.prompt}]
    base = shown_model(ref.base_model)
    try:
        url = inference_client.pick_server(base).url
    except inference_client.InferenceError:
        return fail(NO_SERVER, 1)
    if ref.using:
        print(f"{ref.name}: using {ref.using}", file=sys.stderr, flush=True)
    try:
        if args.compare:
            print(f"--- base ({base})", flush=True)
            _print_stream(inference_client.chat_stream(messages, base, settings, url=url))
            print(f"--- {ref.name}", flush=True)
        _print_stream(inference_client.chat_stream(messages, served_name(ref), settings, url=url))
    except inference_client.InferenceError as exc:
        return fail(f"cannot chat with {ref.name}: {exc}", 1)
    return 0


def _print_stream(stream) -> None:
    shown = ""
    for text in stream:
        print(text[len(shown):], end="", flush=True)
        shown = text
    print(flush=True)


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ValueError(f"cannot read the {what} file '{path}' (give a UTF-8 text file)") from None


def cmd_sweep(args) -> int:
    """`studio sweep SWEEP.yaml [--dry-run]`, `--leaderboard GROUP`, `--cancel GROUP`."""
    from . import jobs, sweep

    if sum(map(bool, (args.file, args.leaderboard, args.cancel))) != 1:
        return fail("give a sweep file, or --leaderboard GROUP, or --cancel GROUP")
    if args.leaderboard:
        try:
            swept, rows = sweep.leaderboard(args.leaderboard)
        except KeyError:
            return fail(f"there is no sweep '{args.leaderboard}'")
        columns = ["rank", "run", "status", *swept, *SWEEP_COLUMNS]
        print("\t".join(columns))
        for row in rows:
            print("\t".join(_cell(row.get(c)) for c in columns))
        return 0
    if args.cancel:
        try:
            members = jobs.cancel_group(args.cancel)
        except KeyError:
            return fail(f"there is no sweep '{args.cancel}'")
        for job in members:
            print(f"{job.name}: {'cancel requested' if job.status == 'running' else job.status}")
        return 0
    try:
        plan = sweep.parse(read_text(args.file, "sweep"), Path(args.file).stem)
        for spec in plan.members:
            print(f"{spec.name}\t" + ", ".join(f"{k}={sweep.value_text(getattr(spec, k))}" for k in plan.fields))
        if args.dry_run:
            print(f"{len(plan.members)} runs (dry run: nothing queued)")
            return 0
        queued = sweep.queue(plan)
    except (ValueError, sweep.SweepError) as exc:
        return fail(str(exc))
    print(f"queued {len(queued)} runs in sweep {plan.name}")
    return 0


SWEEP_COLUMNS = ["best_eval_loss", "final_loss", "probe_kept", "judge_win_rate", "seconds", "tokens_per_second"]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


DROP_HELP = "leave out rows that cannot be read (each named in the report) instead of refusing the file"
FILL_HELP = ("fill the rows' template blank NAME ({{NAME}}, <NAME> or a bare NAME) with VALUE as they are read "
             "(repeat for each blank; the file is kept as it is)")


def build_parser(*extensions: Callable[[Any], None]) -> argparse.ArgumentParser:
    """This module's commands, then each extension's: ``extension(sub)`` adds its own to the subcommands
    (workers.cli.add_commands: worker, infer, export, evaluate)."""
    p = argparse.ArgumentParser(prog="studio", description="Fine-Tune Studio")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the web UI and one worker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port_arg, default=None, help="default: STUDIO_PORT, else 7860")
    s.add_argument("--auth", default=None, help=argparse.SUPPRESS)  # refused with a pointer to --auth-file
    s.add_argument("--auth-file", default=None, metavar="PATH",
                   help="require a login checked against this file of password hashes (or STUDIO_AUTH_FILE); "
                        "write it with `studio auth add USER`")
    s.add_argument("--no-worker", action="store_true", help="UI only")
    s.set_defaults(func=cmd_serve)

    au = sub.add_parser("auth", help="manage the UI's logins (a file of salted password hashes)")
    ausub = au.add_subparsers(dest="auth_command", required=True)
    aa = ausub.add_parser("add", help="add a user or change its password (asked for, or read from stdin)")
    aa.add_argument("user")
    aa.add_argument("--file", default=None, metavar="PATH", help="the auth file (default: STUDIO_AUTH_FILE)")
    aa.set_defaults(func=cmd_auth_add)

    b = sub.add_parser("backup", help="copy the SQLite database to a new file while the studio runs")
    b.add_argument("path", help="the new file, e.g. studio-backup.db")
    b.set_defaults(func=cmd_backup)

    d = sub.add_parser("dataset", help="check, add and list datasets")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    c = dsub.add_parser("check")
    c.add_argument("path")
    c.add_argument("--format", default=None)
    c.add_argument("--drop-bad-rows", "--drop-bad", dest="drop_bad", action="store_true", help=DROP_HELP)
    c.add_argument("--json", action="store_true")
    c.add_argument("--base-model", default=None, help="count tokens with this model's tokenizer and template "
                                                      "(default: the bundled model)")
    c.add_argument("--max-length", type=int, default=512, help="count the tokens this max length would cut")
    c.add_argument("--fill", action="append", default=[], metavar="NAME=VALUE",
                   help=FILL_HELP)
    c.set_defaults(func=cmd_dataset_check)
    a = dsub.add_parser("add")
    a.add_argument("path")
    a.add_argument("--name", default=None)
    a.add_argument("--format", default=None)
    a.add_argument("--drop-bad-rows", "--drop-bad", dest="drop_bad", action="store_true", help=DROP_HELP)
    a.add_argument("--fill", action="append", default=[], metavar="NAME=VALUE",
                   help=FILL_HELP)
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
    ch.add_argument("--temperature", type=temperature_arg, default=0.0, help="0 = greedy")
    ch.add_argument("--seed", type=seed_arg, default=0, help="a 64-bit whole number")
    ch.set_defaults(func=cmd_chat)
    sw = sub.add_parser("sweep", help="queue a grid or random sample of runs from a sweep YAML as one group; "
                                      "show its leaderboard or cancel it")
    sw.add_argument("file", nargs="?", help="a sweep YAML: base, and grid or random + samples")
    sw.add_argument("--dry-run", action="store_true", help="list the runs without queueing them")
    sw.add_argument("--leaderboard", metavar="GROUP", help="the sweep's runs, best eval loss first")
    sw.add_argument("--cancel", metavar="GROUP", help="cancel every queued or running run of the sweep")
    sw.set_defaults(func=cmd_sweep)
    for extension in extensions:
        extension(sub)
    return p


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command; ``parser``: build_parser()'s, extended (workers.cli.main passes the whole one)."""
    args = (parser or build_parser()).parse_args(argv)
    from .settings import load_settings

    try:
        load_settings()   # every command reads them: a bad value is one sentence before anything starts
    except ValueError as exc:
        return fail(str(exc))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
