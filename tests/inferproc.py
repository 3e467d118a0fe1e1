"""Start and stop a real `studio infer` process for tests: it registers itself in the data directory's
database, so studio.inference_client finds it as a worker's client would."""
from __future__ import annotations

import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from conftest import wait_for
from workerproc import ROOT, worker_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def infer_process(home: Path, log: Path):
    """Yields the server's OpenAI base URL once it answers and has registered; killed (its row left behind,
    as a crashed server leaves it) at the end."""
    import httpx

    from studio.inference_client import live_servers

    port = free_port()
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "infer", "--port", str(port)], cwd=ROOT,
                            env=worker_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        assert proc.poll() is None, Path(log).read_text()[-3000:]
        try:
            answered = httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        except httpx.HTTPError:
            return False
        return answered and any(s.pid == proc.pid for s in live_servers())

    try:
        wait_for(up, 180, what="the inference server to answer and register")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        out.close()
