"""Jobs that ask for more than one device (``JobSpec.num_gpus > 1``): one process per device, DDP.

The consumer thread that picked the job up starts a launcher and waits for it::

    python -m workers.distributed launch JOB_ID --num-processes N
      -> accelerate launch --multi_gpu --num_processes N ... -m workers.distributed run JOB_ID
           -> N ranks, each running the ordinary ``workers.train.run_job``

Every rank trains; rank 0 alone writes to the database (``workers.device.is_main``): metrics,
heartbeat, the job's status, the adapter. Rank 0 reads the cancel flag, every rank honours the
consumer's shutdown, and ``agree_on_stop`` makes all ranks take the same decision at the same step.
If the consumer is killed, the launcher and the ranks die with it (Linux parent-death signal), so a
lost job never keeps training unseen; ``studio.lifecycle.mark_lost_jobs`` then marks it interrupted.

Heavy imports (torch, accelerate) stay inside the functions: the UI imports nothing from here.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from studio import db
from studio.settings import child_env, get_settings, process_id, set_env, switch
from workers.stopping import SHUTDOWN, agree_on_stop  # noqa: F401 (agree_on_stop: reached here too)

log = logging.getLogger("studio.distributed")

STOP_FILE = "studio-stop-requested"   # in the job folder: the consumer asks the ranks to stop and save
LAUNCH_LOG = "launch.log"             # the launcher's and the ranks' own output
CPU_DDP_ENV = "STUDIO_DDP_ON_CPU"     # on: a worker without GPUs runs N CPU processes (gloo); tests, laptops


class LaunchError(ValueError):
    """A multi-device job this worker cannot run; the message is one human sentence."""


# ---- where a job runs ---------------------------------------------------------------------------

def wants_distributed(job_id: str) -> bool:
    job = db.get_job(job_id)
    return job is not None and int(job.spec.get("num_gpus") or 1) > 1


def launch_backend(num_processes: int, env: dict[str, str] | None = None) -> str:
    """"cuda" when this worker sees enough GPUs, "cpu" when CPU processes are allowed; else LaunchError."""
    import torch

    from workers.device import visible_devices

    visible = visible_devices(env)
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have >= num_processes:
        return "cuda"
    if have == 0 and switch(CPU_DDP_ENV, env):
        return "cpu"
    pinned = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    example = ",".join(str(i) for i in range(num_processes))
    raise LaunchError(
        f"this run asks for {num_processes} GPUs but the worker on {socket.gethostname()} sees {have}{pinned}; "
        f"start a worker with enough devices, e.g. `studio worker --gpus {example}`, or lower the run's GPU count")


# ---- the consumer side ---------------------------------------------------------------------------

def launcher_command(job_id: str, num_processes: int, backend: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "workers.distributed", "launch", job_id, "--num-processes", str(num_processes)]
    if backend == "cpu":
        cmd.append("--cpu")
    if resume:
        cmd.append("--resume")
    return cmd


def accelerate_args(job_id: str, num_processes: int, resume: bool = False) -> list[str]:
    """``accelerate launch`` arguments, all explicit so a stray ~/.cache/huggingface/accelerate config cannot
    change them. Precision comes from the JobSpec through TrainingArguments, not from here."""
    args = ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1", "--machine_rank", "0",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "workers.distributed", "run", job_id]
    return args + (["--resume"] if resume else [])


def run_distributed(job_id: str, resume: bool = False, poll_seconds: float = 0.5) -> str:
    """The huey task's body for a multi-device job: launch, wait, make sure the job ends in a final state."""
    from workers.runner import JobRun

    job = db.get_job(job_id)
    if job is None:
        raise KeyError(f"job {job_id} does not exist")
    run = JobRun(job, beat=False)  # rank 0 moves the job to running and beats its heartbeat
    if not run.allowed():  # cancelled while queued, or already picked up
        return job.status
    return run(lambda run: _launch_and_wait(run, resume, poll_seconds))


def _launch_and_wait(run, resume: bool, poll_seconds: float) -> str:
    """Start the launcher, pass the consumer's shutdown on as a stop file, and fail the job if no rank ended it."""
    job_id = run.job.id
    n = int(run.job.spec.get("num_gpus") or 1)
    out = get_settings().resolve(run.job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        backend = launch_backend(n)
    except LaunchError as exc:
        return run.settle("failed", "error", error=str(exc))
    stop = out / STOP_FILE
    stop.unlink(missing_ok=True)
    cmd = launcher_command(job_id, n, backend, resume)
    env = child_env(STUDIO_PARENT_PID=str(os.getpid()), PYTHONUNBUFFERED="1")
    log.info("job %s: %d %s processes: %s", job_id, n, backend, " ".join(cmd))
    with open(out / LAUNCH_LOG, "ab") as fh:
        # a session of its own: a Ctrl-C meant for the consumer reaches the ranks only as a polite stop file
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while proc.poll() is None:
            if SHUTDOWN.is_set() and not stop.exists():
                stop.touch()
                log.info("job %s: asked the ranks to stop at the end of the step", job_id)
            time.sleep(poll_seconds)
    stop.unlink(missing_ok=True)
    job = db.get_job(job_id)
    if job.status in db.ACTIVE:  # rank 0 never recorded an end: the launcher or a rank died
        where = f"step {job.current_step}" if job.status == "running" else "start-up"
        return run.settle("failed", "error",
                          error=(f"the {n} training processes stopped at {where} with exit code {proc.returncode}; "
                                 f"{LAUNCH_LOG} and train.log in the run folder have the details"))
    return job.status


# ---- inside the ranks ----------------------------------------------------------------------------

def die_with_parent(expected_parent: int | None) -> None:
    """Get SIGKILL when the process that started this one dies (Linux), so a killed consumer leaves no
    launcher or rank behind. If the parent is already gone, leave now."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if expected_parent and os.getppid() != expected_parent:
        os._exit(75)


def watch_for_stop(stop_file: Path, shutdown: threading.Event, expected_parent: int | None) -> None:
    """Set ``shutdown`` once ``stop_file`` appears (a graceful stop); leave at once if the launcher is gone."""
    while not shutdown.is_set():
        if stop_file.exists():
            shutdown.set()
        elif expected_parent and os.getppid() != expected_parent:  # non-Linux fallback for the death signal
            os._exit(75)
        time.sleep(0.5)


def _launch(args) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    die_with_parent(process_id("STUDIO_PARENT_PID"))
    set_env("STUDIO_LAUNCHER_PID", str(os.getpid()))  # the ranks are this process's children
    if args.cpu:
        set_env("ACCELERATE_USE_CPU", "true")
    argv = accelerate_args(args.job_id, args.num_processes, args.resume)
    print("accelerate launch " + " ".join(argv), flush=True)
    try:
        launch_command(launch_command_parser().parse_args(argv))
    except Exception as exc:  # torchrun raises ChildFailedError after printing which rank failed and why
        print(f"launch failed: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


def _run(args) -> int:
    from workers.device import rank
    from workers.train import run_job

    launcher = process_id("STUDIO_LAUNCHER_PID")
    die_with_parent(launcher)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank()} %(levelname)s %(name)s: %(message)s")
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop at the end of the step, save, mark interrupted
        signal.signal(sig, lambda *_: SHUTDOWN.set())
    job = db.get_job(args.job_id)
    if job is None:
        print(f"job {args.job_id} does not exist", file=sys.stderr)
        return 1
    stop = get_settings().resolve(job.output_dir) / STOP_FILE
    threading.Thread(target=watch_for_stop, args=(stop, SHUTDOWN, launcher), daemon=True, name="stop-watch").start()
    # the consumer checked the job's status before launching; rank 0 sets 'running' while the others load
    status = run_job(args.job_id, resume=args.resume, check_status=False)
    return 0 if status in ("completed", "cancelled", "interrupted") else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.distributed", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    la = sub.add_parser("launch", help="start N ranks with accelerate launch (the consumer calls this)")
    la.add_argument("job_id")
    la.add_argument("--num-processes", type=int, required=True)
    la.add_argument("--cpu", action="store_true", help="CPU processes with the gloo backend")
    la.add_argument("--resume", action="store_true")
    la.set_defaults(func=_launch)
    ru = sub.add_parser("run", help="one rank (accelerate launch calls this)")
    ru.add_argument("job_id")
    ru.add_argument("--resume", action="store_true")
    ru.set_defaults(func=_run)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
