"""Start and stop real `studio worker` consumer processes for tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    env.update({"STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "STUDIO_MODEL_ROOTS": os.environ.get("STUDIO_MODEL_ROOTS", ""),
                # the suite's default for the forgetting check (conftest) reaches the processes it starts
                "STUDIO_FORGETTING_CHECK": os.environ.get("STUDIO_FORGETTING_CHECK", ""),
                "STUDIO_REPLAY_AHEAD": os.environ.get("STUDIO_REPLAY_AHEAD", "")})
    env.update(extra)
    return env


class Worker:
    def __init__(self, home: Path, log: Path, args: tuple[str, ...] = (), **extra: str):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--no-prepare", *args], cwd=ROOT,
                                     env=worker_env(home, **extra), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def parent_of(pid: int) -> int | None:
    """The parent pid of a process on this host (/proc/PID/stat field 4), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[1])
