"""`studio`, the whole command line: studio/cli.py's commands and those that run models on this machine (worker,
infer, export, evaluate). The console script ``studio`` and ``python -m workers.cli`` start here; ``python -m
studio.cli`` has the commands that need no model only.

The workers' modules are imported inside the commands, so importing this module (app.py does) or `studio --help`
loads no torch. Exit codes as studio/cli.py's: 0 success, 2 bad input (one sentence on stderr), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from studio import cli
from studio.cli import any_port_arg, fail, read_text


# ---- worker / infer -------------------------------------------------------------------------------

def cmd_worker(args) -> int:
    import contextlib

    from workers.consumer import run_worker

    if args.parent:
        from studio.liveness import watch_parent

        watch_parent(args.parent)
    with contextlib.ExitStack() as beside:
        if not args.no_infer:
            from workers.inference.server import BindError, beside_worker

            try:
                beside.enter_context(beside_worker())
            except BindError as exc:
                return fail(f"cannot start the inference server ({exc}): set STUDIO_INFER_PORT to a free port "
                            "or start the worker with --no-infer")
        run_worker(gpus=args.gpus, prepare=not args.no_prepare)
    return 0


def cmd_infer(args) -> int:
    from workers.inference.server import BindError, serve_forever

    engine = None
    if args.engine == "vllm":
        from workers.inference.vllm_engine import VLLMEngine

        from studio.settings import env_text
        from studio.spec import BUNDLED_MODEL

        base = args.base_model or BUNDLED_MODEL
        if args.vllm_url:  # a vLLM server started elsewhere (with --enable-lora and runtime LoRA updating)
            engine = VLLMEngine(base, args.vllm_url, env_text("VLLM_API_KEY") or None, args.max_lora_rank)
        else:
            try:
                engine = VLLMEngine.start(base, args.max_lora_rank)
            except RuntimeError as exc:
                return fail(str(exc))
    elif args.vllm_url or args.base_model:
        return fail("--base-model and --vllm-url go with --engine vllm")
    try:
        serve_forever(args.host, args.port, engine)
    except BindError as exc:
        return fail(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}): choose another --port")
    finally:
        if engine is not None:
            engine.stop()
    return 0


def cmd_export(args) -> int:
    """`studio export RUN --merge OUT` and/or `--gguf OUT [--quant q8_0]`: the Adapters tab's merge or GGUF
    task, run inline here. OUT is a path on this machine chosen by whoever runs the command (a worker may
    run on another host, or none at all); the task's row still goes through the job lifecycle, so the UI
    shows it and `studio cancel ID` stops it between steps. A --gguf OUT ending in .gguf names the file,
    otherwise it is a folder; without --merge the GGUF is built from a merge under <home>/exports/."""
    from studio import db, jobs, serving
    from studio.adapter_exports import mergeable
    from studio.adapter_library import AdapterError, human_bytes, resolve
    from studio.models import ModelError
    from studio.settings import UnsafePath

    if not args.merge and not args.gguf:
        return fail("say what to export: --merge OUT and/or --gguf OUT")
    quant = (args.quant or "q8_0").lower()
    if quant not in serving.GGUF_QUANTS:
        return fail(f"--quant must be one of {', '.join(serving.GGUF_QUANTS)}")
    try:
        ref = mergeable(resolve(args.run))
    except (AdapterError, UnsafePath, ModelError) as exc:
        return fail(str(exc))
    if args.merge and Path(args.merge).exists():
        return fail(f"{args.merge} already exists")
    if ref.using:
        print(f"{ref.name}: using {ref.using}", file=sys.stderr, flush=True)
    if args.gguf:
        params = {"ref": ref.ref, "quant": quant, "drift": not args.no_drift_check,
                  "dtype": args.dtype or "float32", "gguf_out": str(Path(args.gguf).resolve()),
                  "merged_out": str(Path(args.merge).resolve()) if args.merge else None}
        job = jobs.submit_task("gguf", f"gguf {ref.name} {quant}", params, queue=False)
    else:
        params = {"ref": ref.ref, "dtype": args.dtype or "float32", "out": str(Path(args.merge).resolve())}
        job = jobs.submit_task("merge", f"merge {ref.name}", params, queue=False)
    from workers.inference.task import run_task

    status = run_task(job.id)
    job = db.get_job(job.id)
    if status != "completed":
        return fail(f"the {job.kind} task {job.id} is {status}" + (f": {job.error}" if job.error else ""), 1)
    result = job.summary
    merged = result if job.kind == "merge" else result.get("merge")
    if merged:
        print(f"merged into {merged['path']} ({human_bytes(merged['bytes'])}, {merged['seconds']:.1f} s)")
    if job.kind == "gguf":
        g = result["gguf"]
        print(f"wrote {g['path']} ({human_bytes(g['bytes'])}, {g['seconds']:.1f} s) and {result['modelfile']}")
        if "drift" in result:
            d = result["drift"]
            print(serving.drift_sentence(d))
    return 0


# ---- evaluate: a probe, or a judge ---------------------------------------------------------------

def cmd_evaluate(args) -> int:
    """`studio evaluate RUN --probe general` or `--judge URL --against base|RUN`."""
    from studio.adapter_library import AdapterError, resolve
    from studio.settings import UnsafePath

    if bool(args.probe) == bool(args.judge):
        return fail("say how to evaluate: --probe general, or --judge URL --against base|RUN")
    try:
        ref = resolve(args.run)
    except (AdapterError, UnsafePath) as exc:
        return fail(str(exc))
    return _evaluate_probe(ref, args) if args.probe else _evaluate_judge(ref, args)


def _evaluate_probe(ref, args) -> int:
    from studio.models import ModelError
    from studio.probe import ProbeError, load_probe
    from workers.forgetting import probe_adapter

    try:
        load_probe(args.probe)
    except ProbeError as exc:
        return fail(str(exc))
    print(f"answering the {args.probe} probe with {ref.name} and its base ({ref.base_model})…", flush=True)
    try:
        report, path = probe_adapter(ref, args.probe)
    except (ModelError, FileNotFoundError, OSError) as exc:
        return fail(f"cannot load {ref.name}: {exc}", 1)
    from studio.probe.runner import flag_line

    flag = f"  FLAGGED: {flag_line(report)}" if report["flagged"] else ""
    print(report["summary"] + flag)
    for name, tally in report["by_category"].items():
        print(f"  {name}: base {tally['base']}/{tally['total']}, adapter {tally['adapter']}/{tally['total']}")
    changed = sum(q["changed"] for q in report["questions"])
    print(f"{changed} questions changed; every reply side by side in {path}")
    return 0


def _judge_prompts(ref, args) -> list[str]:
    """The prompts to judge on: --prompts FILE (one a line, or JSONL rows), else the run's eval split."""
    from studio.golden_prompts import prompt_of

    if args.prompts:
        path = Path(args.prompts).expanduser()
        lines = [line.strip() for line in read_text(args.prompts, "prompts").splitlines() if line.strip()]
        if path.suffix.lower() == ".jsonl":
            try:
                prompts = [prompt_of(json.loads(line)) for line in lines]
            except (ValueError, AttributeError, TypeError):
                raise ValueError(f"'{path}' is not JSONL with a prompt or messages on each line") from None
            if None in prompts:
                raise ValueError(f"line {prompts.index(None) + 1} of '{path}' holds no user prompt")
        else:
            prompts = lines
    elif ref.kind == "imported":
        raise ValueError(f"{ref.name} is an imported adapter with no eval split: give --prompts FILE")
    else:
        from studio import db
        from studio.spec import JobSpec
        from workers.train import load_training_rows

        _, _, eval_rows = load_training_rows(JobSpec.from_dict(db.get_job(ref.job_id).spec))
        prompts = [p for p in map(prompt_of, eval_rows) if p]
        if not prompts:
            raise ValueError(f"the run {ref.name} has no eval split to judge on: give --prompts FILE")
    if not prompts:
        raise ValueError("the prompts file holds no prompt")
    return prompts[: args.limit]


def _evaluate_judge(ref, args) -> int:
    import re

    from studio import judge
    from studio.adapter_library import AdapterError, resolve, same_base
    from studio.generation import GenerationSettings
    from studio.models import ModelError
    from studio.adapter_library import result_folder
    from studio.settings import UnsafePath, load_settings
    from workers.inference.chat_engine import ChatEngine

    if args.limit < 1 or args.max_new_tokens < 1:
        return fail("--limit and --max-new-tokens must be at least 1")
    against = None
    try:
        if args.against != "base":
            against = resolve(args.against)
            if not same_base(against.base_model, ref.base_model):
                return fail(f"{against.name} was trained on {against.base_model} and {ref.name} on "
                            f"{ref.base_model}: judge adapters of the same base")
        rubric = judge.check_rubric(read_text(args.rubric, "rubric")) if args.rubric else judge.DEFAULT_RUBRIC
        prompts = _judge_prompts(ref, args)
        client = judge.JudgeClient(args.judge, args.judge_key or load_settings().judge_key,
                                   args.judge_model)
    except (AdapterError, UnsafePath, judge.JudgeError, ValueError) as exc:
        return fail(str(exc))
    opponent = "base" if against is None else against.name
    print(f"generating {len(prompts)} replies each for {ref.name} and {opponent}…", flush=True)
    engine = ChatEngine()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    try:
        engine.ensure_base(ref.base_model)
        for r in filter(None, (ref, against)):
            engine.ensure_adapter(r.key, r.folder)
    except (ModelError, FileNotFoundError, OSError) as exc:
        return fail(f"cannot load the models: {exc}", 1)
    candidates = engine.generate_batch(conversations, ref.key, settings)
    opponents = engine.generate_batch(conversations, against.key if against else None, settings)
    print(f"asking the judge ({client.model}) about {len(prompts)} pairs, both orders…", flush=True)
    try:
        pairs = judge.judge_all(client.ask, prompts, candidates, opponents, rubric)
    except judge.JudgeError as exc:
        return fail(str(exc), 1)
    finally:
        client.close()
    result = judge.report(pairs, ref.name, opponent, f"{client.model} at {client.url}", rubric)
    stem = "vs-" + ("base" if against is None else re.sub(r"[^A-Za-z0-9._-]+", "-", against.ref))
    json_path, csv_path = judge.write(result, result_folder(ref, judge.JUDGE_FOLDER), stem)
    print(judge.summary_line(result))
    print(f"judged pairs: {json_path} and {csv_path}")
    return 0


# ---- the parser: studio.cli's, with these commands added ------------------------------------------

def add_commands(sub) -> None:
    """The commands that run models here, added to studio.cli's parser (``sub``: its subcommands)."""
    w = sub.add_parser("worker", help="start one queue consumer")
    w.add_argument("--gpus", default=None, help="pin to devices, e.g. 0,1")
    w.add_argument("--no-prepare", action="store_true", help="do not convert the bundled model at start")
    w.add_argument("--parent", type=int, default=None, metavar="PID",
                   help="stop (gracefully) when this process exits; `studio serve` starts its worker so")
    w.add_argument("--no-infer", action="store_true",
                   help="do not start the OpenAI-compatible inference server beside the consumer")
    w.set_defaults(func=cmd_worker)

    inf = sub.add_parser("infer", help="start an OpenAI-compatible inference server (/v1/chat/completions) "
                                       "whose models are the base models, runs, checkpoints and imports")
    inf.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    inf.add_argument("--port", type=any_port_arg, default=8000, help="default 8000; 0: a free one")
    inf.add_argument("--engine", choices=("transformers", "vllm"), default="transformers",
                     help="transformers + peft (default), or vLLM with --enable-lora on a GPU host where it is installed")
    inf.add_argument("--base-model", default=None, metavar="MODEL",
                     help="with --engine vllm: the one base vLLM serves (default: the bundled model)")
    inf.add_argument("--max-lora-rank", type=int, default=64, help="with --engine vllm: the largest LoRA rank it loads")
    inf.add_argument("--vllm-url", default=None, metavar="URL",
                     help="with --engine vllm: forward to this running vLLM server (an OpenAI base URL ending in /v1; "
                          "its key in VLLM_API_KEY) instead of starting one")
    inf.set_defaults(func=cmd_infer)

    x = sub.add_parser("export", help="merge an adapter into its base and/or write a GGUF + Ollama Modelfile")
    x.add_argument("run", help="run name or id, RUN_ID/checkpoint-N, or imported/NAME")
    x.add_argument("--merge", metavar="OUT", default=None, help="write the merged model to this new folder")
    x.add_argument("--gguf", metavar="OUT", default=None, help="a .gguf file, or a folder for <name>-<quant>.gguf")
    x.add_argument("--quant", default="q8_0", choices=["q8_0", "q4_k_m", "f16", "f32"])
    x.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights")
    x.add_argument("--no-drift-check", action="store_true", help="skip loading the GGUF back to compare")
    x.set_defaults(func=cmd_export)
    ev = sub.add_parser("evaluate", help="check a run for forgetting (--probe general) or have a model judge it "
                                         "against the base or another run (--judge URL --against base|RUN)")
    ev.add_argument("run", help="run name or id, RUN_ID/checkpoint-N, or imported/NAME")
    ev.add_argument("--probe", default=None, metavar="NAME", help="answer a general-skills probe (general) with "
                                                                  "the run and its base, and compare")
    ev.add_argument("--judge", default=None, metavar="URL",
                    help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ev.add_argument("--judge-key", default=None, metavar="KEY", help="the judge's API key (or STUDIO_JUDGE_KEY)")
    ev.add_argument("--judge-model", default=None, metavar="NAME", help="the judge's model (default: the first "
                                                                        "the endpoint lists)")
    ev.add_argument("--against", default="base", help="base, or another run of the same base (default: base)")
    ev.add_argument("--prompts", default=None, metavar="FILE",
                    help="prompts to judge on, one a line (or JSONL rows); default: the run's eval split")
    ev.add_argument("--rubric", default=None, metavar="FILE",
                    help="the judge's instructions, with {question}, {answer_a} and {answer_b}")
    ev.add_argument("--limit", type=int, default=50, help="judge at most this many prompts (default 50)")
    ev.add_argument("--max-new-tokens", type=int, default=128, help="reply length of the models judged")
    ev.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """Every `studio` command."""
    return cli.build_parser(add_commands)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
