"""Start and stop a real `studio infer` process for tests: it registers itself in the data directory's
database, so studio.inference_client finds it as a worker's client would."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from conftest import free_port, wait_for
from workerproc import ROOT, worker_env


@contextmanager
def started_infer(home: Path, log: Path, *args: str, register: bool = True, **env: str):
    """A real `studio infer` process (``args`` added to its command line, ``env`` to its environment) on a free
    loopback port; yields ``(base URL, process)`` once it answers (and, with ``register``, has registered in the
    database). Killed at the end, its row left behind as a crashed server leaves it."""
    import httpx

    from studio.inference_client import live_servers

    port = free_port()
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "infer", "--port", str(port), *args], cwd=ROOT,
                            env=worker_env(home, **env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        assert proc.poll() is None, Path(log).read_text()[-3000:]
        try:
            answered = httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        except httpx.HTTPError:
            return False
        return answered and (not register or any(s.pid == proc.pid for s in live_servers()))

    try:
        wait_for(up, 180, what="the inference server to answer" + (" and register" if register else ""))
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        out.close()


@contextmanager
def infer_process(home: Path, log: Path):
    """Yields the server's OpenAI base URL once it answers and has registered."""
    with started_infer(home, log) as (url, _):
        yield url
