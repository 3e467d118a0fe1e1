"""A thread that calls ``beat`` every few seconds while a block runs: a job's or task's heartbeat, a worker's
or inference server's registration. Standard library only, so a task or `studio export` can beat without
loading the training stack."""
from __future__ import annotations

import logging
import threading

from studio.retry import Retry

log = logging.getLogger("studio.heartbeat")


class Heartbeat:
    """Calls ``beat`` every few seconds from a thread while a block runs: a job's heartbeat (so a long
    step, evaluation or checkpoint never makes a live job look lost) or a worker's registration."""

    def __init__(self, beat, every: float = 10.0, name: str = "heartbeat"):
        self.beat, self.every, self.name = beat, every, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._misses = Retry(name, log, every, every)  # a database that refuses beats for long: a line per error

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception as exc:  # a missed beat is harmless; the next one retries
                self._misses.failed(exc)
            else:
                self._misses.worked()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
